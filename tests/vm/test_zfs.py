"""The zfs driver against real OpenZFS inside the test VM (pools on loop devices).

Small and fast on purpose (TCG): a live SQLite writer in WAL mode backed up hot, full then
incremental send, restored into a new dataset and drilled; an incremental chain restored
byte-identical at its end and in the middle, restarted with a full by ``full_every``; two hostile-named datasets snapshotted
by one atomic call; tar export; preflight errors parsed from real zfs; SIGKILL mid-export then
`snapagent cleanup`.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.helpers import cli
from tests.helpers.cli import ROOT, toml_str, write_config
from tests.helpers.trees import tree
from tests.vm.vmtools import ZPool, pipe, run


def snapagent(*args: str, config: Path, check: bool = False):
    """The CLI in this process (TCG makes each Python start cost many seconds); the SIGKILL test
    runs the agent as a real process."""
    return cli.snapagent(*args, config=config, check=check, in_process=True)


pytestmark = pytest.mark.vm

WRITER = ROOT / "tests" / "helpers" / "writer.py"


def zfs(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run(["zfs", *args], check=check)


def create(pool: ZPool, *parts: str) -> tuple[str, Path]:
    """Create dataset pool/parts (its name may hold spaces etc.); return (name, mountpoint)."""
    name = pool.dataset(*parts)
    zfs("create", "-p", "--", name)
    return name, pool.mountpoint(name)


def pool_mountpoint(dataset: str) -> Path:
    return Path(zfs("get", "-H", "-o", "value", "mountpoint", "--", dataset).stdout.rstrip("\n"))


def snapagent_snapshots(pool: ZPool) -> list[str]:
    out = zfs("list", "-H", "-t", "snapshot", "-o", "name", "-r", pool.name).stdout.splitlines()
    return [s for s in out if "@snapagent-" in s]


def job(volumes: list[str], export: str | None = None, options: str = "", quiesce: str = "", extra: str = "") -> str:
    text = f'[jobs.db]\ndriver = "zfs"\nvolumes = [{", ".join(toml_str(v) for v in volumes)}]\ntarget = "local"\n{extra}\n'
    if export:
        text += f'export = "{export}"\n'
    text += f"{quiesce}\n[jobs.db.options]\n{options}\n"
    return text


def backup(cfg: Path) -> dict:
    """Run `snapagent --json backup db` and return the stored manifest it prints."""
    return json.loads(snapagent("--json", "backup", "db", config=cfg, check=True).stdout)


def acked(ackfile: Path) -> list[tuple[int, float]]:
    rows = []
    for line in ackfile.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            rows.append((int(parts[0]), float(parts[1])))
    return rows


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def check_db(db: Path, ackfile: Path, quiescer: dict) -> int:
    """integrity_check ok, and every row acknowledged before the lock was taken is present."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        ids = {r[0] for r in conn.execute("SELECT id FROM t")}
    finally:
        conn.close()
    locked = epoch(quiescer["locked_at"])
    before = [i for i, t in acked(ackfile) if t < locked]
    assert before, "the writer acknowledged nothing before the lock: the test proves nothing"
    missing = sorted(set(before) - ids)
    assert not missing, f"{len(missing)} acknowledged rows missing from the restored database, e.g. {missing[:5]}"
    return len(ids)


@pytest.fixture
def writer(tmp_path):
    procs = []

    def start(db: Path) -> Path:
        ack = tmp_path / "acks.log"
        procs.append(subprocess.Popen([sys.executable, str(WRITER), str(db), str(ack)]))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (not ack.exists() or len(acked(ack)) < 20):
            time.sleep(0.1)
        assert len(acked(ack)) >= 20, "writer did not start"
        return ack

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_live_sqlite_full_and_incremental_send_restore_and_drill(zpool, workdir, writer):
    ds, mp = create(zpool, "app db")  # a space in the name
    db = mp / "app.db"
    ack = writer(db)
    cfg = write_config(workdir, job([ds], quiesce=f'[[jobs.db.quiesce]]\ntype = "sqlite"\npath = {toml_str(db)}\n',
                                    extra='mode = "incremental"'))

    m1 = backup(cfg)
    v1 = m1["volumes"][0]
    assert v1["kept"] and v1["parent"] is None and v1["snapshot"] == f"{ds}@{m1['snapshot_name']}"
    assert "snapagent" in zfs("holds", "-H", "--", v1["snapshot"]).stdout
    n1 = len(acked(ack))
    while len(acked(ack)) < n1 + 20:
        time.sleep(0.1)  # more rows land after the full backup
    m2 = backup(cfg)
    v2 = m2["volumes"][0]
    assert v2["parent"] == m1["id"] and v2["info"]["parent_snapshot"] == v1["snapshot"]
    # the base of backup 1 was released and destroyed; backup 2's snapshot is the held base now
    assert snapagent_snapshots(zpool) == [v2["snapshot"]]
    q = m2["quiescers"][0]
    assert q["type"] == "sqlite" and m2["freeze_window_ms"] < m2["max_freeze_ms"]

    dest = zpool.dataset("restored")
    r = snapagent("restore", m2["id"], "--to", dest, "--json", config=cfg, check=True)
    summary = json.loads(r.stdout)
    vol = summary["volumes"][0]
    assert vol["restored_as"] == f"{dest}/{v2['label']}"
    restored_db = Path(vol["path"]) / "app.db"
    assert summary["databases"][0]["restored"] == str(restored_db)
    assert zfs("get", "-H", "-o", "value", "mounted", "--", vol["restored_as"]).stdout.strip() == "yes"
    rows = check_db(restored_db, ack, q)
    print(f"\nrestored full+incremental chain: {rows} rows; freeze windows {m1['freeze_window_ms']:.0f} ms, "
          f"{m2['freeze_window_ms']:.0f} ms; lock wait {q['lock_wait_ms']} ms")
    # by hand, as docs/zfs.md shows: zstd -dc ART | zfs receive -x mountpoint [-F] DATASET, oldest first
    manual = zpool.dataset("manual")
    for m, extra in ((m1, []), (m2, ["-F"])):
        art = workdir / "backups" / "db" / m["id"] / m["artifacts"][0]["name"]
        assert run(["sha256sum", str(art)]).stdout.split()[0] == m["artifacts"][0]["sha256"]
        pipe(["zstd", "-dc", str(art)], ["zfs", "receive", "-x", "mountpoint", *extra, manual])
    assert check_db(pool_mountpoint(manual) / "app.db", ack, q) == rows

    # dropping a held base by hand, as docs/zfs.md shows
    refs = zfs("list", "-H", "-r", "-t", "snapshot", "-o", "name,userrefs", zpool.name).stdout.splitlines()
    assert [r.split("\t") for r in refs if r.startswith(f"{ds}@")] == [[v2["snapshot"], "1"]]
    holds = zfs("holds", v2["snapshot"]).stdout.splitlines()[1:]
    assert len(holds) == 1 and "snapagent" in holds[0]
    zfs("release", "snapagent", v2["snapshot"])
    zfs("destroy", v2["snapshot"])
    assert [s for s in snapagent_snapshots(zpool) if s.startswith(f"{ds}@")] == []

    d = snapagent("drill", m2["id"], "--json", config=cfg)
    assert d.returncode == 0, d.stderr
    report = json.loads(d.stdout)
    assert report["ok"] and report["probes"][0]["integrity_check"] == ["ok"]
    leftovers = zfs("list", "-H", "-o", "name", "-r", zpool.dataset("snapagent-drill")).stdout.split("\n")
    assert [x for x in leftovers if x] == [zpool.dataset("snapagent-drill")], "drill left its scratch dataset"


def test_incremental_chain_restores_byte_identical_and_full_every_restarts_it(zpool, workdir):
    ds, mp = create(zpool, "chain me")
    (mp / "keep.txt").write_text("unchanged\n")
    (mp / "edit.txt").write_text("version 1\n")
    (mp / "gone.txt").write_text("to be deleted\n")
    (mp / "dir").mkdir()
    (mp / "dir" / "blob").write_bytes(os.urandom(1 << 20))
    cfg = write_config(workdir, job([ds], extra='mode = "incremental"\nfull_every = 2'))
    ms, states = [], []

    def take() -> dict:
        m = backup(cfg)
        ms.append(m)
        states.append(tree(mp / ".zfs" / "snapshot" / m["snapshot_name"]))  # the held base: the backup's state
        return m

    take()
    (mp / "edit.txt").write_text("version 2, longer\n")
    (mp / "gone.txt").unlink()
    os.rename(mp / "keep.txt", mp / "kept under another name.txt")
    take()
    (mp / "dir").rename(mp / "moved")
    (mp / "new.txt").write_text("new in 3\n")
    with open(mp / "moved" / "blob", "r+b") as f:
        f.seek(1 << 19)
        f.write(os.urandom(4096))
    take()
    take()  # full_every = 2: the chain holds 2 incrementals, so this one is a full
    assert [(m["volumes"][0]["incremental"], m["volumes"][0]["parent"]) for m in ms] == [
        (False, None), (True, ms[0]["id"]), (True, ms[1]["id"]), (False, None)]
    assert snapagent_snapshots(zpool) == [ms[3]["volumes"][0]["snapshot"]]  # only the newest base is held
    assert ms[2]["artifacts"][0]["raw_size"] < ms[0]["artifacts"][0]["raw_size"] / 4

    for i in (2, 1):  # the end of the chain and a middle link, each replayed from the full
        dest = zpool.dataset(f"chain restore {i}")
        summary = json.loads(snapagent("restore", ms[i]["id"], "--to", dest, "--json", config=cfg, check=True).stdout)
        assert tree(Path(summary["volumes"][0]["path"])) == states[i]
        zfs("destroy", "-r", "--", dest)
    r = snapagent("verify", ms[2]["id"], config=cfg, check=True)
    assert r.stdout.splitlines()[-1] == f"backup {ms[2]['id']} with the 2 earlier backup(s) of its chain: verified"
    art = workdir / "backups" / "db" / ms[1]["id"] / ms[1]["artifacts"][0]["name"]
    art.unlink()
    r = snapagent("restore", ms[2]["id"], "--to", zpool.dataset("never"), config=cfg)
    assert r.returncode == 1 and f"backup {ms[2]['id']} is incremental on {ms[1]['id']}, whose artifact" in r.stderr
    assert zfs("list", "-H", "--", zpool.dataset("never"), check=False).returncode != 0  # nothing written


def test_two_hostile_datasets_in_one_atomic_snapshot(zpool, workdir):
    names = ["-lead: x", "b.c_d-e"]  # leading '-', ':', space, '.', '_'
    made = [create(zpool, "grp", n) for n in names]
    for i, (_, mp) in enumerate(made):
        (mp / f"file {i}").write_text(f"content {i}\n")
    # incremental mode keeps the snapshots: their real createtxg can be read back after the run
    cfg = write_config(workdir, job([d for d, _ in made], extra='mode = "incremental"'))
    m = backup(cfg)
    snaps = [v["snapshot"] for v in m["volumes"]]
    txgs = {zfs("get", "-H", "-p", "-o", "value", "createtxg", "--", s).stdout.strip() for s in snaps}
    assert len(txgs) == 1, f"snapshots of one job in different txgs: {txgs}"
    assert {v["info"]["createtxg"] for v in m["volumes"]} == {int(t) for t in txgs}
    assert {v["info"]["atomic_group"] for v in m["volumes"]} == {0}
    dest = zpool.dataset("back again")
    summary = json.loads(snapagent("restore", m["id"], "--to", dest, "--json", config=cfg, check=True).stdout)
    for i, vol in enumerate(summary["volumes"]):
        assert (Path(vol["path"]) / f"file {i}").read_text() == f"content {i}\n"


def test_tar_export_and_directory_restore(zpool, workdir, tmp_path):
    # preflight against real zfs: its stderr is parsed into a message naming the dataset
    cfg = write_config(workdir, job([zpool.dataset("no such")], export="tar"))
    r = snapagent("backup", "db", config=cfg)
    assert r.returncode == 1 and f"dataset '{zpool.dataset('no such')}' does not exist" in r.stderr, r.stderr

    ds, mp = create(zpool, "tar me")
    (mp / "sub").mkdir()
    (mp / "sub" / "data.bin").write_bytes(os.urandom(50_000))
    cfg = write_config(workdir, job([ds], export="tar"))
    m = backup(cfg)
    assert m["export_format"] == "tar" and snapagent_snapshots(zpool) == []  # nothing kept for tar
    out = tmp_path / "restored"
    r = json.loads(snapagent("restore", m["id"], "--to", str(out), "--json", config=cfg, check=True).stdout)
    got = Path(r["volumes"][0]["path"]) / "sub" / "data.bin"
    assert got.read_bytes() == (mp / "sub" / "data.bin").read_bytes()
    assert not (Path(r["volumes"][0]["path"]) / ".zfs").exists()
    # by hand, as docs/zfs.md shows
    by_hand = tmp_path / "by hand"
    by_hand.mkdir()
    art = workdir / "backups" / "db" / m["id"] / m["artifacts"][0]["name"]
    pipe(["zstd", "-dc", str(art)], ["tar", "-x", "--xattrs", "--acls", "--numeric-owner", "-C", str(by_hand)])
    assert (by_hand / "sub" / "data.bin").read_bytes() == got.read_bytes()


def test_sigkill_mid_export_then_cleanup_leaves_no_snapshot(zpool, workdir):
    ds, mp = create(zpool, "big one")
    with open(mp / "blob", "wb") as f:
        f.write(os.urandom(24 << 20))  # enough that the export is still running when we kill
    cfg = write_config(workdir, job([ds], options="incremental = false"))
    argv = [sys.executable, "-m", "snapagent", "-c", str(cfg), "backup", "db"]
    agent = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    partial_root = workdir / "backups" / "db"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and agent.poll() is None:
        if partial_root.is_dir() and any(p.name.startswith(".partial-") for p in partial_root.iterdir()):
            break
        time.sleep(0.02)
    assert agent.poll() is None, f"the backup ended before it could be killed: {agent.communicate()}"
    agent.send_signal(signal.SIGKILL)
    agent.wait()
    left = snapagent_snapshots(zpool)
    assert left, "the killed run left no snapshot: the kill came too late to test cleanup"
    r = cli.snapagent("cleanup", config=cfg, check=True)  # a real process, like an operator's
    assert any("destroyed" in line for line in r.stdout.splitlines()), r.stdout
    assert snapagent_snapshots(zpool) == []
    assert not any(p.name.startswith(".partial-") for p in partial_root.iterdir())

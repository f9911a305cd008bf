"""Copies between directory targets on real btrfs with a live SQLite database: a job's ``copy_to``
copies each new backup; both targets list it; ``restore --from`` the copy holds every
acknowledged row; a corrupted local copy makes a plain restore fall back to the copy (with a
warning) and ``--from local`` fail verification; ``snapagent copy`` by hand (and again: already
there); retention applies in the copy target; a copy killed with SIGKILL lists nothing in the
destination and ``cleanup`` removes its partial; an incremental chain is copied links first and
restored from the copy byte-identical."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snapagent.journal import journals
from tests.helpers.cli import snapagent, toml_str, write_config
from tests.helpers.trees import tree
from tests.system.test_btrfs_chain import backup as chain_backup
from tests.system.test_btrfs_chain import chain_env  # noqa: F401 - a fixture
from tests.system.test_btrfs_chain import job as chain_job
from tests.system.test_btrfs_sqlite import app, backup, job_toml  # noqa: F401 - app is a fixture

pytestmark = [pytest.mark.root, pytest.mark.btrfs]


def targets(workdir: Path, *names: str) -> str:
    return "".join(f'[targets.{n}]\ntype = "directory"\npath = {toml_str(workdir / n)}\n\n' for n in names)


def where(cfg: Path) -> dict[str, list[str]]:
    """Return {backup id: the targets holding it} as ``list --json`` says."""
    return {b["id"]: b["targets"] for b in json.loads(snapagent("--json", "list", config=cfg, check=True).stdout)}


def rows_ok(db: Path, acked: list[int]) -> None:
    conn = sqlite3.connect(db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ids = [i for (i,) in conn.execute("SELECT id FROM t ORDER BY id")]
    conn.close()
    assert ids == list(range(1, len(ids) + 1)) and set(acked) <= set(ids), "a row acknowledged before the backup is lost"


def test_copy_to_restore_from_fallback_by_hand_and_retention(app, workdir):  # noqa: F811
    vol, db, w = app
    cfg = write_config(workdir, job_toml(vol, db, 'copy_to = ["offsite"]\n[jobs.app.retention]\nkeep_last = 2\n'),
                       extra=targets(workdir, "offsite", "far"))
    acked = [i for i, _ in w.acks()]
    bid = backup(cfg)
    assert where(cfg) == {bid: ["local", "offsite"]}
    shown = snapagent("show", bid, config=cfg, check=True).stdout
    assert "(target local)" in shown and "(target offsite)" in shown
    label = json.loads(snapagent("--json", "show", bid, config=cfg, check=True).stdout)["volumes"][0]["label"]

    r = snapagent("--json", "restore", bid, "--to", str(workdir / "r1"), "--from", "offsite", config=cfg, check=True)
    rows_ok(workdir / "r1" / label / "app.db", acked)
    assert json.loads(r.stdout)["id"] == bid

    # bit rot in the local copy: a plain restore reads the copy, with a warning; --from local refuses
    art = next((workdir / "backups" / "app" / bid).glob("00-*"))
    orig = art.read_bytes()
    data = bytearray(orig)
    data[len(data) // 2] ^= 0x01
    art.write_bytes(bytes(data))
    r = snapagent("restore", bid, "--to", str(workdir / "r2"), config=cfg, check=True)
    assert "the copy of" in r.stderr and "in target 'local' fails verification" in r.stderr
    assert "reading it from target 'offsite'" in r.stderr
    rows_ok(workdir / "r2" / label / "app.db", acked)
    r = snapagent("restore", bid, "--to", str(workdir / "r3"), "--from", "local", config=cfg)
    assert r.returncode == 1 and "restore refused, nothing was written: artifact 00-" in r.stderr
    assert r.stderr.count("\n") == 1 and not (workdir / "r3").exists()
    assert snapagent("verify", bid, "--from", "local", config=cfg).returncode == 1
    r = json.loads(snapagent("--json", "verify", bid, "--from", "offsite", config=cfg, check=True).stdout)
    assert r["ok"] and r["target"] == "offsite"
    assert "PASSED" in snapagent("drill", bid, "--from", "offsite", config=cfg, check=True).stdout
    r = snapagent("restore", bid, "--to", str(workdir / "r4"), "--from", "nope", config=cfg)
    assert r.returncode == 2 and "--from: unknown target 'nope'" in r.stderr

    # by hand: from the good copy (the local one is damaged), then again: already there
    r = snapagent("copy", bid, "--to", "far", "--from", "offsite", config=cfg, check=True)
    assert f"copied {bid} from target offsite to target far" in r.stdout
    assert where(cfg)[bid] == ["local", "offsite", "far"]
    r = snapagent("--json", "copy", bid, "--to", "far", config=cfg, check=True)
    assert json.loads(r.stdout)["present"] is True
    r = snapagent("copy", bid, "--to", "nope", config=cfg)
    assert r.returncode == 2 and "--to: unknown target 'nope'" in r.stderr
    r = snapagent("copy", bid, "--to", "local", "--from", "offsite", config=cfg)
    assert r.returncode == 1 and "already holds backup" in r.stderr and "fails verification" in r.stderr

    # retention per target: keep_last = 2 in local and in offsite (far only holds the copy made by hand)
    art.write_bytes(orig)
    newer = [backup(cfg) for _ in range(2)]
    w.stop()
    listed = where(cfg)
    assert {i: t for i, t in listed.items() if i in newer} == {i: ["local", "offsite"] for i in newer}
    assert listed[bid] == ["far"], listed
    assert snapagent("--json", "verify", newer[-1], "--from", "offsite", config=cfg, check=True)


def test_a_copy_killed_midway_lists_nothing_and_cleanup_removes_it(subvol, workdir):
    vol = subvol("big")
    with open(vol / "big.bin", "wb") as f:
        for _ in range(128):
            f.write(os.urandom(1 << 20))
    cfg = write_config(workdir, job_toml(vol, None), extra=targets(workdir, "offsite"))
    bid = backup(cfg)
    partial = workdir / "offsite" / "app" / f".partial-{bid}"
    p = subprocess.Popen([sys.executable, "-m", "snapagent", "-c", str(cfg), "copy", bid, "--to", "offsite"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 60
    while not any(partial.glob(".*.part")) or not any(f.stat().st_size for f in partial.glob(".*.part")):
        assert p.poll() is None, "the copy ended before it could be killed"
        assert time.monotonic() < end
        time.sleep(0.001)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert where(cfg) == {bid: ["local"]}
    assert partial.is_dir()
    r = snapagent("cleanup", config=cfg, check=True)
    assert f"removed partial backup {partial}" in r.stdout
    assert list((workdir / "offsite" / "app").iterdir()) == []
    snapagent("copy", bid, "--to", "offsite", config=cfg, check=True)
    assert where(cfg) == {bid: ["local", "offsite"]}
    snapagent("verify", bid, "--from", "offsite", config=cfg, check=True)


def test_an_incremental_chain_is_copied_links_first_and_restored_from_the_copy(chain_env, workdir, btrfs_root):  # noqa: F811
    vol, db, writer, dest = chain_env
    cfg = write_config(workdir, chain_job(vol, db), extra=targets(workdir, "offsite"))
    taken = []
    for i in range(3):
        (vol / f"file{i}.txt").write_text(f"step {i}\n")
        taken.append(chain_backup(cfg))
    ids = [m["id"] for m, _ in taken]
    assert [v["parent"] for m, _ in taken for v in m["volumes"]] == [None, ids[0], ids[1]]
    r = snapagent("--json", "copy", ids[2], "--to", "offsite", config=cfg, check=True)
    assert json.loads(r.stdout)["copied"] == ids  # the links the copy target lacked, oldest first
    assert all(t == ["local", "offsite"] for t in where(cfg).values())
    for i in ids:  # the local copies are gone: only the offsite chain can restore
        shutil.rmtree(workdir / "backups" / "app" / i)
    d = dest()
    summary = json.loads(snapagent("--json", "restore", ids[2], "--to", str(d), config=cfg, check=True).stdout)
    assert tree(Path(summary["volumes"][0]["path"])) == taken[2][1]


def test_a_failed_copy_is_a_warning_naming_the_target_and_recorded(subvol, workdir):
    vol = subvol("app")
    (vol / "data.txt").write_text("payload\n")
    (workdir / "blocked").write_text("a file where the target's directory should be\n")
    extra = f'[targets.offsite]\ntype = "directory"\npath = {toml_str(workdir / "blocked" / "offsite")}\n'
    cfg = write_config(workdir, job_toml(vol, None, 'copy_to = ["offsite"]'), extra=extra)
    r = snapagent("backup", "app", config=cfg)
    bid = r.stdout.split()[-1]
    assert r.returncode == 0, r.stderr
    assert "copy to target 'offsite' failed: " in r.stderr and "the backup is kept in target 'local'" in r.stderr
    assert f"`snapagent copy {bid} --to offsite`" in r.stderr
    assert where(cfg) == {bid: ["local"]}
    status = json.loads(snapagent("--json", "status", "app", config=cfg, check=True).stdout)[0]
    assert status["last_run"]["result"] == "success"
    assert [w for w in status["last_run"]["warnings"] if "copy to target 'offsite' failed" in w]
    assert status["last_run"]["copy_failed"] == ["offsite"]
    assert "warning:      copy to target 'offsite' failed" in snapagent("status", config=cfg, check=True).stdout
    assert list(journals(workdir / "state")) == []
    r = snapagent("check", "app", config=cfg)
    assert r.returncode == 1 and r.stdout.startswith("SNAPAGENT WARNING - ") and "copy to target(s) offsite failed" in r.stdout
    # the target is back: a copy by hand clears the warning, and the backup counts once
    (workdir / "blocked").unlink()
    (workdir / "blocked").mkdir()
    snapagent("copy", bid, "--to", "offsite", config=cfg, check=True)
    r = snapagent("check", "app", config=cfg)
    assert r.returncode == 0 and ", 1 backup(s)" in r.stdout and "'app_backups'=1;" in r.stdout, r.stdout

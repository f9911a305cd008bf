"""btrfs + SQLite end to end, on a real btrfs filesystem on a loop device, with a live writer."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.helpers import snapplaces
from tests.helpers.cli import ROOT, snapagent, toml_str, write_config
from tests.helpers.wrappers import slow_tool

pytestmark = [pytest.mark.root, pytest.mark.btrfs]
WRITER = ROOT / "tests" / "helpers" / "writer.py"


def job_toml(vol: Path, db: Path | None, extra: str = "", qextra: str = "", name: str = "app") -> str:
    s = f"[jobs.{name}]\ndriver = \"btrfs\"\nvolumes = [{toml_str(vol)}]\ntarget = \"local\"\n{extra}\n"
    if db is not None:
        s += f"[[jobs.{name}.quiesce]]\ntype = \"sqlite\"\npath = {toml_str(db)}\n{qextra}\n"
    return s


class Writer:
    """tests/helpers/writer.py as a subprocess; ``acks()`` returns [(id, time)] acknowledged so far."""

    def __init__(self, db: Path, ack: Path, pace: float = 0.002, journal_mode: str = "wal"):
        self.ack = ack
        self.proc = subprocess.Popen([sys.executable, str(WRITER), str(db), str(ack), str(pace), journal_mode])

    def wait_for(self, n: int, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while len(self.acks()) < n:
            assert self.proc.poll() is None, "writer died"
            assert time.monotonic() < end, "writer too slow"
            time.sleep(0.02)

    def acks(self) -> list[tuple[int, float]]:
        if not self.ack.exists():
            return []
        out = []
        for line in self.ack.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                out.append((int(parts[0]), float(parts[1])))
        return out

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def app(subvol, workdir):
    """A subvolume with a live WAL-mode SQLite database and its writer; yields (vol, db, writer)."""
    vol = subvol("app")
    db = vol / "app.db"
    w = Writer(db, workdir / "acks.txt")
    w.wait_for(100)
    yield vol, db, w
    w.stop()


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def backup(cfg: Path, job: str = "app") -> str:
    r = snapagent("backup", job, config=cfg, check=True)
    return r.stdout.strip().splitlines()[-1]


def snapshots_left(vol: Path) -> list[str]:
    d = snapplaces.snapdir(vol)
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []


def listed(cfg: Path) -> list[dict]:
    return json.loads(snapagent("list", "--json", config=cfg, check=True).stdout)


def test_hot_backup_restore_has_every_acknowledged_row(app, workdir):
    vol, db, w = app
    cfg = write_config(workdir, job_toml(vol, db))
    bid = backup(cfg)
    w.wait_for(len(w.acks()) + 50)
    w.stop()
    m = json.loads(snapagent("show", bid, "--json", config=cfg, check=True).stdout)
    q = m["quiescers"][0]
    assert q["journal_mode"] == "wal" and q["type"] == "sqlite"
    locked, released = ts(q["locked_at"]), ts(q["released_at"])
    assert 0 < m["freeze_window_ms"] < 10000 and m["driver"] == "btrfs"
    assert snapshots_left(vol) == []
    steps = m["freeze"]["steps"]  # how the window split: the lock, the one btrfs call, verify, release
    assert [s["phase"] for s in steps] == ["lock", "snapshot", "verify", "release"]
    assert steps[1]["what"].startswith(f"btrfs subvolume snapshot -r {vol} ") and steps[0]["held_at_ms"] == 0
    assert m["freeze"]["window_ms"] == m["freeze_window_ms"] >= steps[1]["ms"]
    shown = snapagent("show", bid, config=cfg, check=True).stdout
    assert "freeze split:  lock " in shown and f"snapshot {steps[1]['ms']:8.1f} ms  btrfs subvolume" in shown

    dest = workdir / "restore"
    r = snapagent("restore", bid, "--to", str(dest), config=cfg, check=True)
    rdb = dest / m["volumes"][0]["label"] / "app.db"
    assert str(rdb) in r.stdout
    conn = sqlite3.connect(rdb)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    rows = conn.execute("SELECT id, at FROM t ORDER BY id").fetchall()
    conn.close()
    ids = [i for i, _ in rows]
    assert ids == list(range(1, len(ids) + 1)), "restored rows are not a contiguous prefix"
    before = [i for i, t in w.acks() if t < locked]
    assert before and set(before) <= set(ids), "a row acknowledged before the lock is missing"
    assert max(at for _, at in rows) < released, "a row begun after the release is in the backup"
    print(f"\nfreeze window {m['freeze_window_ms']:.1f} ms; rows restored {len(ids)}; "
          f"acked before lock {len(before)}; acked in total {len(w.acks())}")

    d = snapagent("drill", bid, config=cfg, check=True)
    assert "PASS sqlite" in d.stdout and f"\n    t: {len(ids)}\n" in d.stdout


def test_files_are_private(app, workdir):
    vol, db, _ = app
    cfg = write_config(workdir, job_toml(vol, db))
    bid = backup(cfg)
    bdir = workdir / "backups" / "app" / bid
    for p in [workdir / "backups", workdir / "backups" / "app", bdir]:
        assert stat.S_IMODE(p.stat().st_mode) == 0o700, p
    for p in bdir.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def test_dry_run_changes_nothing(app, workdir):
    vol, db, _ = app
    cfg = write_config(workdir, job_toml(vol, db))
    r = snapagent("backup", "app", "--dry-run", config=cfg)
    assert r.returncode == 0, r.stderr
    assert "would run: btrfs subvolume snapshot -r" in r.stdout and "would quiesce: sqlite" in r.stdout
    assert snapplaces.snapshots(vol) == []
    assert not (workdir / "backups").exists()
    assert list((workdir / "state").iterdir()) == []


def test_sqlite_outside_the_volumes_is_refused(subvol, workdir):
    vol, other = subvol("app"), subvol("other")
    db = other / "elsewhere.db"
    sqlite3.connect(db).execute("CREATE TABLE x (a)").connection.close()
    cfg = write_config(workdir, job_toml(vol, db))
    r = snapagent("backup", "app", config=cfg)
    assert r.returncode == 1
    assert str(db) in r.stderr and str(vol) in r.stderr and "not on any volume" in r.stderr
    assert snapplaces.snapshots(vol) == []


def _start_and_wait_for_export(cfg: Path, workdir: Path) -> subprocess.Popen:
    """Start a backup and return once an artifact is being written (the export is under way)."""
    proc = subprocess.Popen([sys.executable, "-m", "snapagent", "-c", str(cfg), "backup", "app"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    end = time.monotonic() + 60
    jobdir = workdir / "backups" / "app"
    while time.monotonic() < end:
        if list(jobdir.glob(".partial-*/.*.part")):
            return proc
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.002)
    raise AssertionError("export never started")


@pytest.fixture
def big_app(subvol):
    vol = subvol("big")
    db = vol / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, b BLOB)")
    conn.commit()
    conn.close()
    with open(vol / "bulk.bin", "wb") as f:  # incompressible, so the export takes a while
        for _ in range(200):
            f.write(os.urandom(1 << 20))
    return vol, db


def test_sigkill_during_export_then_cleanup(big_app, workdir):
    vol, db = big_app
    cfg = write_config(workdir, job_toml(vol, db))
    proc = _start_and_wait_for_export(cfg, workdir)
    proc.kill()
    proc.wait()
    assert len(snapshots_left(vol)) == 1, "the killed run should have left its snapshot"
    assert [p.name for p in (workdir / "backups" / "app").iterdir()][0].startswith(".partial-")
    assert listed(cfg) == []

    r = snapagent("cleanup", config=cfg, check=True)
    assert "deleted btrfs snapshot" in r.stdout and "removed partial backup" in r.stdout
    assert snapshots_left(vol) == []
    assert list((workdir / "backups" / "app").iterdir()) == []
    assert list((workdir / "state" / "journal" / "app").iterdir()) == []
    assert snapagent("cleanup", config=cfg, check=True).stdout.strip() == "nothing to clean up"
    backup(cfg)  # and the job works again
    assert len(listed(cfg)) == 1


def test_sigterm_during_export_releases_everything(big_app, workdir):
    vol, db = big_app
    cfg = write_config(workdir, job_toml(vol, db))
    proc = _start_and_wait_for_export(cfg, workdir)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and b"interrupted by SIGTERM" in err
    assert snapshots_left(vol) == []
    assert list((workdir / "backups" / "app").iterdir()) == []
    assert listed(cfg) == []


def test_corrupt_byte_fails_verify_and_restore_refuses(app, workdir):
    vol, db, _ = app
    cfg = write_config(workdir, job_toml(vol, db))
    bid = backup(cfg)
    assert snapagent("verify", bid, config=cfg).returncode == 0
    art = next((workdir / "backups" / "app" / bid).glob("*.zst"))
    data = bytearray(art.read_bytes())
    data[len(data) // 2] ^= 0x01
    art.write_bytes(bytes(data))
    v = snapagent("verify", bid, config=cfg)
    assert v.returncode == 1 and "sha256 mismatch" in v.stdout and "VERIFICATION FAILED" in v.stdout
    dest = workdir / "restore"
    r = snapagent("restore", bid, "--to", str(dest), config=cfg)
    assert r.returncode == 1 and "nothing was written" in r.stderr
    assert not dest.exists()


def test_failed_quiesce_skips_snapshot(subvol, workdir):
    vol = subvol("busy")
    db = vol / "app.db"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("CREATE TABLE t (a)")
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the write lock; readers go on
    try:
        cfg = write_config(workdir, job_toml(vol, db, qextra='busy_timeout = "300ms"'))
        r = snapagent("backup", "app", config=cfg)
        assert r.returncode == 1 and "could not take the write lock" in r.stderr
        assert not snapplaces.snapdir(vol).exists() or snapshots_left(vol) == []
        assert listed(cfg) == []
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_freeze_overrun_is_abandoned(app, workdir):
    vol, db, w = app
    cfg = write_config(workdir, job_toml(vol, db, extra='max_freeze = "1ms"'))
    n = len(w.acks())
    r = snapagent("backup", "app", config=cfg)
    assert r.returncode == 1 and "max_freeze" in r.stderr
    assert snapshots_left(vol) == [] and listed(cfg) == []
    w.wait_for(n + 20)  # the writer goes on


def _run_state(workdir: Path, vol: Path) -> dict:
    """What a run may create: snapshots, stored and partial backups, journals and locks."""
    def names(d: Path) -> list[str]:
        return sorted(str(p.relative_to(d)) for p in d.rglob("*")) if d.exists() else []
    return {"snapshots": names(snapplaces.snapdir(vol)), "backups": names(workdir / "backups"),
            "state": names(workdir / "state")}


@pytest.mark.parametrize("phase", ["freeze", "export"])
def test_second_run_of_a_job_is_refused(app, workdir, phase):
    """A real first run is held (inside the freeze: SQLite's lock held by a slow command quiescer; or in
    a slowed export); a second run of the job exits 1 at once naming the holder's pid and start time,
    creates nothing and does not wait on the database; the first run's backup completes."""
    vol, db, _ = app
    marker = workdir / "marker"
    if phase == "freeze":
        agent, extra = "", (f'[[jobs.app.quiesce]]\ntype = "command"\nname = "hold"\n'
                            f'pre = [{toml_str(sys.executable)}, {toml_str(ROOT / "tests/helpers/slowpre.py")}, '
                            f'{toml_str(marker)}, "5"]\ntimeout = "30s"\n')
    else:
        slow = slow_tool(workdir / "slow-tar", "tar", marker, 5, when="--create")
        agent, extra = f"tools.tar = {toml_str(slow)}\n", ""
    cfg = write_config(workdir, job_toml(vol, db, extra='max_freeze = "20s"') + extra, agent=agent)
    first = subprocess.Popen([sys.executable, "-m", "snapagent", "-c", str(cfg), "backup", "app"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 60
        while not marker.exists():
            assert first.poll() is None, f"the first run ended early: {first.communicate()}"
            assert time.monotonic() < end, "the first run never reached the held phase"
            time.sleep(0.01)
        before = _run_state(workdir, vol)
        t0 = time.monotonic()
        snapagent("config", "check", config=cfg, check=True)  # the cost of starting Python and reading the config
        base = time.monotonic() - t0
        t0 = time.monotonic()
        r = snapagent("backup", "app", config=cfg)
        took = time.monotonic() - t0
        after = _run_state(workdir, vol)
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    print(f"second run refused in {took:.2f}s, `config check` took {base:.2f}s ({phase})")
    assert r.returncode == 1, r.stderr
    assert re.search(rf"job 'app' is already running \(pid {first.pid}, started \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)",
                     r.stderr), r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and r.stdout == ""
    assert took < base + 1.0, f"the second run took {took:.2f}s to give up ({base:.2f}s to start and read the config)"
    assert after == before  # the first run is held in its phase: whatever changed, the second run did
    assert first.returncode == 0, err
    listed = json.loads(snapagent("list", "--json", config=cfg, check=True).stdout)
    assert [b["id"] for b in listed] == [out.strip().splitlines()[-1]]
    snapagent("verify", listed[0]["id"], config=cfg, check=True)


def test_restore_refuses_nonempty_and_symlink_dest_and_force_moves_aside(app, workdir):
    vol, db, _ = app
    cfg = write_config(workdir, job_toml(vol, db))
    bid = backup(cfg)
    dest = workdir / "dest"
    dest.mkdir()
    (dest / "precious").write_text("keep me")
    r = snapagent("restore", bid, "--to", str(dest), config=cfg)
    assert r.returncode == 1 and "not empty" in r.stderr
    assert sorted(p.name for p in dest.iterdir()) == ["precious"]
    link = workdir / "link"
    link.symlink_to(dest)
    r = snapagent("restore", bid, "--to", str(link), config=cfg)
    assert r.returncode == 1 and "symlink" in r.stderr
    r = snapagent("restore", bid, "--to", str(dest), "--force", config=cfg, check=True)
    aside = [p for p in workdir.iterdir() if p.name.startswith("dest.pre-restore-")]
    assert len(aside) == 1 and (aside[0] / "precious").read_text() == "keep me"
    assert (dest / "app" / "app.db").exists() or any(dest.glob("*/app.db"))


def test_hostile_volume_name_and_send_format(subvol, workdir, btrfs_root):
    vol = subvol("-x; $(touch pwned) `id` a b")
    db = vol / "my db.sqlite"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (a)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(500)])
    conn.commit()
    for fmt in ("tar", "send"):
        scratch = btrfs_root / f"scratch-{vol.name}"  # send streams are received on btrfs only
        cfg = write_config(workdir, job_toml(vol, db, extra=f'export = "{fmt}"', name=f"j{fmt}"),
                           agent=f"scratch_dir = {toml_str(scratch)}")
        bid = backup(cfg, f"j{fmt}")
        dest = btrfs_root / f"restore {fmt} {vol.name}"
        if fmt == "send":
            bad = snapagent("restore", bid, "--to", str(workdir / "not-btrfs"), config=cfg)
            assert bad.returncode == 1 and f"--to {workdir / 'not-btrfs'}: a btrfs send stream can only be received on btrfs" in bad.stderr
            assert not (workdir / "not-btrfs").exists()
        out = snapagent("restore", bid, "--to", str(dest), "--json", config=cfg, check=True)
        restored = Path(json.loads(out.stdout)["databases"][0]["restored"])
        c2 = sqlite3.connect(restored)
        assert c2.execute("SELECT count(*) FROM t").fetchone()[0] == 500
        assert c2.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        c2.close()
        assert "PASS" in snapagent("drill", bid, config=cfg, check=True).stdout
    conn.close()
    assert not list(Path.cwd().glob("pwned")) and not list(vol.parent.glob("pwned"))
    assert snapshots_left(vol) == []


def test_next_run_cleans_up_after_a_killed_one(big_app, workdir):
    vol, db = big_app
    cfg = write_config(workdir, job_toml(vol, db))
    proc = _start_and_wait_for_export(cfg, workdir)
    proc.kill()
    proc.wait()
    assert len(snapshots_left(vol)) == 1
    r = snapagent("-v", "backup", "app", config=cfg, check=True)  # -v: progress lines off a terminal
    assert "cleaned up after an earlier run: deleted btrfs snapshot" in r.stderr
    assert "removed partial backup" in r.stderr
    assert snapshots_left(vol) == [] and len(listed(cfg)) == 1
    assert [p.name for p in (workdir / "backups" / "app").iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("journal_mode", ["wal", "delete"])
def test_a_writer_committing_back_to_back_cannot_starve_the_lock(subvol, workdir, journal_mode):
    """A writer that commits without pause (SQLite's own busy handler sleeps between tries and
    used to lose to it for seconds): the lock is taken at once, every backup succeeds well within
    max_freeze = 2s, and every row acknowledged before the lock is in the restore."""
    vol = subvol("busy")
    db = vol / "app.db"
    w = Writer(db, workdir / "acks.txt", pace=0, journal_mode=journal_mode)
    waits, windows = [], []
    try:
        w.wait_for(500)
        cfg = write_config(workdir, job_toml(vol, db, extra='max_freeze = "2s"'))
        for _ in range(5):
            bid = backup(cfg)
            m = json.loads(snapagent("show", bid, "--json", config=cfg, check=True).stdout)
            waits.append(m["quiescers"][0]["lock_wait_ms"])
            windows.append(m["freeze_window_ms"])
            time.sleep(1.05)  # backup ids have one-second resolution
        w.wait_for(len(w.acks()) + 100)
    finally:
        w.stop()
    rate = len(w.acks()) / (w.acks()[-1][1] - w.acks()[0][1])
    print(f"\nback-to-back writer ({journal_mode}, {rate:.0f} commits/s): lock wait p50 {sorted(waits)[2]:.1f} ms, "
          f"max {max(waits):.1f} ms; freeze window p50 {sorted(windows)[2]:.1f} ms, max {max(windows):.1f} ms")
    # SQLite's own busy handler lost this race for 0.85-3.1 s per backup (p50 ~1.6 s). The retry
    # at once wins within the writer's next few transactions: a few ms on a quiet machine, ~0.2 s
    # at a load of 9 on 2 cores where this writer manages only ~110 commits/s. (Until the
    # checkpoint moved before the freeze window, its own retries hid this race: the lock came
    # at once after it, while the writer slept in its busy handler — and its worst commit paid
    # checkpoint and window together.) One backup may wait longer when the machine is
    # overcommitted and the writer is descheduled while it holds the lock.
    assert sorted(waits)[2] < 500 and max(waits) < 2000, waits
    dest = workdir / "restore"
    snapagent("restore", bid, "--to", str(dest), config=cfg, check=True)
    conn = sqlite3.connect(dest / m["volumes"][0]["label"] / "app.db")
    ids = {r[0] for r in conn.execute("SELECT id FROM t")}
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    locked = ts(m["quiescers"][0]["locked_at"])
    before = [i for i, t in w.acks() if t < locked]
    assert before and set(before) <= ids

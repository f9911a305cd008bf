"""The restic target end to end: real btrfs, a live SQLite database, a real restic repository (a
local path, or ``rclone serve restic`` on 127.0.0.1)."""

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

import psutil
import pytest

from tests.helpers import snapplaces
from tests.helpers.caps import need
from tests.helpers.cli import log_lines, snapagent, toml_str, write_config
from tests.helpers.procwatch import ProcWatch
from tests.helpers.restic_servers import rest_server
from tests.system import test_btrfs_sqlite as base
from tests.system.test_btrfs_sqlite import Writer

pytestmark = [pytest.mark.root, pytest.mark.btrfs]
PASSWORD = "correct horse battery staple 7f3a"


@pytest.fixture(autouse=True)
def _restic():
    need(shutil.which("restic") is not None, "needs restic (scripts/setup-restic.sh)")


def secret(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def restic(repo: str, pwfile: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
           "RESTIC_REPOSITORY": repo, "RESTIC_PASSWORD_FILE": str(pwfile)}
    return subprocess.run(["restic", *args], env=env, capture_output=True, text=True, check=check, timeout=300)


def config(workdir: Path, vol: Path, db: Path, repo: str, pwfile: Path, extra: str = "") -> Path:
    target = (f"[targets.off]\ntype = \"restic\"\nrepository = {toml_str(repo)}\n"
              f"password_file = {toml_str(pwfile)}\n{extra}\n")
    job = (f"[jobs.app]\ndriver = \"btrfs\"\nvolumes = [{toml_str(vol)}]\ntarget = \"off\"\n\n"
           f"[[jobs.app.quiesce]]\ntype = \"sqlite\"\npath = {toml_str(db)}\n")
    return write_config(workdir, job, extra=target)


app = base.app  # the live SQLite writer's fixtures
big_app = base.big_app


def round_trip(cfg: Path, workdir: Path, w: Writer, repo: str, pwfile: Path) -> None:
    with ProcWatch(PASSWORD) as pw:
        r = snapagent("backup", "app", config=cfg, check=True)
    assert pw.hits == [] and pw.samples > 0
    bid = r.stdout.strip().splitlines()[-1]
    w.wait_for(len(w.acks()) + 20)
    listed = json.loads(snapagent("list", "--json", config=cfg, check=True).stdout)
    assert [b["id"] for b in listed] == [bid]
    m = json.loads(snapagent("show", bid, "--json", config=cfg, check=True).stdout)
    assert m["job"] == "app" and all(a["compression"] == "zstd" for a in m["artifacts"])
    snaps = json.loads(restic(repo, pwfile, "snapshots", "--json").stdout)
    assert len(snaps) == len(m["artifacts"]) + 1
    assert all({"snapagent", "job=app", f"backup={bid}"} <= set(s["tags"]) for s in snaps)
    v = snapagent("verify", bid, config=cfg, check=True)
    assert "restic check" in v.stdout or "(repository)" in v.stdout, v.stdout
    dest = workdir / "restore"
    snapagent("restore", bid, "--to", str(dest), config=cfg, check=True)
    rdb = dest / m["volumes"][0]["label"] / "app.db"
    conn = sqlite3.connect(rdb)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ids = [i for (i,) in conn.execute("SELECT id FROM t ORDER BY id")]
    conn.close()
    assert ids == list(range(1, len(ids) + 1)) and len(ids) >= 100
    locked = m["quiescers"][0]["locked_at"]
    from datetime import datetime
    before = [i for i, t in w.acks() if t < datetime.fromisoformat(locked).timestamp()]
    assert set(before) <= set(ids), "a row acknowledged before the lock is missing"
    d = snapagent("drill", bid, config=cfg, check=True)
    assert "PASS sqlite" in d.stdout


def test_round_trip_local_repository(app, workdir):
    vol, db, w = app
    pwfile = secret(workdir / "pw", PASSWORD)
    repo = str(workdir / "repo")
    restic(repo, pwfile, "init")
    round_trip(config(workdir, vol, db, repo, pwfile), workdir, w, repo, pwfile)


def test_round_trip_rest_server(app, workdir):
    vol, db, w = app
    pwfile = secret(workdir / "pw", PASSWORD)
    with rest_server(workdir / "srv") as srv:
        restic(srv.url, pwfile, "init")
        round_trip(config(workdir, vol, db, srv.url, pwfile), workdir, w, srv.url, pwfile)


def test_config_refuses_a_readable_password_file(app, workdir):
    vol, db, _ = app
    pwfile = secret(workdir / "pw", PASSWORD)
    pwfile.chmod(0o644)
    cfg = config(workdir, vol, db, str(workdir / "repo"), pwfile)
    r = snapagent("config", "check", config=cfg)
    assert r.returncode == 2 and "targets.off.password_file" in r.stderr and "chmod 600" in r.stderr
    assert PASSWORD not in r.stderr + r.stdout and "Traceback" not in r.stderr


@pytest.mark.parametrize("fault", ["wrong password", "missing repository", "unreachable server"])
def test_faults_are_one_clear_line(app, workdir, fault):
    vol, db, _ = app
    pwfile = secret(workdir / "pw", PASSWORD)
    repo = str(workdir / "repo")
    restic(repo, pwfile, "init")
    if fault == "wrong password":
        pwfile = secret(workdir / "pw2", "not the password")
    elif fault == "missing repository":
        repo = str(workdir / "nope")
    else:
        repo = "rest:http://127.0.0.1:9/repo/"
    cfg = config(workdir, vol, db, repo, pwfile)
    r = snapagent("backup", "app", config=cfg)
    assert r.returncode == 1, (r.stdout, r.stderr)
    expect = {"wrong password": "wrong password", "missing repository": "does not exist",
              "unreachable server": "unreachable"}[fault]
    assert expect in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not snapplaces.snapdir(vol).is_dir() or not list(snapplaces.snapdir(vol).iterdir())


def _restic_backup_of(pid: int, timeout: float = 60) -> psutil.Process:
    """Wait until the snapagent run ``pid`` has a ``restic backup`` child storing a volume."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for p in psutil.Process(pid).children(recursive=True):
            try:
                cmd = p.cmdline()
            except psutil.NoSuchProcess:
                continue
            if cmd[:2] == ["restic", "backup"] or (len(cmd) > 1 and cmd[0].endswith("restic") and cmd[1] == "backup"):
                if any(".btrfs-send" in a or ".tar" in a for a in cmd) and not any("q00-" in a for a in cmd):
                    return p
        time.sleep(0.01)
    raise AssertionError("restic backup never started")


@pytest.mark.parametrize("killed", ["agent", "agent and restic"])
def test_sigkilled_backup_then_cleanup_leaves_no_snapshot(big_app, workdir, killed):
    vol, db = big_app
    pwfile = secret(workdir / "pw", PASSWORD)
    repo = str(workdir / "repo")
    restic(repo, pwfile, "init")
    cfg = config(workdir, vol, db, repo, pwfile)
    proc = subprocess.Popen([sys.executable, "-m", "snapagent", "-c", str(cfg), "backup", "app"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child = _restic_backup_of(proc.pid)
    locks = Path(repo) / "locks"  # restic takes its lock only after deriving the key: slow on a loaded machine
    end = time.monotonic() + 120
    while not (locks.is_dir() and any(locks.iterdir())) and time.monotonic() < end:
        time.sleep(0.02)
    assert any(locks.iterdir()), "restic backup never took its lock"
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if killed == "agent":
        child.wait(120)  # its input ends early: restic 0.14 stores a truncated snapshot
        assert json.loads(restic(repo, pwfile, "snapshots", "--json").stdout), "expected the truncated snapshot"
    else:
        child.kill()
        child.wait(10)
        assert restic(repo, pwfile, "list", "locks", "--no-lock").stdout.strip(), "expected restic's stale lock"
        r = restic(repo, pwfile, "forget", "--keep-last", "1", check=False)
        assert r.returncode != 0 and "already locked" in r.stderr
    assert json.loads(snapagent("list", "--json", config=cfg, check=True).stdout) == []
    r = snapagent("cleanup", config=cfg, check=True)
    assert "unfinished backup" in r.stdout, r.stdout
    assert json.loads(restic(repo, pwfile, "snapshots", "--json").stdout) in ([], None)
    assert restic(repo, pwfile, "list", "locks", "--no-lock").stdout.strip() == "", "the dead restic's lock is left"
    bid = snapagent("backup", "app", config=cfg, check=True).stdout.strip().splitlines()[-1]
    assert [b["id"] for b in json.loads(snapagent("list", "--json", config=cfg, check=True).stdout)] == [bid]


def test_append_only_accepts_backups_and_refuses_prune(app, workdir):
    vol, db, _ = app
    pwfile = secret(workdir / "pw", PASSWORD)
    with rest_server(workdir / "srv", append_only=True) as srv:
        restic(srv.url, pwfile, "init")
        cfg = config(workdir, vol, db, srv.url, pwfile)
        cfg.write_text(cfg.read_text() + "\n[jobs.app.retention]\nkeep_last = 1\n")
        snapagent("backup", "app", config=cfg, check=True)
        snapagent("backup", "app", config=cfg, check=True)
        r = snapagent("prune", config=cfg)
        assert r.returncode == 1 and "append-only" in (r.stdout + r.stderr), (r.stdout, r.stderr)
        assert len(json.loads(snapagent("list", "--json", config=cfg, check=True).stdout)) == 2


def test_server_killed_mid_upload_then_next_run_succeeds(big_app, workdir):
    vol, db = big_app
    pwfile = secret(workdir / "pw", PASSWORD)
    with rest_server(workdir / "srv") as srv:
        restic(srv.url, pwfile, "init")
        port = srv.port
        cfg = config(workdir, vol, db, srv.url, pwfile, "stall_timeout = 15\n")
        proc = subprocess.Popen([sys.executable, "-m", "snapagent", "-c", str(cfg), "backup", "app"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _restic_backup_of(proc.pid)
        time.sleep(0.5)
        srv.kill()
        out, err = proc.communicate(timeout=400)
    assert proc.returncode == 1, (out, err)
    lines = log_lines(err, "error")
    assert len(lines) == 1 and "unreachable" in lines[0]["message"] and "Traceback" not in err, err
    assert "left for `snapagent cleanup`" in err  # its snapshots: the server is gone, so is the undo
    with rest_server(workdir / "srv", port=port) as srv:
        assert json.loads(snapagent("list", "--json", config=cfg, check=True).stdout) == []
        bid = snapagent("backup", "app", config=cfg, check=True).stdout.strip().splitlines()[-1]
        assert [b["id"] for b in json.loads(snapagent("list", "--json", config=cfg, check=True).stdout)] == [bid]
        snaps = json.loads(restic(srv.url, pwfile, "snapshots", "--json").stdout)
        assert {s["tags"][2] for s in snaps} == {f"backup={bid}"}, "the killed run's snapshots are left"


def test_export_that_fails_after_restic_stored_it_leaves_no_snapshot(app, workdir):
    """tar writes part of the volume, then fails: restic 0.14 has stored a truncated snapshot by
    then (its input just ended); the run forgets it before it exits."""
    vol, db, _ = app
    pwfile = secret(workdir / "pw", PASSWORD)
    repo = str(workdir / "repo")
    restic(repo, pwfile, "init")
    tar = workdir / "truncating-tar"
    tar.write_text(f"#!{sys.executable}\nimport subprocess, sys\n"
                   "p = subprocess.Popen(['/usr/bin/tar', *sys.argv[1:]], stdout=subprocess.PIPE)\n"
                   "if '--create' not in sys.argv:\n    sys.stdout.buffer.write(p.stdout.read()); sys.exit(p.wait())\n"
                   "sys.stdout.buffer.write(p.stdout.read(20000)); sys.stdout.flush(); p.kill()\n"
                   "sys.exit(print('tar: injected failure', file=sys.stderr) or 2)\n")
    tar.chmod(0o755)
    cfg = config(workdir, vol, db, repo, pwfile)
    cfg.write_text(cfg.read_text().replace("[agent]\n", f"[agent]\ntools.tar = {toml_str(tar)}\n", 1))
    r = snapagent("backup", "app", "-v", config=cfg)
    assert r.returncode == 1 and "Traceback" not in r.stderr, (r.stdout, r.stderr)
    assert "forgot 1 snapshot(s) of unfinished backup" in r.stderr, r.stderr
    assert json.loads(restic(repo, pwfile, "snapshots", "--json").stdout) in ([], None), "a truncated snapshot is left"
    assert json.loads(snapagent("list", "--json", config=cfg, check=True).stdout) == []


def test_a_stale_restic_lock_is_reported_with_the_command_that_clears_it(app, workdir):
    vol, db, _ = app
    pwfile = secret(workdir / "pw", PASSWORD)
    repo = str(workdir / "repo")
    restic(repo, pwfile, "init")
    cfg = config(workdir, vol, db, repo, pwfile)
    cfg.write_text(cfg.read_text() + "\n[jobs.app.retention]\nkeep_last = 1\n")
    snapagent("backup", "app", config=cfg, check=True)
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
           "RESTIC_REPOSITORY": repo, "RESTIC_PASSWORD_FILE": str(pwfile)}
    holder = subprocess.Popen(["restic", "backup", "--stdin"], stdin=subprocess.PIPE, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    end = time.monotonic() + 30
    while not restic(repo, pwfile, "list", "locks", "--no-lock").stdout.strip():
        assert time.monotonic() < end, "restic never took its lock"
        time.sleep(0.1)
    holder.kill()  # someone else's restic, killed: its lock stays
    holder.wait()
    snapagent("backup", "app", config=cfg, check=False)  # its own prune meets the lock: a warning
    r = snapagent("prune", config=cfg)
    assert r.returncode == 1 and f"restic -r {repo} unlock" in r.stdout + r.stderr, (r.stdout, r.stderr)

"""Death releases everything, on real components: SIGKILL the agent (``python -m snapagent backup``)
inside the freeze window — after the snapshot, while a slow ``post`` keeps the window open — and
measure how soon the application can write again. SQLite and the hold command release because the
kernel ends what the agent held; fsfreeze because its watchdog sees its pipe close. Then
``snapagent cleanup`` removes the snapshot the dead run left and thaws anything still frozen.

And the bounded window: a quiescer that takes too long fails the run (exit 1) with the measured
window named, releases everything and stores nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from snapagent.journal import read_open
from tests.helpers import snapplaces
from tests.helpers.cli import ROOT, log_lines, snapagent, toml_str, write_config
from tests.helpers.loopfs import ext4_loop, is_frozen, was_frozen, write_takes

pytestmark = [pytest.mark.root, pytest.mark.btrfs]
HELPERS = ROOT / "tests" / "helpers"
PY = sys.executable
MAX_FREEZE = 5.0


def slow_command(marker: Path, where: str = "post", seconds: float = 60) -> str:
    """A command quiescer whose ``where`` step creates ``marker`` then sleeps (dies with the agent)."""
    slow = f"[{toml_str(PY)}, {toml_str(HELPERS / 'slowpre.py')}, {toml_str(marker)}, \"{seconds}\"]"
    quick = f"[{toml_str(PY)}, \"-c\", \"pass\"]"
    return f"""
[[jobs.j.quiesce]]
type = "command"
name = "slow"
pre = {slow if where == "pre" else quick}
{"post = " + slow if where == "post" else ""}
timeout = "60s"
"""


def job(vol: Path, quiesce: str, max_freeze: float = MAX_FREEZE) -> str:
    return f"""
[jobs.j]
driver = "btrfs"
volumes = [{toml_str(vol)}]
target = "local"
max_freeze = "{max_freeze}s"
{quiesce}
"""


def wait_for(cond, limit: float, step: float = 0.02):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        v = cond()
        if v:
            return v
        time.sleep(step)
    return None


def run_and_kill(cfg: Path, marker: Path, before_kill=lambda: None, sig=signal.SIGKILL) -> float:
    """Start a backup, wait until the slow step runs (everything held, snapshot taken), call
    ``before_kill``, send ``sig`` to the agent; return the kill time (time.time())."""
    agent = subprocess.Popen([PY, "-m", "snapagent", "-c", str(cfg), "backup", "j"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        if not wait_for(marker.exists, 60):
            agent.kill()
            out, err = agent.communicate()
            pytest.fail(f"the agent never reached the slow step: rc={agent.returncode}\n{err}")
        time.sleep(0.3)
        before_kill()
        t_kill = time.time()
        agent.send_signal(sig)
    finally:
        agent.wait(30)
    if sig == signal.SIGKILL:
        assert agent.returncode == -signal.SIGKILL
    else:  # the agent released everything itself and failed the run, saying at once what it waits for
        err = agent.stderr.read()
        assert agent.returncode == 1 and "interrupted by SIGTERM" in err, err
        stopping = [m for m in log_lines(err, "warning") if m["message"].startswith("stopping (SIGTERM): ")]
        assert len(stopping) == 1, err
        said = datetime.fromisoformat(stopping[0]["time"]).timestamp()
        print(f"\n{stopping[0]['message']} (said {(said - t_kill) * 1000:.0f} ms after the signal)")
    return t_kill


def first_ack_after(ack: Path, t: float, limit: float) -> float | None:
    """Return the time of the writer's first acknowledged commit after ``t``, waiting up to ``limit``."""
    def look():
        for line in reversed(ack.read_text().splitlines()):
            parts = line.split()
            if len(parts) == 2 and float(parts[1]) > t:
                return min(float(l.split()[1]) for l in ack.read_text().splitlines()
                           if len(l.split()) == 2 and float(l.split()[1]) > t)
        return None
    return wait_for(look, limit)


def blocked_since(ack: Path) -> float:
    """Seconds since the writer's last acknowledged commit."""
    return time.time() - float(ack.read_text().splitlines()[-1].split()[1])


def leftovers(workdir: Path, vol: Path) -> tuple[list, list]:
    snapdir = snapplaces.snapdir(vol)
    snaps = sorted(p.name for p in snapdir.iterdir()) if snapdir.exists() else []
    return snaps, sorted(p.name for p in (workdir / "state").glob("journal/*/*.jsonl"))


def cleanup_leaves_nothing(cfg: Path, workdir: Path, vol: Path) -> str:
    snaps, journals = leftovers(workdir, vol)
    assert len(snaps) == 1 and len(journals) == 1, (snaps, journals)  # the dead run left them
    r = snapagent("cleanup", config=cfg, check=True)
    assert leftovers(workdir, vol) == ([], [])
    assert json.loads(snapagent("--json", "list", config=cfg, check=True).stdout) == []
    return r.stdout


@pytest.fixture
def ext4(tmp_path):
    with ext4_loop(tmp_path / "ext4 a;$(touch x) -n") as mnt:
        yield mnt


def test_sqlite_writer_resumes_after_agent_killed(subvol, workdir, tmp_path):
    vol = subvol("app")
    db, ack, marker = vol / "app.db", tmp_path / "ack", tmp_path / "slow-started"
    writer = subprocess.Popen([PY, HELPERS / "writer.py", db, ack])
    try:
        assert wait_for(lambda: ack.exists() and ack.read_text().count("\n") > 10, 30)
        cfg = write_config(workdir, job(vol, f"""
[[jobs.j.quiesce]]
type = "sqlite"
path = {toml_str(db)}
busy_timeout = "5s"
""" + slow_command(marker)))
        def blocked():  # the writer is blocked by the agent's lock
            assert blocked_since(ack) > 0.25
        t_kill = run_and_kill(cfg, marker, blocked)
        resumed = first_ack_after(ack, t_kill, MAX_FREEZE + 1)
        assert resumed is not None, "the writer did not resume within max_freeze + 1 s"
        assert writer.poll() is None
    finally:
        writer.kill()
        writer.wait()
    print(f"\nSQLite: writer resumed {(resumed - t_kill) * 1000:.0f} ms after SIGKILL of the agent")
    assert resumed - t_kill < MAX_FREEZE + 1
    cleanup_leaves_nothing(cfg, workdir, vol)


def test_hold_command_releases_after_agent_killed(subvol, workdir, tmp_path):
    vol = subvol("muro")
    ack, marker = tmp_path / "ack", tmp_path / "slow-started"
    writer = subprocess.Popen([PY, HELPERS / "murodb_admin.py", "writer", vol, ack])
    try:
        assert wait_for(lambda: ack.exists() and ack.read_text().count("\n") > 10, 30)
        cfg = write_config(workdir, job(vol, f"""
[[jobs.j.quiesce]]
type = "command"
name = "murodb"
hold = [{toml_str(PY)}, {toml_str(HELPERS / 'murodb_admin.py')}, "lock", {toml_str(vol)}]
""" + slow_command(marker)))
        def blocked():  # the writer is blocked by the hold command's lock
            assert blocked_since(ack) > 0.25
        t_kill = run_and_kill(cfg, marker, blocked)
        resumed = first_ack_after(ack, t_kill, MAX_FREEZE + 1)
        assert resumed is not None, "the writer did not resume within max_freeze + 1 s"
        gone = wait_for(lambda: not _processes("murodb_admin.py", "lock", str(vol)), 5)
        assert gone, "the hold process is still running"
    finally:
        writer.kill()
        writer.wait()
    print(f"\nhold command: saw EOF, writer resumed {(resumed - t_kill) * 1000:.0f} ms after SIGKILL of the agent")
    assert resumed - t_kill < MAX_FREEZE + 1
    cleanup_leaves_nothing(cfg, workdir, vol)


def _processes(*words: str) -> list[int]:
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info["cmdline"] or []
        if all(w in cmd for w in words):
            found.append(p.info["pid"])
    return found


def _fsfreeze_job(vol: Path, mnt: Path, marker: Path) -> str:
    return job(vol, f"""
[[jobs.j.quiesce]]
type = "fsfreeze"
mountpoints = [{toml_str(mnt)}]
""" + slow_command(marker))


def test_fsfreeze_watchdog_thaws_after_agent_killed(subvol, workdir, tmp_path, ext4):
    vol = subvol("v")
    marker = tmp_path / "slow-started"
    cfg = write_config(workdir, _fsfreeze_job(vol, ext4, marker))

    def frozen():
        assert is_frozen(ext4, 0.3)
    t_kill = run_and_kill(cfg, marker, frozen)
    took = write_takes(ext4, MAX_FREEZE + 1)  # started right after the kill: blocks until the thaw
    assert took is not None, "the filesystem was still frozen max_freeze + 1 s after the kill"
    resumed = time.time() - t_kill
    print(f"\nfsfreeze: watchdog thawed, a write completed {resumed * 1000:.0f} ms after SIGKILL of the agent")
    assert resumed < MAX_FREEZE + 1
    assert wait_for(lambda: not _processes("snapagent.quiesce.fsfreeze.watchdog", str(ext4)), 5)
    journal, = (workdir / "state").glob("journal/*/*.jsonl")
    # the snapshot is journaled before the first lock (Driver.prepare_snapshot); undone in
    # reverse: the freeze first
    assert [r["kind"] for r in read_open(journal) if r.get("op") == "open"] == ["snapshot", "freeze"]
    out = cleanup_leaves_nothing(cfg, workdir, vol)
    assert f"{ext4} was not frozen" in out


def test_cleanup_thaws_when_the_watchdog_died_too(subvol, workdir, tmp_path, ext4):
    """The watchdog killed as well (say, by the OOM killer): the freeze stays until
    `snapagent cleanup` thaws what the journal says is frozen."""
    vol = subvol("v")
    marker = tmp_path / "slow-started"
    cfg = write_config(workdir, _fsfreeze_job(vol, ext4, marker))
    agent = subprocess.Popen([PY, "-m", "snapagent", "-c", str(cfg), "backup", "j"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert wait_for(marker.exists, 60)
        journal, = (workdir / "state").glob("journal/*/*.jsonl")
        rec, = [r for r in read_open(journal) if r.get("kind") == "freeze"]
        os.kill(rec["watchdog_pid"], signal.SIGKILL)
        time.sleep(0.2)
        agent.kill()
    finally:
        agent.wait(30)
    assert is_frozen(ext4), "expected the filesystem to stay frozen without its watchdog"
    out = cleanup_leaves_nothing(cfg, workdir, vol)
    assert f"thawed {ext4}" in out
    took = write_takes(ext4, 5)
    assert took is not None and took < 1


def test_sigterm_releases_everything_itself(subvol, workdir, tmp_path, ext4):
    """SIGTERM (systemd stopping the job): the agent thaws, releases the hold command, undoes the
    snapshot and exits 1 — no cleanup needed."""
    vol = subvol("muro")
    marker = tmp_path / "slow-started"
    cfg = write_config(workdir, job(vol, f"""
[[jobs.j.quiesce]]
type = "fsfreeze"
mountpoints = [{toml_str(ext4)}]
[[jobs.j.quiesce]]
type = "command"
name = "murodb"
hold = [{toml_str(PY)}, {toml_str(HELPERS / 'murodb_admin.py')}, "lock", {toml_str(vol)}]
""" + slow_command(marker)))

    def frozen():
        assert is_frozen(ext4, 0.3)
    t_term = run_and_kill(cfg, marker, frozen, signal.SIGTERM)
    took = write_takes(ext4, 5)
    assert took is not None
    print(f"\nSIGTERM: agent released everything and exited within {(time.time() - t_term) * 1000:.0f} ms")
    assert not _processes("murodb_admin.py", "lock", str(vol))
    assert leftovers(workdir, vol) == ([], [])


# -- bounded window --------------------------------------------------------------------------------

def test_slow_post_overruns_max_freeze(subvol, workdir, tmp_path):
    """The window is measured to the last release: a post taking 2 s with max_freeze 1 s fails the
    run naming the measured window; the snapshot is abandoned, the SQLite writer goes on."""
    vol = subvol("app")
    db, ack, marker = vol / "app.db", tmp_path / "ack", tmp_path / "slow-started"
    writer = subprocess.Popen([PY, HELPERS / "writer.py", db, ack])
    try:
        assert wait_for(lambda: ack.exists() and ack.read_text().count("\n") > 10, 30)
        cfg = write_config(workdir, job(vol, f"""
[[jobs.j.quiesce]]
type = "sqlite"
path = {toml_str(db)}
""" + slow_command(marker, "post", 2), max_freeze=1))
        r = snapagent("backup", "j", config=cfg)
        t_end = time.time()
        assert r.returncode == 1, r.stderr
        m = re.search(r"freeze window (\d+) ms exceeded max_freeze 1000 ms", r.stderr)
        assert m, r.stderr
        window = int(m.group(1))
        assert window > 1000
        assert first_ack_after(ack, t_end, 2) is not None
    finally:
        writer.kill()
        writer.wait()
    print(f"\nbounded window: run failed with measured window {window} ms > max_freeze 1000 ms")
    assert leftovers(workdir, vol) == ([], [])
    assert json.loads(snapagent("--json", "list", config=cfg, check=True).stdout) == []


def test_slow_pre_is_killed_at_max_freeze(subvol, workdir, tmp_path, ext4):
    """A pre still running when max_freeze runs out is killed; the run fails (exit 1) within about
    max_freeze, the frozen filesystem is thawed and nothing is stored."""
    vol = subvol("v")
    marker = tmp_path / "slow-started"
    cfg = write_config(workdir, job(vol, f"""
[[jobs.j.quiesce]]
type = "fsfreeze"
mountpoints = [{toml_str(ext4)}]
""" + slow_command(marker, "pre", 30), max_freeze=1.5))
    t0 = time.monotonic()
    r = snapagent("backup", "j", config=cfg)
    took = time.monotonic() - t0
    assert r.returncode == 1, r.stderr
    assert "was still running when max_freeze ran out" in r.stderr, r.stderr
    assert not was_frozen(ext4)
    assert leftovers(workdir, vol) == ([], [])
    assert json.loads(snapagent("--json", "list", config=cfg, check=True).stdout) == []
    print(f"\nbounded window: slow pre killed at max_freeze 1.5 s; run failed after {took:.1f} s in all")

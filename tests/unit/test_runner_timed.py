"""The runner's timed path (every command with a timeout: all those inside the freeze window):
killed with its whole process group at the timeout and reported, killed and reaped when the wait
is interrupted, skipped in a dry run, and seen by a fake executor exactly as written."""

from __future__ import annotations

import os
import signal
import time

import pytest

from snapagent.errors import CommandFailed, Interrupted
from snapagent.util.runner import Runner
from tests.helpers.fakerunner import FakeRunner


def _gone(pid: int) -> bool:
    """True when ``pid`` no longer exists (reaped) or is a zombie nobody waits for."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_timeout_kills_the_process_group_at_the_timeout_and_reports_it(tmp_path):
    pids = tmp_path / "pids"
    t = time.monotonic()
    with pytest.raises(CommandFailed) as ei:
        Runner().run(["sh", "-c", f'sleep 30 & echo $$ $! > "{pids}"; wait'], mutating=False, timeout=0.5)
    took = time.monotonic() - t
    assert ei.value.returncode is None and "timed out after 0.5s" in str(ei.value)
    assert took >= 0.5  # not before the timeout: the upper side is a benchmark's business, not a test's
    shell, child = map(int, pids.read_text().split())
    deadline = time.monotonic() + 5
    while not (_gone(shell) and _gone(child)) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _gone(shell) and _gone(child), "the background child of the command outlived the timeout"


def test_a_timed_command_gets_its_input_and_its_exit_code():
    r = Runner()
    assert r.run(["cat"], mutating=False, timeout=10, input="a b\n").stdout == "a b\n"
    with pytest.raises(CommandFailed) as ei:
        r.run(["sh", "-c", "echo no >&2; exit 7"], mutating=False, timeout=10)
    assert ei.value.returncode == 7 and "no" in ei.value.stderr


def test_interruption_kills_and_reaps_the_command(tmp_path):
    pidfile = tmp_path / "pid"

    def interrupt(*_):
        raise Interrupted("SIGTERM")

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.5)
    try:
        with pytest.raises(Interrupted):
            Runner().run(["sh", "-c", f'echo $$ > "{pidfile}"; exec sleep 30'], mutating=False, timeout=60)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    pid = int(pidfile.read_text())
    assert _gone(pid)
    with pytest.raises(ChildProcessError):  # reaped: nothing left for us to wait for
        os.waitpid(pid, os.WNOHANG)


def test_dry_run_skips_a_timed_mutation(tmp_path):
    r = Runner(dry_run=True, echo=lambda line: None)
    assert r.run(["touch", str(tmp_path / "x")], mutating=True, timeout=5).dry_run
    assert not (tmp_path / "x").exists()


def test_the_fake_executor_sees_the_argv_and_timeout_and_recording_times_each_command():
    r = FakeRunner()
    with r.recording() as ran:
        r.run(["btrfs", "subvolume", "snapshot", "-r", "/a b", "/a b/s"], mutating=True, timeout=3)
        r.run(["mysql", "--password=hunter2"], mutating=False, redact=["hunter2"])
    r.run(["true"], mutating=False)
    assert r.calls[0].argv == ["btrfs", "subvolume", "snapshot", "-r", "/a b", "/a b/s"] and r.calls[0].timeout == 3
    assert [x.line for x in ran] == ["btrfs subvolume snapshot -r '/a b' '/a b/s'", "mysql --password=***"]
    assert all(x.seconds >= 0 for x in ran)

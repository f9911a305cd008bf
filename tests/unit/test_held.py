"""``Held``: what restore and drill take is journaled before it is taken, given back newest first,
and every record can be undone from the journal alone (what ``snapagent cleanup`` does after a
kill) — including a server process, found again by the marker in its command line."""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil

from snapagent import cleanup
from snapagent.held import Held
from snapagent.journal import Journal, read_open
from snapagent.util.runner import Runner
from tests.helpers.fakerunner import FakeRunner


def test_taken_in_order_given_back_newest_first(tmp_path):
    j = Journal.start(tmp_path / "state", "_drill", "d1")
    r = FakeRunner()
    held = Held(j, r)
    scratch = held.directory(tmp_path / "scratch dir")
    (scratch / "f").write_text("x")
    held.grant_traverse([scratch], 101)
    tmp = held.tempdir("snapagent-test-")
    assert [(x["kind"], x["key"]) for x in read_open(j.path)] == [
        ("dir", str(scratch)), ("acl", str(scratch)), ("dir", str(tmp))]
    assert held.release_all() == []
    assert not scratch.exists() and not tmp.exists() and read_open(j.path) == []
    # the ACL entry was removed while its directory still existed: newest first
    assert r.argvs() == [["setfacl", "-m", "u:101:x", "--", str(scratch)], ["setfacl", "-x", "u:101", "--", str(scratch)]]


def test_keep_skips_and_move_aside_comes_back(tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "old").write_text("old content")
    j = Journal.start(tmp_path / "state", "_restore", "r1")
    held = Held(j, Runner())
    aside = held.move_aside(dest, tmp_path / "dest.pre-restore-x")
    held.directory(dest)
    (dest / "new").write_text("half restored")
    # killed here: cleanup undoes from the journal alone
    j.close_file()
    assert cleanup.sweep(tmp_path / "state", Runner()) == [f"removed {dest}", f"moved {aside} back to {dest}"]
    assert sorted(p.name for p in dest.iterdir()) == ["old"] and not aside.exists()


def test_a_directory_with_a_mount_inside_is_never_removed(tmp_path, monkeypatch):
    from snapagent.util import mountinfo

    d = tmp_path / "scratch"
    (d / "m").mkdir(parents=True)
    table = mountinfo.parse(f"22 1 8:1 / / rw - ext4 /dev/sda1 rw\n50 22 7:3 / {d}/m rw - ext4 /dev/loop3 rw\n")
    monkeypatch.setattr(mountinfo, "read", lambda path=None: table)
    held = Held(None, Runner())
    held.directory(d, keep_dir=True)
    failed = held.release_all()
    assert len(failed) == 1 and "is mounted inside it" in failed[0] and (d / "m").is_dir()


def test_a_server_is_found_by_its_marker_after_a_kill(tmp_path):
    marker = str(tmp_path / "sock dir")
    j = Journal.start(tmp_path / "state", "_drill", "d2")
    held = Held(j, Runner())
    proc = held.start([sys.executable, "-c", "import time; time.sleep(60)", marker], marker=marker, stop_timeout=5)
    pid = proc.proc.pid
    assert psutil.pid_exists(pid)
    j.close_file()  # the drill died; its server did not
    done = cleanup.sweep(tmp_path / "state", Runner())
    assert done == [f"stopped pid {pid} ({marker})"]
    proc.proc.wait(5)
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert cleanup.sweep(tmp_path / "state", Runner()) == []  # nothing left, journal gone


def test_release_stops_the_server_with_its_own_signal(tmp_path):
    flag, ready = tmp_path / "got SIGINT", tmp_path / "ready"
    code = (f"import signal, sys, time, pathlib\n"
            f"signal.signal(signal.SIGINT, lambda *a: (pathlib.Path({str(flag)!r}).touch(), sys.exit(0)))\n"
            f"pathlib.Path({str(ready)!r}).touch()\n"
            f"time.sleep(60)\n")
    held = Held(None, Runner())
    held.start([sys.executable, "-c", code, "marker-xyz"], marker="marker-xyz", stop_signal=signal.SIGINT)
    end = time.monotonic() + 30
    while not ready.exists():
        assert time.monotonic() < end
        time.sleep(0.01)
    t0 = time.monotonic()
    held.release("process", "marker-xyz")
    assert flag.exists() and time.monotonic() - t0 < 5
    assert not [p for p in psutil.process_iter(["cmdline"]) if "marker-xyz" in (p.info["cmdline"] or [])
                and p.pid != os.getpid()]

"""The btrfs driver's exact argv, with hostile volume names (fake runner)."""

import time
from pathlib import Path

from plugins.btrfs import BtrfsDriver, BtrfsOptions
from snapagent.plugin.driver import Snapshot
from tests.helpers.fakerunner import FakeRunner

HOSTILE = "/srv/-x; $(touch pwned) `id` a b"


def test_snapshot_argv_hostile_name():
    r = FakeRunner(dry_run=True)
    d = BtrfsDriver(r)
    snaps = d.snapshot([HOSTILE], "snapagent-app-1", time.monotonic() + 10)
    # by default next to the volume (its parent is on the same filesystem), never inside it
    assert r.echoed == [
        "would run: btrfs subvolume snapshot -r '/srv/-x; $(touch pwned) `id` a b' "
        "/srv/.snapagent-snapshots/snapagent-app-1.0"
    ]
    assert snaps[0].handle == "/srv/.snapagent-snapshots/snapagent-app-1.0"


def test_snapshot_real_argv_is_a_list(tmp_path):
    r = FakeRunner()
    vol = tmp_path / "-v ol"
    vol.mkdir()
    BtrfsDriver(r).snapshot([str(vol)], "n", time.monotonic() + 10)
    assert r.argvs() == [["btrfs", "subvolume", "snapshot", "-r", str(vol), f"{tmp_path}/.snapagent-snapshots/n.0"]]


def test_default_place_is_outside_every_volume_of_the_job(tmp_path):
    r = FakeRunner()
    outer, inner = tmp_path / "pg", tmp_path / "pg" / "pg_wal"
    inner.mkdir(parents=True)
    d = BtrfsDriver(r)
    d.snapshot([str(outer), str(inner)], "n", time.monotonic() + 10)
    # pg_wal's parent is the other volume: its snapshot goes one level further up
    assert [argv[-1] for argv in r.argvs()] == [f"{tmp_path}/.snapagent-snapshots/n.0", f"{tmp_path}/.snapagent-snapshots/n.1"]


def test_an_empty_old_default_directory_is_removed_before_the_next_snapshot(tmp_path):
    vol, kept = tmp_path / "vol", tmp_path / "chain"
    (vol / ".snapagent-snapshots").mkdir(parents=True)
    (kept / ".snapagent-snapshots" / "snapagent-app-1").mkdir(parents=True)  # a kept parent: left for its chain
    BtrfsDriver(FakeRunner()).before_quiesce([str(vol), str(kept)])
    assert not (vol / ".snapagent-snapshots").exists() and (kept / ".snapagent-snapshots").exists()


def test_absolute_snapshot_dir_suffixes_index(tmp_path):
    r = FakeRunner()
    d = BtrfsDriver(r, BtrfsOptions(snapshot_dir=str(tmp_path / "snaps")))
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    d.snapshot([str(a), str(b)], "n", time.monotonic() + 10)
    assert [argv[-1] for argv in r.argvs()] == [f"{tmp_path}/snaps/n.0", f"{tmp_path}/snaps/n.1"]


def test_tar_export_argv_excludes_snapshot_dir():
    r = FakeRunner(lambda argv: b"TARDATA" if argv[0] == "tar" else "")
    d = BtrfsDriver(r)
    with d.export(Snapshot(HOSTILE, "/s/-snap", "n"), "tar") as s:
        assert s.read() == b"TARDATA"
    assert r.argvs() == [[
        "tar", "--create", "--file=-", "--format=posix", "--directory", "/s/-snap", "--xattrs",
        "--xattrs-include=*", "--acls", "--sparse", "--numeric-owner", "--one-file-system",
        "--no-wildcards", "--exclude=./.snapagent-snapshots", ".",
    ]]


def test_send_export_argv_uses_double_dash():
    r = FakeRunner()
    with BtrfsDriver(r).export(Snapshot("v", "-snap", "n"), "send") as s:
        s.read()
    assert r.argvs() == [["btrfs", "subvolume", "show", "--", "-snap"], ["btrfs", "send", "--", "-snap"]]


def test_release_argv(tmp_path):
    r = FakeRunner()
    snap = tmp_path / "-s"
    snap.mkdir()
    BtrfsDriver(r).release(Snapshot("v", str(snap), "n"))
    assert r.argvs() == [["btrfs", "subvolume", "delete", "--commit-after", str(snap)]]


def test_undo_of_vanished_snapshot_runs_nothing(tmp_path):
    r = FakeRunner()
    msg = BtrfsDriver.undo({"kind": "snapshot", "key": str(tmp_path / "gone")}, r)
    assert "already gone" in msg and r.calls == []
    assert Path(tmp_path).exists()


def test_undo_of_a_top_level_mount_that_is_gone_removes_its_directory(tmp_path):
    r = FakeRunner()
    mnt = tmp_path / "top-x"
    mnt.mkdir()
    msg = BtrfsDriver.undo({"kind": "mount", "key": str(mnt)}, r)
    assert "no longer mounted" in msg and r.calls == [] and not mnt.exists()


def test_before_quiesce_finds_places_once(tmp_path):
    r = FakeRunner()
    vol = tmp_path / "v"
    vol.mkdir()
    d = BtrfsDriver(r)
    d.before_quiesce([str(vol)])
    assert d._places == {str(vol): (tmp_path / ".snapagent-snapshots", False)} and r.calls == []

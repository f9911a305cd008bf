"""The btrfs driver's incremental chain, exact argv (fake runner): ``btrfs send -p`` from a usable
parent, a full send (with the reason) from an unusable one, keep/release of bases, and the restore
of a chain: each link received next to its parent, the older deleted, the newest made writable."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

import plugins.btrfs as btrfs
from plugins.btrfs import BtrfsDriver
from snapagent.plugin.driver import DirectoryDest, IncrementalBase, Snapshot
from tests.helpers.fakerunner import FakeRunner
from tests.helpers.manifests import volume


def show(uuid: str, readonly: bool = True) -> str:
    return (f"x\n\tName: \t\t\tx\n\tUUID: \t\t\t{uuid}\n\tParent UUID: \t\t-\n"
            f"\tFlags: \t\t\t{'readonly' if readonly else '-'}\n")


class Journal:
    def __init__(self):
        self.open_, self.closed = [], []

    def open(self, kind, key, owner, **kw):
        self.open_.append((kind, key))

    def close(self, kind, key):
        self.closed.append((kind, key))


@pytest.fixture
def vol(tmp_path):
    v = tmp_path / "app -x"
    (v / ".snapagent-snapshots" / "snapagent-app-1").mkdir(parents=True)
    (v / ".snapagent-snapshots" / "snapagent-app-2").mkdir(parents=True)
    return v


def base_record(vol: Path, uuid: str = "U1", name: str = "snapagent-app-1"):
    return volume(str(vol), fmt="send", snapshot=str(vol / ".snapagent-snapshots" / name), kept=True,
                  info={"uuid": uuid})


def export(drv, snap, base):
    with drv.export(snap, "send", base) as s:
        s.read()


def test_is_an_incremental_base_for_send_only():
    drv = BtrfsDriver(FakeRunner())
    assert isinstance(drv, IncrementalBase) and drv.keeps_base("send") and not drv.keeps_base("tar")
    assert "btrfs send -p" in BtrfsDriver.incremental_refusal("tar", None)


def test_send_minus_p_from_the_kept_parent(vol):
    parent, snap_path = vol / ".snapagent-snapshots" / "snapagent-app-1", vol / ".snapagent-snapshots" / "snapagent-app-2"
    r = FakeRunner(lambda argv: show("U1" if argv[-1] == str(parent) else "U2") if argv[1] == "subvolume" else b"S")
    snap = Snapshot(str(vol), str(snap_path), "snapagent-app-2")
    export(BtrfsDriver(r), snap, base_record(vol))
    assert r.argvs() == [["btrfs", "subvolume", "show", "--", str(snap_path)],
                         ["btrfs", "subvolume", "show", "--", str(parent)],
                         ["btrfs", "send", "-p", str(parent), "--", str(snap_path)]]
    assert snap.info == {"uuid": "U2", "parent_snapshot": str(parent), "parent_uuid": "U1"}


@pytest.mark.parametrize("case, why", [
    ("uuid", "its UUID changed (a different subvolume of the same name)"),
    ("writable", "it is no longer read-only"),
    ("gone", "it no longer exists"),
    ("foreign", "is not a snapshot snapagent made of"),
    ("other volume", "it is of another volume"),
])
def test_unusable_parent_means_a_full_send_with_the_reason(vol, case, why):
    parent = vol / ".snapagent-snapshots" / "snapagent-app-1"
    rec = base_record(vol)
    if case == "gone":
        parent.rmdir()
    elif case == "foreign":
        rec = rec.model_copy(update={"snapshot": str(vol / "elsewhere" / "snapagent-app-1")})
    elif case == "other volume":
        rec = rec.model_copy(update={"volume": "/srv/other"})
    r = FakeRunner(lambda argv: show("U9" if case == "uuid" else "U1", readonly=case != "writable")
                   if argv[1] == "subvolume" else b"S")
    snap = Snapshot(str(vol), str(vol / ".snapagent-snapshots" / "snapagent-app-2"), "snapagent-app-2")
    export(BtrfsDriver(r), snap, rec)
    assert r.argvs()[-1] == ["btrfs", "send", "--", snap.handle]
    assert why in snap.info["full_reason"] and "parent_snapshot" not in snap.info


def test_keep_closes_the_journal_record_and_leaves_the_snapshot(vol):
    r, j = FakeRunner(), Journal()
    drv = BtrfsDriver(r)
    drv.journal = j
    drv.keep(Snapshot(str(vol), "/s/snap", "n"))
    assert j.closed == [("snapshot", "/s/snap")] and r.calls == []


def test_release_base_deletes_only_snapagents_snapshot_with_the_recorded_uuid(vol):
    parent = vol / ".snapagent-snapshots" / "snapagent-app-1"
    r, j = FakeRunner(lambda argv: show("U1") if argv[1] == "subvolume" and argv[2] == "show" else ""), Journal()
    drv = BtrfsDriver(r)
    drv.journal = j  # journaled while it is deleted: a kill in between leaves it to `snapagent cleanup`
    drv.release_base(base_record(vol))
    assert j.open_ == j.closed == [("snapshot", str(parent))]
    assert r.argvs() == [["btrfs", "subvolume", "show", "--", str(parent)],
                         ["btrfs", "subvolume", "delete", "--commit-after", str(parent)]]
    for rec in (base_record(vol, uuid="OTHER"),  # replaced by another subvolume of that name
                base_record(vol).model_copy(update={"snapshot": str(vol)}),  # the volume itself
                base_record(vol).model_copy(update={"snapshot": "/etc"}),
                base_record(vol, name="snapagent-gone")):
        r = FakeRunner(lambda argv: show("U1") if argv[2] == "show" else "")
        BtrfsDriver(r).release_base(rec)
        assert not any(argv[2] == "delete" for argv in r.argvs()), rec.snapshot


def test_restore_of_a_chain_keeps_one_link_and_finishes_writable(tmp_path, monkeypatch):
    monkeypatch.setattr(btrfs, "_fs_magic", lambda p: btrfs.BTRFS_SUPER_MAGIC)
    dest = tmp_path / "DEST"
    dest.mkdir()
    recs = [volume("/srv/app", fmt="send", snapshot=f"/srv/app/.snapagent-snapshots/snapagent-app-{i}",
                   **({"parent": f"app-2026120{i - 1}T000000Z", "incremental": True} if i > 1 else {}))
            for i in (1, 2, 3)]
    made: set[Path] = set()

    def answer(argv):
        if argv[:3] == ["btrfs", "subvolume", "delete"]:
            made.discard(Path(argv[-1]))
        return b""

    r = FakeRunner(answer)
    j = Journal()
    drv = BtrfsDriver(r)
    drv.journal = j
    monkeypatch.setattr(Path, "exists", lambda p: p in made or p == dest)
    vdest = DirectoryDest(dest / "app")
    for i, rec in enumerate(recs, 1):
        got = drv.restore(io.BytesIO(b"stream"), "send", vdest, rec, None)
        made.add(dest / f"snapagent-app-{i}")
        assert got == dest / f"snapagent-app-{i}"
    assert drv.finish_chain(vdest, recs[-1]) == dest / "app"
    receive = ["btrfs", "receive", "-e", "--chroot", "--", str(dest)]
    assert r.argvs() == [
        receive, receive, ["btrfs", "subvolume", "delete", "--commit-after", str(dest / "snapagent-app-1")],
        receive, ["btrfs", "subvolume", "delete", "--commit-after", str(dest / "snapagent-app-2")],
        ["btrfs", "subvolume", "snapshot", str(dest / "snapagent-app-3"), str(dest / "app")],
        ["btrfs", "subvolume", "delete", "--commit-after", str(dest / "snapagent-app-3")],
    ]
    assert [k for _, k in j.open_] == [str(dest / f"snapagent-app-{i}") for i in (1, 2, 3)]
    assert sorted(k for _, k in j.closed) == sorted(k for _, k in j.open_)  # every received link closed


def test_tar_restore_needs_no_finish(tmp_path):
    drv = BtrfsDriver(FakeRunner())
    assert drv.finish_chain(DirectoryDest(tmp_path / "x"), volume()) == tmp_path / "x"


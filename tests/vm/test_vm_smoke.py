"""Smoke tests of the test VM itself: real LVM (classic and thin snapshots) and OpenZFS work.

They prove what the later driver tests rely on, with small data (TCG is slow).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.vm.vmtools import VolumeGroup, ZPool, pipe, run

pytestmark = pytest.mark.vm


def lv_field(vg: VolumeGroup, lv: str, field: str) -> str:
    """Return one lvs field of vg/lv, stripped."""
    return run(["lvs", "--noheadings", "-o", field, vg.lv_ref(lv)]).stdout.strip()


def mount(device: str, where: Path, *options: str) -> Path:
    where.mkdir(parents=True, exist_ok=True)
    run(["mount", *(["-o", ",".join(options)] if options else []), device, str(where)])
    return where


def test_lvm_classic_snapshot_is_point_in_time(lvm_vg: VolumeGroup, tmp_path: Path) -> None:
    run(["lvcreate", "-q", "-y", "-L", "64M", "-n", "data", lvm_vg.name])
    run(["mkfs.ext4", "-q", lvm_vg.lv_path("data")])
    origin = mount(lvm_vg.lv_path("data"), tmp_path / "origin")
    (origin / "file").write_text("before snapshot\n")
    os.sync()

    run(["lvcreate", "-q", "-y", "-s", "-L", "16M", "-n", "snap", lvm_vg.lv_ref("data")])
    (origin / "file").write_text("after snapshot\n")
    os.sync()
    assert lv_field(lvm_vg, "snap", "lv_attr").startswith("s")
    assert lv_field(lvm_vg, "snap", "origin") == "data"

    snap = mount(lvm_vg.lv_path("snap"), tmp_path / "snap", "ro")
    assert (snap / "file").read_text() == "before snapshot\n"
    assert (origin / "file").read_text() == "after snapshot\n"
    run(["umount", str(snap)])

    run(["lvremove", "-q", "-y", lvm_vg.lv_ref("snap")])
    assert run(["lvs", lvm_vg.lv_ref("snap")], check=False).returncode != 0
    run(["umount", str(origin)])


def test_lvm_thin_snapshot(lvm_vg: VolumeGroup, tmp_path: Path) -> None:
    run(["lvcreate", "-q", "-y", "-L", "96M", "-T", lvm_vg.lv_ref("pool")])
    run(["lvcreate", "-q", "-y", "-V", "128M", "-T", lvm_vg.lv_ref("pool"), "-n", "thin"])
    run(["mkfs.ext4", "-q", lvm_vg.lv_path("thin")])
    origin = mount(lvm_vg.lv_path("thin"), tmp_path / "thin")
    (origin / "file").write_text("thin before\n")
    os.sync()

    run(["lvcreate", "-q", "-y", "-s", "-n", "tsnap", lvm_vg.lv_ref("thin")])  # thin: no size
    (origin / "file").write_text("thin after\n")
    os.sync()
    assert lv_field(lvm_vg, "tsnap", "segtype") == "thin"
    assert lv_field(lvm_vg, "tsnap", "pool_lv") == "pool"

    run(["lvchange", "-q", "-ay", "-K", lvm_vg.lv_ref("tsnap")])  # thin snapshots skip activation
    snap = mount(lvm_vg.lv_path("tsnap"), tmp_path / "tsnap", "ro")
    assert (snap / "file").read_text() == "thin before\n"
    run(["umount", str(snap)])
    run(["lvremove", "-q", "-y", lvm_vg.lv_ref("tsnap")])
    run(["umount", str(origin)])


def test_zfs_atomic_snapshot_and_send_receive(zpool: ZPool) -> None:
    a, b, copy = zpool.dataset("a"), zpool.dataset("b"), zpool.dataset("copy")
    for ds in (a, b):
        run(["zfs", "create", ds])
        (zpool.mountpoint(ds) / "file").write_text(f"{ds} at x\n")

    run(["zfs", "snapshot", f"{a}@x", f"{b}@x"])  # one call: one transaction group for both
    txgs = run(["zfs", "get", "-Hp", "-o", "value", "createtxg", f"{a}@x", f"{b}@x"]).stdout.split()
    assert len(txgs) == 2 and txgs[0] == txgs[1]
    (zpool.mountpoint(a) / "file").write_text("changed after x\n")

    pipe(["zfs", "send", f"{a}@x"], ["zfs", "receive", copy])
    assert (zpool.mountpoint(copy) / "file").read_text() == f"{a} at x\n"
    assert (zpool.mountpoint(a) / ".zfs" / "snapshot" / "x" / "file").read_text() == f"{a} at x\n"
    assert run(["zfs", "list", "-H", "-o", "name", f"{copy}@x"]).stdout.strip() == f"{copy}@x"


def test_zfs_dataset_name_with_space(zpool: ZPool) -> None:
    ds, copy = zpool.dataset("my data"), zpool.dataset("copy of my data")
    run(["zfs", "create", ds])
    mnt = zpool.mountpoint(ds)
    assert mnt.name == "my data"
    (mnt / "file").write_text("spaced\n")

    run(["zfs", "snapshot", f"{ds}@snap 1"])
    names = run(["zfs", "list", "-H", "-o", "name", "-t", "snapshot", "-r", ds]).stdout.splitlines()
    assert names == [f"{ds}@snap 1"]
    assert (mnt / ".zfs" / "snapshot" / "snap 1" / "file").read_text() == "spaced\n"

    pipe(["zfs", "send", f"{ds}@snap 1"], ["zfs", "receive", copy])
    assert (zpool.mountpoint(copy) / "file").read_text() == "spaced\n"

"""The VM tier: tests marked ``vm`` run inside snapagent's test VM, never directly on the host.

On the host (SNAPAGENT_IN_VM unset) the ``vm`` tests are deselected, and the one host test
``test_vm_tier.py::test_vm_tier`` boots the guest once and runs them all there (tests/vm/harness.py).
Inside the guest (SNAPAGENT_IN_VM=1) they run, with the fixtures below:

- ``loopdev(size="256M") -> LoopDevice``: a loop device over a sparse file in the guest's tmpfs.
- ``make_vg(name=None, size="256M") -> VolumeGroup`` and ``lvm_vg`` (one 256 MiB VG): a PV on a
  loop device and a VG on it; everything in it is unmounted and removed afterwards.
- ``make_zpool(name=None, size="256M") -> ZPool`` and ``zpool`` (one 256 MiB pool): a pool on a
  loop device, ``-o cachefile=none -R /mnt`` (the root is read-only); destroyed afterwards.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.vm import harness
from tests.vm.vmtools import IN_VM, LoopDevice, VolumeGroup, ZPool, parse_size, run, umount_under

_names = itertools.count(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bench-vm-runs", type=int, default=0,
                     help="tests/vm/test_bench_vm.py: runs per figure (0: quick mode, as in the VM tier); "
                          "bench/cases/vm.py sets it")


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Say in pytest's header where the VM tier runs, or why it cannot."""
    if IN_VM:
        return [f"vm: inside the test VM (kernel {os.uname().release})"]
    try:
        image = harness.find_image()
    except harness.VMUnavailable as exc:
        return [f"vm: unavailable ({exc}); {harness.SETUP_HINT}"]
    return [f"vm: guest kernel {image.kver}, zfs {image.zfs_version}, qemu {image.qemu}"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On the host, deselect the tests marked vm: test_vm_tier runs them inside the guest."""
    if IN_VM:
        return
    in_guest = [item for item in items if item.get_closest_marker("vm")]
    if in_guest:
        config.hook.pytest_deselected(items=in_guest)
        items[:] = [item for item in items if not item.get_closest_marker("vm")]


def _require_vm() -> None:
    if not IN_VM:
        pytest.skip("needs the test VM (device-mapper, ZFS): mark the test vm")


@pytest.fixture
def loopdev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., LoopDevice]]:
    """Factory: ``loopdev(size="256M")`` returns a new LoopDevice; all are detached afterwards."""
    _require_vm()
    made: list[LoopDevice] = []

    def make(size: str | int = "256M") -> LoopDevice:
        nbytes = parse_size(size)
        backing = tmp_path_factory.mktemp("loop") / "disk.img"
        with open(backing, "wb") as f:
            f.truncate(nbytes)
        device = run(["losetup", "-f", "--show", str(backing)]).stdout.strip()
        dev = LoopDevice(device, backing, nbytes)
        made.append(dev)
        return dev

    yield make
    for dev in reversed(made):
        run(["losetup", "-d", dev.device], check=False)
        dev.backing_file.unlink(missing_ok=True)


@pytest.fixture
def make_vg(loopdev: Callable[..., LoopDevice]) -> Iterator[Callable[..., VolumeGroup]]:
    """Factory: ``make_vg(name=None, size="256M")`` returns a VolumeGroup on a fresh loop PV.

    Afterwards its LVs are unmounted, deactivated and removed with the VG and the PV.
    """
    made: list[VolumeGroup] = []

    def make(name: str | None = None, size: str | int = "256M") -> VolumeGroup:
        pv = loopdev(size)
        vg = VolumeGroup(name or f"savg{next(_names)}", pv)
        run(["pvcreate", "-q", "-y", pv.device])
        run(["vgcreate", "-q", "-y", vg.name, pv.device])
        made.append(vg)
        return vg

    yield make
    for vg in reversed(made):
        mapper = "/dev/mapper/" + vg.name.replace("-", "--") + "-"
        umount_under([mapper, f"/dev/{vg.name}/"])
        run(["vgchange", "-q", "-an", vg.name], check=False)
        run(["vgremove", "-q", "-ff", "-y", vg.name], check=False)
        run(["pvremove", "-q", "-ff", "-y", vg.pv.device], check=False)


@pytest.fixture
def lvm_vg(make_vg: Callable[..., VolumeGroup]) -> VolumeGroup:
    """A 256 MiB volume group (name ``savgN``) on a loop device, removed afterwards."""
    return make_vg()


@pytest.fixture
def make_zpool(loopdev: Callable[..., LoopDevice]) -> Iterator[Callable[..., ZPool]]:
    """Factory: ``make_zpool(name=None, size="256M")`` returns a ZPool on a fresh loop device.

    The pool is created with ``-o cachefile=none -R /mnt`` (its datasets mount under
    ``/mnt/<pool>/...``) and destroyed afterwards.
    """
    made: list[ZPool] = []

    def make(name: str | None = None, size: str | int = "256M") -> ZPool:
        vdev = loopdev(size)
        pool = ZPool(name or f"satank{next(_names)}", Path("/mnt"), vdev)
        run(["zpool", "create", "-f", "-o", "cachefile=none", "-R", str(pool.altroot), pool.name, vdev.device])
        made.append(pool)
        return pool

    yield make
    for pool in reversed(made):
        run(["zpool", "destroy", "-f", pool.name], check=False)  # -f: unmounts its datasets


@pytest.fixture
def zpool(make_zpool: Callable[..., ZPool]) -> ZPool:
    """A 256 MiB pool (name ``satankN``) on a loop device, mounted under /mnt, destroyed afterwards."""
    return make_zpool()

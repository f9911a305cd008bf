"""Shared fixtures: a real btrfs filesystem on a loop device and per-test work dirs. Helpers that
tests import live in the ``tests.helpers`` package, never here."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.helpers.caps import IN_CI, need


def pytest_addoption(parser):
    parser.addoption("--torture-backups", type=int, default=10,
                     help="backups per combination in tests/torture (CI: 10; long runs: more)")


@pytest.fixture
def torture_backups(request) -> int:
    return request.config.getoption("--torture-backups")


def pytest_report_header(config):
    caps = {
        "root": os.geteuid() == 0,
        "btrfs-progs": shutil.which("mkfs.btrfs") is not None,
        "tar": shutil.which("tar") is not None,
        "CI": IN_CI,
    }
    return "snapagent capabilities: " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in caps.items())


@pytest.fixture(scope="session")
def btrfs_root(tmp_path_factory):
    """A fresh btrfs filesystem (1 GiB, sparse file on a loop device) mounted for the session."""
    need(os.geteuid() == 0, "needs root for loop devices and mounts")
    need(shutil.which("mkfs.btrfs") is not None, "needs btrfs-progs (run scripts/bootstrap.sh --tests)")
    base = tmp_path_factory.mktemp("btrfs")
    img, mnt = base / "fs.img", base / "mnt"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(1 << 30)
    subprocess.run(["mkfs.btrfs", "-q", str(img)], check=True, capture_output=True)
    r = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True, text=True)
    need(r.returncode == 0, f"cannot mount a btrfs loop device: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture
def subvol(btrfs_root):
    """Factory: create a new btrfs subvolume (unique name, may hold spaces etc.) and return its path."""
    made = []

    def make(name: str = "vol") -> Path:
        p = btrfs_root / f"{name}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["btrfs", "subvolume", "create", str(p)], check=True, capture_output=True)
        made.append(p)
        return p

    yield make
    # the default place (next to the volume) is shared by every subvolume of the session: empty it
    for snapdir in [btrfs_root / ".snapagent-snapshots"] + [p / ".snapagent-snapshots" for p in made]:
        if snapdir.is_dir():
            for s in snapdir.iterdir():
                subprocess.run(["btrfs", "subvolume", "delete", str(s)], capture_output=True)
    for p in made:
        subprocess.run(["btrfs", "subvolume", "delete", str(p)], capture_output=True)


@pytest.fixture
def workdir(tmp_path):
    """A directory holding the config, the state dir and the directory target of one test."""
    (tmp_path / "state").mkdir()
    return tmp_path

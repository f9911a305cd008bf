"""Where the btrfs driver keeps snapshots of a test volume, and a walk proving none is inside it.

A subvolume made by the ``subvol`` fixture (or any plain subvolume whose parent directory is on the
same btrfs filesystem) has its snapshots in ``<parent>/.snapagent-snapshots`` (``plugins/btrfs/
places.py``); a volume that is a mount root has them in the filesystem's top-level subvolume.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

DIRNAME = ".snapagent-snapshots"


def snapdir(vol: Path) -> Path:
    """Return the default snapshot place of plain subvolume ``vol``: next to it."""
    return vol.parent / DIRNAME


def delete_snapshots(d: Path) -> None:
    """Delete every snapshot in snapshot place ``d`` (test teardown)."""
    for s in d.iterdir() if d.is_dir() else []:
        subprocess.run(["btrfs", "subvolume", "delete", "--", str(s)], capture_output=True)


def ours_inside(vol: Path) -> list[str]:
    """Return every path below ``vol`` (nested subvolumes included, symlinks not followed) that
    snapagent made: a name starting with ``.snapagent`` or ``snapagent-``."""
    found = []
    for d, dirs, files in os.walk(vol):
        for name in dirs + files:
            if name.startswith((".snapagent", "snapagent-")):
                found.append(os.path.relpath(os.path.join(d, name), vol))
    return sorted(found)


def snapshots(vol: Path) -> list[str]:
    """Return the names of the snapshots in ``vol``'s default place (shared by the session's subvolumes)."""
    d = snapdir(vol)
    return sorted(p.name for p in d.iterdir()) if d.is_dir() else []

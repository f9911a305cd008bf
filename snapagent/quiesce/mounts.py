"""Which mount (and which filesystem) a path lives on, read from ``/proc/self/mountinfo``.

A filesystem is identified by its superblock's device number (mountinfo field 3): bind mounts of
one filesystem share it, and so do all btrfs subvolumes of one filesystem (whose ``st_dev`` differ).
FIFREEZE acts on the superblock, so this is the identity that matters for freezing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Mount:
    """One line of mountinfo: ``dev`` is "major:minor" of the filesystem's superblock."""

    dev: str
    mountpoint: str
    fstype: str
    source: str

    def describe(self) -> str:
        return f"{self.mountpoint} ({self.fstype} on {self.source})"


def _unescape(s: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def mounts(mountinfo: str = "/proc/self/mountinfo") -> list[Mount]:
    """Return the mounts of this process's namespace, in mount order."""
    out = []
    with open(mountinfo, encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.rstrip("\n").partition(" - ")
            a, b = left.split(" "), right.split(" ")
            if len(a) < 5 or len(b) < 2:
                continue
            out.append(Mount(a[2], _unescape(a[4]), _unescape(b[0]), _unescape(b[1])))
    return out


def existing(path: Path | str) -> str:
    """Return the real path of ``path``, or of its nearest existing ancestor."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return os.path.realpath(p)


def find_mount(real: str, table: list[Mount]) -> Mount:
    """Given a resolved absolute path, return the mount it lies on: the longest matching mount
    point; among equal ones the last mounted (it hides the others). Raise LookupError."""
    best: Mount | None = None
    for m in table:
        mp = m.mountpoint
        if real == mp or real.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) >= len(best.mountpoint):
                best = m
    if best is None:
        raise LookupError(f"no mount holds {real}")
    return best


def mount_of(path: Path | str, table: list[Mount] | None = None) -> Mount:
    """Return the mount ``path`` (or its nearest existing ancestor, resolved) lies on."""
    return find_mount(existing(path), table if table is not None else mounts())

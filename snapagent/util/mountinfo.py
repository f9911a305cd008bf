"""Which mounts exist, read from ``/proc/self/mountinfo``: the one parser of it in snapagent.

A filesystem is identified by its superblock's device number (field 3, ``major:minor``), never by
name strings: bind mounts of one filesystem share it, and so do all btrfs subvolumes of one
filesystem (whose ``st_dev`` differ). FIFREEZE acts on the superblock, and an LVM volume is found
by its device number, so this is the identity that matters. The kernel escapes space, tab, newline
and backslash in paths as octal (``\\040`` …); they are unescaped here so mount points with spaces
work.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = "/proc/self/mountinfo"
_OCTAL = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    """Return a mountinfo path field with its octal escapes (``\\040``) decoded."""
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field)


@dataclass(frozen=True)
class MountEntry:
    """One line of mountinfo: the filesystem's device number, the subtree of it that is mounted
    (``root``), where, its type, source and super options."""

    major: int
    minor: int
    root: str
    mount_point: str
    fstype: str
    source: str
    options: str = ""

    @property
    def dev(self) -> str:
        """The superblock's device number as "major:minor" (one per filesystem)."""
        return f"{self.major}:{self.minor}"

    def describe(self) -> str:
        return f"{self.mount_point} ({self.fstype} on {self.source})"


def parse(text: str) -> list[MountEntry]:
    """Given the text of a mountinfo file, return its entries in mount order (malformed lines are skipped)."""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        f = left.split(" ")
        r = right.split(" ")
        if len(f) < 5 or len(r) < 2 or ":" not in f[2]:
            continue
        major, _, minor = f[2].partition(":")
        try:
            out.append(MountEntry(int(major), int(minor), unescape(f[3]), unescape(f[4]), unescape(r[0]),
                                  unescape(r[1]), r[2] if len(r) > 2 else ""))
        except ValueError:
            continue
    return out


def read(path: str = MOUNTINFO) -> list[MountEntry]:
    """Return the mounts of this process's mount namespace."""
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return parse(f.read())


def find_device(major: int, minor: int, entries: list[MountEntry] | None = None) -> MountEntry | None:
    """Return where device ``major:minor`` is mounted (the whole filesystem, ``root == "/"``,
    shortest path first), or None when it is not mounted."""
    entries = read() if entries is None else entries
    hits = [e for e in entries if (e.major, e.minor) == (major, minor)]
    hits.sort(key=lambda e: (e.root != "/", len(e.mount_point)))
    return hits[0] if hits else None


def mounted_at(path: Path | str, entries: list[MountEntry] | None = None) -> MountEntry | None:
    """Return the mount whose mount point is exactly ``path`` (the last one), or None."""
    entries = read() if entries is None else entries
    p = os.path.normpath(str(path))
    hits = [e for e in entries if e.mount_point == p]
    return hits[-1] if hits else None


def existing(path: Path | str) -> str:
    """Return the real path of ``path``, or of its nearest existing ancestor."""
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return os.path.realpath(p)


def find_mount(real: str, entries: list[MountEntry]) -> MountEntry:
    """Given a resolved absolute path, return the mount it lies on: the longest matching mount
    point; among equal ones the last mounted (it hides the others). Raise LookupError."""
    best: MountEntry | None = None
    for m in entries:
        mp = m.mount_point
        if real == mp or real.startswith(mp.rstrip("/") + "/"):
            if best is None or len(mp) >= len(best.mount_point):
                best = m
    if best is None:
        raise LookupError(f"no mount holds {real}")
    return best


def mount_of(path: Path | str, entries: list[MountEntry] | None = None) -> MountEntry:
    """Return the mount ``path`` (or its nearest existing ancestor, resolved) lies on."""
    return find_mount(existing(path), entries if entries is not None else read())

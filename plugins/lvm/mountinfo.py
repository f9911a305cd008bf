"""Find mounts in ``/proc/self/mountinfo`` by device number (major:minor), never by name strings.

The kernel escapes space, tab, newline and backslash in paths as octal (``\\040`` …); they are
unescaped here so mount points with spaces work.
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
    """One line of mountinfo."""

    major: int
    minor: int
    root: str
    mount_point: str
    fstype: str
    source: str
    options: str


def parse(text: str) -> list[MountEntry]:
    """Given the text of a mountinfo file, return its entries (malformed lines are skipped)."""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        f = left.split(" ")
        r = right.split(" ")
        if len(f) < 6 or len(r) < 2 or ":" not in f[2]:
            continue
        major, _, minor = f[2].partition(":")
        try:
            out.append(MountEntry(int(major), int(minor), unescape(f[3]), unescape(f[4]), r[0],
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


def mounted_at(path: Path, entries: list[MountEntry] | None = None) -> MountEntry | None:
    """Return the mount whose mount point is exactly ``path`` (the last one), or None."""
    entries = read() if entries is None else entries
    p = os.path.normpath(str(path))
    hits = [e for e in entries if e.mount_point == p]
    return hits[-1] if hits else None

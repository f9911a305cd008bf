"""ZFS naming rules, checked before any command runs (zfs_namecheck.c, OpenZFS 2.1).

A dataset name is ``pool[/component]...``: every character is a letter, a digit or one of
``_ - . : `` and space; the pool name begins with a letter; no empty, ``.`` or ``..`` component; at
most 255 characters. ``@`` (snapshots) and ``#`` (bookmarks) are delimiters, not name characters.
Anything else (``;``, ``$()``, quotes, newlines, tabs) can never name a dataset and is rejected here
with a clear message instead of reaching ``zfs``.
"""

from __future__ import annotations

import re

MAX_NAME = 255
_CHARS = re.compile(r"[A-Za-z0-9_.: -]*")
_RESERVED_POOLS = ("mirror", "raidz", "draid", "spare", "log")


def dataset_problem(name: str) -> str | None:
    """Given a dataset name, return why ZFS would refuse it, or None when it is valid."""
    if not name:
        return "empty name"
    if len(name) > MAX_NAME:
        return f"longer than {MAX_NAME} characters"
    for delim, what in (("@", "snapshot"), ("#", "bookmark")):
        if delim in name:
            return f"'{delim}' is the {what} delimiter; name the dataset itself"
    bad = sorted({c for c in name if c != "/" and not _CHARS.fullmatch(c)})
    if bad:
        return "invalid character(s) " + " ".join(repr(c) for c in bad) + " (ZFS allows letters, digits, '_', '-', '.', ':', ' ')"
    if name.startswith("/"):
        return "a dataset name is pool/dataset, not a path (no leading '/')"
    if name.endswith("/"):
        return "trailing '/'"
    parts = name.split("/")
    if any(p == "" for p in parts):
        return "empty component ('//')"
    if any(p in (".", "..") for p in parts):
        return "'.' or '..' component"
    pool = parts[0]
    if not pool[0].isascii() or not pool[0].isalpha():
        return f"pool name {pool!r} must begin with a letter"
    if pool.startswith(_RESERVED_POOLS):
        return f"pool name {pool!r} is reserved"
    return None


def pool_of(dataset: str) -> str:
    """Return the pool of ``dataset`` (its first component)."""
    return dataset.split("/", 1)[0]


def snapshot_of(dataset: str, snap: str) -> str:
    """Return the full snapshot name ``dataset@snap``."""
    return f"{dataset}@{snap}"


def dataset_of(snapshot: str) -> str:
    """Return the dataset of a full snapshot name ``dataset@snap``."""
    return snapshot.split("@", 1)[0]


def is_below(child: str, parent: str) -> bool:
    """Return True when dataset ``child`` is a strict descendant of ``parent``."""
    return child.startswith(parent + "/")

"""LVM names: ``vg/lv`` volume references, validated against LVM's own naming rules.

LVM allows only ``A-Z a-z 0-9 + _ . -`` in VG and LV names, no leading ``-``, not ``.``/``..``,
at most 127 characters, and reserves some substrings for internal LVs. Anything else is refused
here, before any command runs, with a message naming the volume (ConfigError, exit 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from snapagent.errors import ConfigError

_ALLOWED = re.compile(r"[A-Za-z0-9+_.-]+")
_RESERVED = ("_cdata", "_cmeta", "_corig", "_mlog", "_mimage", "_pmspare", "_rimage", "_rmeta",
             "_tdata", "_tmeta", "_vorigin", "_vdata")
MAX_NAME = 127


def name_problem(name: str) -> str | None:
    """Given a VG or LV name, return why LVM would refuse it, or None when it is valid."""
    if not name:
        return "is empty"
    if not _ALLOWED.fullmatch(name):
        bad = sorted({c for c in name if not _ALLOWED.fullmatch(c)})
        shown = ", ".join(repr(c) for c in bad)
        return f"contains {shown}; LVM names may only use A-Z a-z 0-9 + _ . -"
    if name.startswith("-"):
        return "starts with '-'"
    if name in (".", ".."):
        return "is '.' or '..'"
    if len(name) > MAX_NAME:
        return f"is longer than {MAX_NAME} characters"
    for r in _RESERVED:
        if r in name:
            return f"contains {r!r}, which LVM reserves for internal volumes"
    return None


@dataclass(frozen=True)
class LvRef:
    """A logical volume: its volume group and its name."""

    vg: str
    lv: str

    def __str__(self) -> str:
        return f"{self.vg}/{self.lv}"


def parse_volume(volume: str) -> LvRef:
    """Given a job volume ``"vg/lv"``, return its LvRef; raise ConfigError naming the volume."""
    parts = volume.split("/")
    if len(parts) != 2:
        raise ConfigError(f"volume {volume!r}: LVM volumes are written 'vg/lv' (volume group / logical volume)")
    for what, name in zip(("volume group", "logical volume"), parts):
        why = name_problem(name)
        if why:
            raise ConfigError(f"volume {volume!r}: {what} name {name!r} {why}")
    return LvRef(*parts)


def snapshot_name(base: str, index: int, count: int) -> str:
    """Return the LV name of the snapshot of volume ``index`` of ``count`` for snapshot ``base``.

    Raises ConfigError when the result is not a valid LV name (e.g. too long)."""
    name = base if count == 1 else f"{base}.{index}"
    why = name_problem(name)
    if why:
        raise ConfigError(f"snapshot name {name!r} {why}")
    return name

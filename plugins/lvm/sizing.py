"""The size policy of classic (COW) snapshots, and the check that the volume groups can hold them.

A policy is either a percentage of the origin (``"20%"``) or an absolute size (``"256M"``, ``"1G"``,
binary units). Sizes are rounded up to whole extents (at least one), as LVM would.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtb]?)(?:i?b)?\s*$", re.IGNORECASE)
_PERCENT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%\s*$")


@dataclass(frozen=True)
class SizePolicy:
    """Either ``percent`` of the origin or a fixed number of ``bytes``."""

    percent: float | None = None
    bytes: int | None = None

    def describe(self) -> str:
        return f"{self.percent:g}% of the origin" if self.percent is not None else human(self.bytes or 0)


def parse_policy(text: str) -> SizePolicy:
    """Given ``"20%"`` or ``"256M"``, return the SizePolicy; raise ValueError saying what is accepted."""
    m = _PERCENT.match(text)
    if m:
        pct = float(m.group(1))
        if not 0 < pct <= 100:
            raise ValueError(f"{text!r}: a percentage must be above 0 and at most 100")
        return SizePolicy(percent=pct)
    m = _SIZE.match(text)
    if m and m.group(2):
        n = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
        if n <= 0:
            raise ValueError(f"{text!r}: the size must be positive")
        return SizePolicy(bytes=n)
    raise ValueError(f"{text!r}: expected a percentage of the origin (\"20%\") or a size with a unit (\"256M\", \"1G\")")


def snapshot_bytes(policy: SizePolicy, origin_bytes: int, extent_bytes: int) -> int:
    """Return the COW size for an origin of ``origin_bytes``: the policy's size rounded up to whole
    extents of ``extent_bytes``, at least one extent."""
    want = policy.bytes if policy.bytes is not None else origin_bytes * (policy.percent or 0) / 100
    extents = max(1, math.ceil(want / extent_bytes))
    return extents * extent_bytes


def human(n: int) -> str:
    """Return ``n`` bytes as a short binary-unit string (``"64.0 MiB"``)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def room_problems(wanted: dict[str, list[tuple[str, int]]], vg_free: dict[str, int]) -> list[str]:
    """Given the snapshot sizes wanted per VG (``{vg: [(volume, bytes), …]}``) and each VG's free
    bytes, return one message per VG that cannot hold them all (empty when all fit)."""
    out = []
    for vg, items in wanted.items():
        total = sum(b for _, b in items)
        free = vg_free.get(vg, 0)
        if total > free:
            parts = ", ".join(f"{vol} {human(b)} ({b} bytes)" for vol, b in items)
            out.append(f"volume group {vg!r} has {human(free)} ({free} bytes) free, but the snapshot(s) need "
                       f"{human(total)} ({total} bytes): {parts}")
    return out

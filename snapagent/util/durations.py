"""Human durations in config and on the command line: ``500ms``, ``10s``, ``5m``, ``2h``, ``7d``."""

from __future__ import annotations

import re

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")


def parse_duration(value: object) -> float:
    """Given a duration (``"10s"``, ``"1.5m"``, or a number of seconds), return seconds as a float.

    Raises ValueError with a message that shows valid examples.
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r} (examples: 500ms, 10s, 5m, 1h, 7d)")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str) and (m := _RE.match(value)):
        seconds = float(m.group(1)) * _UNITS[m.group(2) or "s"]
    else:
        raise ValueError(f"invalid duration {value!r} (examples: 500ms, 10s, 5m, 1h, 7d)")
    if seconds <= 0:
        raise ValueError(f"duration must be positive, got {value!r}")
    return seconds


def parse_config_duration(value: object) -> float:
    """A duration in the config: like ``parse_duration``, but the unit is required. A bare number
    is refused, since the tools it stands beside disagree on the unit (SQLite's busy_timeout is in
    milliseconds, MySQL's lock_wait_timeout in seconds). Raises ValueError asking for a unit."""
    if (isinstance(value, (int, float)) and not isinstance(value, bool)) or \
            (isinstance(value, str) and (m := _RE.match(value)) and not m.group(2)):
        raise ValueError(f"{value!r} has no unit; write it with one, e.g. \"{value}s\" or \"{value}ms\" "
                         "(a bare number is ambiguous: seconds? milliseconds?)")
    return parse_duration(value)


def format_duration(seconds: float) -> str:
    """Return a short human form of ``seconds`` (``850ms``, ``12.3s``, ``4m05s``)."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s"

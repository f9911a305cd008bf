"""systemd ``OnCalendar`` expressions: validation and the next elapse.

Interface used by ``config``, ``check`` and ``status`` (implementation grows with the schedule work):

- ``validate(expr) -> str``: the normalized expression; raises ValueError naming what is wrong.
- ``next_elapse(expr, after) -> datetime | None``: the first time after ``after`` (aware) the
  timer fires, in ``after``'s zone; None when it never fires again.
- ``period(expr) -> float | None``: the nominal seconds between two elapses (None: irregular).
"""

from __future__ import annotations

from datetime import datetime, timedelta

_SHORTHANDS = {"minutely": 60.0, "hourly": 3600.0, "daily": 86400.0, "weekly": 7 * 86400.0}


def validate(expr: str) -> str:
    """Return ``expr`` normalized; raise ValueError when it is not a supported OnCalendar expression."""
    e = expr.strip().lower()
    if e not in _SHORTHANDS:
        raise ValueError(f"unsupported calendar expression {expr!r}")
    return e


def period(expr: str) -> float | None:
    """Return the nominal seconds between two elapses of ``expr``."""
    return _SHORTHANDS.get(validate(expr))


def next_elapse(expr: str, after: datetime) -> datetime | None:
    """Return the first elapse of ``expr`` strictly after ``after``."""
    e = validate(expr)
    t = after.replace(second=0, microsecond=0)
    if e == "minutely":
        return t + timedelta(minutes=1)
    t = t.replace(minute=0)
    if e == "hourly":
        return t + timedelta(hours=1)
    t = t.replace(hour=0)
    if e == "daily":
        return t + timedelta(days=1)
    return t + timedelta(days=7 - t.weekday())

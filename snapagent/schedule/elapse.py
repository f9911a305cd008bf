"""The next elapse of a parsed calendar expression, searched the way systemd searches it.

systemd (``calendarspec.c``, ``find_next``) walks broken-down *local* time field by field (year,
month, day, weekday, hour, minute, second), normalizing through ``mktime`` and restarting from the
normalized time whenever a candidate does not exist. This module does the same walk, so the DST
nights behave as the timer will:

- spring forward: a wall time inside the gap (02:30 in Europe/Berlin) does not exist and is skipped —
  a daily 02:30 timer does not fire that night;
- fall back: a wall time that exists twice elapses once, at the offset the search is in (the
  summer-time one for a timer that last fired before the change); the repeated hour is not fired
  again.

In: a ``calendar.Spec`` and an aware datetime. Out: an aware UTC datetime, or None (never again).
"""

from __future__ import annotations

import os
from datetime import date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

USEC = 1_000_000
MAX_YEAR = 2199
_STEPS = 200_000  # a bound on the walk; systemd's own bound is MAX_YEAR


def zone(name: str) -> tzinfo:
    """Return the IANA time zone ``name``; raise ValueError when there is no such zone."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r}") from None


def local_zone() -> tzinfo:
    """Return the zone systemd would use: ``$TZ`` (``:Area/City`` or a path), else /etc/localtime,
    else UTC (as glibc does for an unknown zone)."""
    tz = os.environ.get("TZ")
    try:
        if tz is not None:
            name = tz.lstrip(":")
            if not name:
                return timezone.utc
            if name.startswith("/"):
                with open(name, "rb") as f:
                    return ZoneInfo.from_file(f)
            return zone(name)
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        return timezone.utc


def _carry(f: list[int]) -> datetime:
    """Return the naive wall time of fields [year, month, day, hour, minute, second], carrying
    out-of-range values the way mktime does (month 13, day 0, hour 24 …)."""
    y, m = divmod(f[0] * 12 + f[1] - 1, 12)
    return datetime(y, m + 1, 1) + timedelta(days=f[2] - 1, hours=f[3], minutes=f[4], seconds=f[5])


def _fields(w: datetime) -> list[int]:
    return [w.year, w.month, w.day, w.hour, w.minute, w.second]


class _Clock:
    """mktime for one zone. Like glibc's, an ambiguous wall time takes the offset of the previous
    conversion; a wall time in a gap is moved forward by the gap."""

    def __init__(self, tz: tzinfo, offset: timedelta | None):
        self.tz = tz
        self.utc = tz is timezone.utc
        self.guess = offset

    def instant(self, w: datetime) -> datetime:
        """Return the aware UTC instant of naive local wall time ``w``."""
        if self.utc:
            return w.replace(tzinfo=timezone.utc)
        a, b = w.replace(tzinfo=self.tz, fold=0), w.replace(tzinfo=self.tz, fold=1)
        off = a.utcoffset()
        if off != b.utcoffset() and self._exists(a) and self.guess == b.utcoffset():
            off = b.utcoffset()  # the repeated hour: stay at the offset we are in
        inst = (w - off).replace(tzinfo=timezone.utc)
        self.guess = inst.astimezone(self.tz).utcoffset()
        return inst

    def _exists(self, a: datetime) -> bool:
        return a.astimezone(timezone.utc).astimezone(self.tz).replace(tzinfo=None) == a.replace(tzinfo=None)

    def normalize(self, f: list[int]) -> list[int]:
        """mktime + localtime: the fields of the wall time ``f`` really names."""
        if self.utc:
            return _fields(_carry(f))
        return _fields(self.instant(_carry(f)).astimezone(self.tz).replace(tzinfo=None))


def _within(clock: _Clock, f: list[int]) -> int:
    """systemd's tm_within_bounds: 1 when ``f`` is a real wall time; 0 when normalizing moved it
    forward (then ``f`` holds the normalized time with the field below the first changed one
    reset, so that 03-33 → 04-02 does not skip 04-01); -1 past MAX_YEAR or when it moved back."""
    if f[0] > MAX_YEAR:
        return -1
    n = clock.normalize(f)
    for i in range(6):
        if n[i] != f[i]:
            if n[i] < f[i]:
                return -1
            if i < 5:
                n[i + 1] = 1 if i + 1 in (1, 2) else 0
            f[:] = n
            return 0
    return 1


def _end_of_month(f: list[int], day: int) -> int:
    """The day of month that is ``day`` days from the end of ``f``'s month (1: the last), or -1."""
    w = _carry([f[0], f[1] + 1, 1 - day, 0, 0, 0])
    return w.day if (w.year, w.month) == (f[0], f[1]) else -1


def _match(items, val: int, f: list[int] | None = None) -> tuple[int, int]:
    """systemd's find_matching_component: (-1, val) no match; (0, val) ``val`` matches; (1, v) the
    next match ``v`` > ``val``. ``f`` given: day items count from the end of the month."""
    if items is None:
        return 0, val
    best = None
    for it in items:
        start, stop = it.start, it.stop
        if f is not None:
            start, stop = _end_of_month(f, start), _end_of_month(f, stop)
            if stop > 0:
                start, stop = stop, start
        if start >= val:
            cand = start
        elif it.repeat > 0:
            cand = start + it.repeat * -(-(val - start) // it.repeat)
            if stop >= 0 and cand > stop:
                continue
        else:
            continue
        best = cand if best is None else min(best, cand)
    if best is None:
        return -1, val
    return int(best != val), best


def _find_next(spec, clock: _Clock, f: list[int], usec: int) -> tuple[list[int], int] | None:
    """Walk from fields ``f`` + ``usec`` to the first matching wall time; None when none exists."""
    for _ in range(_STEPS):
        f = clock.normalize(f)
        r, f[0] = _match(spec.year, f[0])
        if r > 0:
            f[1:], usec = [1, 1, 0, 0, 0], 0
        if r < 0 or _within(clock, f) <= 0:
            return None
        r, f[1] = _match(spec.month, f[1])
        if r > 0:
            f[2:], usec = [1, 0, 0, 0], 0
        if r < 0 or (r := _within(clock, f)) < 0:
            f[0], f[1:], usec = f[0] + 1, [1, 1, 0, 0, 0], 0
            continue
        if r == 0:
            continue
        r, f[2] = _match(spec.day, f[2], f if spec.end_of_month else None)
        if r > 0:
            f[3:], usec = [0, 0, 0], 0
        if r < 0 or (r := _within(clock, f)) < 0:
            f[1], f[2:], usec = f[1] + 1, [1, 0, 0, 0], 0
            continue
        if r == 0:
            continue
        if spec.weekdays is not None and date(f[0], f[1], f[2]).weekday() not in spec.weekdays:
            f[2], f[3:], usec = f[2] + 1, [0, 0, 0], 0
            continue
        r, f[3] = _match(spec.hour, f[3])
        if r > 0:
            f[4:], usec = [0, 0], 0
        if r < 0 or (r := _within(clock, f)) < 0:
            f[2], f[3:], usec = f[2] + 1, [0, 0, 0], 0
            continue
        if r == 0:
            continue  # the hour does not exist here (DST): go on from the normalized time
        r, f[4] = _match(spec.minute, f[4])
        if r > 0:
            f[5], usec = 0, 0
        if r < 0 or (r := _within(clock, f)) < 0:
            f[3], f[4:], usec = f[3] + 1, [0, 0], 0
            continue
        if r == 0:
            continue
        r, v = _match(spec.second, f[5] * USEC + usec)
        f[5], usec = divmod(v, USEC)
        if r < 0 or (r := _within(clock, f)) < 0:
            f[4], f[5], usec = f[4] + 1, 0, 0
            continue
        if r == 0:
            continue
        return f, usec
    return None


def next_after(spec, after: datetime) -> datetime | None:
    """Return the first elapse of ``spec`` strictly after aware ``after`` (UTC), or None."""
    tz: tzinfo
    if spec.zone == "UTC":
        tz = timezone.utc
    else:
        tz = zone(spec.zone) if spec.zone else local_zone()
    start = after.astimezone(timezone.utc) + timedelta(microseconds=1)
    local = start.astimezone(tz)
    clock = _Clock(tz, local.utcoffset())
    found = _find_next(spec, clock, _fields(local.replace(tzinfo=None)), local.microsecond)
    if found is None:
        return None
    f, usec = found
    return clock.instant(_carry(f)) + timedelta(microseconds=usec)

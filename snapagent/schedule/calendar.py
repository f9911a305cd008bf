"""systemd ``OnCalendar`` expressions (systemd.time(7)): validation, the next elapse, the period.

Interface used by ``config``, ``check``, ``status`` and the unit generator:

- ``validate(expr) -> str``: the normalized expression, as ``systemd-analyze calendar`` prints it;
  raises ValueError saying what is wrong or not supported.
- ``next_elapse(expr, after) -> datetime | None``: the first time strictly after ``after`` (aware)
  the timer fires, in ``after``'s zone; None when it never fires again.
- ``period(expr) -> float | None``: the longest interval in seconds between two consecutive elapses
  (for a regular schedule: its period); None when it fires at most once more.

Accepted (a subset of what systemd accepts; the rest is refused with a reason): the shorthands
(minutely … annually), ``[WEEKDAYS] [[YYYY-]MM-DD|[YYYY-]MM~DD] [HH:MM[:SS]] [UTC|Area/Zone]`` where
every number field is ``*`` or a comma list of ``N``, ``N..M``, ``N/R``, ``N..M/R``. Not accepted:
two-digit years, fractional seconds, ``@EPOCH``, time zone abbreviations (``CET``), the legacy
``Mon-Fri`` weekday range. The search for the next elapse is in ``elapse.py``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from snapagent.schedule import elapse

USEC = 1_000_000
MIN_YEAR, MAX_YEAR = 1970, 2199
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DAY_NAMES = {n.lower(): i for i, n in enumerate(WEEKDAYS)}
_DAY_NAMES.update({n.lower(): i for i, n in enumerate(
    ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"))})

#: shorthand → the expression it stands for (systemd.time(7), "Calendar Events").
SHORTHANDS = {
    "minutely": "*-*-* *:*:00",
    "hourly": "*-*-* *:00:00",
    "daily": "*-*-* 00:00:00",
    "weekly": "Mon *-*-* 00:00:00",
    "monthly": "*-*-01 00:00:00",
    "quarterly": "*-01,04,07,10-01 00:00:00",
    "semiannually": "*-01,07-01 00:00:00",
    "semi-annually": "*-01,07-01 00:00:00",
    "biannually": "*-01,07-01 00:00:00",
    "bi-annually": "*-01,07-01 00:00:00",
    "yearly": "*-01-01 00:00:00",
    "annually": "*-01-01 00:00:00",
}

_ITEM = re.compile(r"^(\d+)(?:\.\.(\d+))?(?:/(\d+))?$")
_ZONE = re.compile(r"^[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+)+$")


@dataclass(frozen=True)
class Item:
    """One element of a field's list: ``start``, ``stop`` (-1: none), ``repeat`` (0: none)."""

    start: int
    stop: int = -1
    repeat: int = 0


@dataclass(frozen=True)
class Spec:
    """A parsed expression. A field of ``None`` is ``*``; seconds are in microseconds."""

    weekdays: frozenset[int] | None
    year: tuple[Item, ...] | None
    month: tuple[Item, ...] | None
    day: tuple[Item, ...] | None
    end_of_month: bool
    hour: tuple[Item, ...] | None
    minute: tuple[Item, ...] | None
    second: tuple[Item, ...] | None
    zone: str | None  # None: the local zone; "UTC"; or an IANA name


def _field(text: str, what: str, lo: int, hi: int, eom: bool = False, unit: int = 1) -> tuple[Item, ...] | None:
    """Parse one field (``*`` or a list of items), normalize and check it as systemd does; None for ``*``."""
    if text == "*":
        return (Item(0, -1, USEC),) if unit == USEC else None
    if not text:
        raise ValueError(f"empty {what}")
    items = set()
    for part in text.split(","):
        m = _ITEM.match(part)
        if not m:
            hint = " (fractional seconds are not supported)" if unit == USEC and "." in part else ""
            raise ValueError(f"invalid {what} {part!r}{hint}")
        start, stop, rep = int(m[1]), int(m[2]) if m[2] else -1, int(m[3]) if m[3] else 0
        if m[2] and not m[3]:
            rep = 1
        if m[3] and rep == 0:
            raise ValueError(f"invalid {what} {part!r}: a repetition must not be 0")
        if stop >= 0 and stop < start:
            raise ValueError(f"{what} {part!r}: the range ends before it starts")
        if stop > start and rep > 0:
            stop -= (stop - start) % rep
        items.add((part, Item(start, stop, rep)))
    out = sorted(items, key=lambda pi: (pi[1].start, pi[1].stop, pi[1].repeat))
    top = hi
    seen = []
    for part, i in out:
        if i in seen:
            continue
        seen.append(i)
        if eom:  # systemd lowers the bound by 3 for each element of a '~' list, in sorted order
            top -= 3
        _check(i, part, what, lo, top, eom)
    return tuple(Item(i.start * unit, i.stop * unit if i.stop >= 0 else -1, i.repeat * unit) for i in seen)


def _check(i: Item, part: str, what: str, lo: int, top: int, eom: bool) -> None:
    """systemd's chain_valid for one element; ``top`` already lowered for '~' lists."""
    if not lo <= i.start <= top or (i.stop >= 0 and not lo <= i.stop <= top):
        raise ValueError(f"{what} {part!r} out of range ({lo}..{top}"
                         + (", lower for each further '~' element)" if eom else ")"))
    if i.repeat > top - lo or (i.stop >= 0 and i.start + i.repeat > i.stop) or (
            i.stop < 0 and i.repeat and (i.start - i.repeat < lo if eom else i.start + i.repeat > top)):
        raise ValueError(f"{what} {part!r}: the repetition does not fit the range")


def _weekdays(text: str) -> frozenset[int]:
    days: set[int] = set()
    for part in text.split(","):
        names = part.split("..")
        if len(names) > 2 or any(n.lower() not in _DAY_NAMES for n in names):
            raise ValueError(f"invalid weekday {part!r} (Mon..Sun, lists with ',', ranges with '..'; or one of the "
                             "shorthands minutely, hourly, daily, weekly, monthly, quarterly, semiannually, yearly)")
        a, b = _DAY_NAMES[names[0].lower()], _DAY_NAMES[names[-1].lower()]
        if a > b:
            raise ValueError(f"invalid weekday range {part!r} (a range must not wrap past Sunday)")
        days.update(range(a, b + 1))
    return frozenset(days)


def _zone(words: list[str]) -> str | None:
    """Pop and return a trailing time zone from ``words``; None when there is none."""
    if len(words) > 1 and words[-1].upper() == "UTC":
        words.pop()
        return "UTC"
    if len(words) > 1 and _ZONE.match(words[-1]):
        name = words.pop()
        try:
            elapse.zone(name)
        except ValueError:
            raise ValueError(f"unknown time zone {name!r}") from None
        return name
    if len(words) > 1 and re.fullmatch(r"[A-Za-z]{2,5}", words[-1]) and words[-1].lower() not in _DAY_NAMES \
            and words[-1].lower() not in SHORTHANDS:
        raise ValueError(f"time zone abbreviation {words[-1]!r} is not supported: use UTC or a name like Europe/Berlin")
    return None


@functools.lru_cache(maxsize=256)
def parse(expr: str) -> Spec:
    """Return the Spec of ``expr``; raise ValueError saying what is wrong or unsupported."""
    if not isinstance(expr, str) or not expr.strip():
        raise ValueError("empty calendar expression")
    if any(not c.isprintable() for c in expr):
        raise ValueError("calendar expression contains control characters")
    if expr != expr.strip() or "  " in expr:
        raise ValueError(f"{expr!r}: leading, trailing or double spaces (systemd refuses some of them)")
    words = expr.split(" ")
    zone = _zone(words)
    if len(words) == 1 and words[0].lower() in SHORTHANDS:
        words = SHORTHANDS[words[0].lower()].split()
    if words and words[0].startswith("@"):
        raise ValueError("@EPOCH timestamps are not supported")
    weekdays = None
    if words and words[0][:1].isalpha():
        weekdays = _weekdays(words.pop(0))
    date = words.pop(0) if words and ":" not in words[0] else None
    time = words.pop(0) if words else None
    if words:
        raise ValueError(f"unexpected {' '.join(words)!r}")
    year = month = day = None
    eom = False
    if date is not None:
        m = re.fullmatch(r"(?:([^-~]+)-)?([^-~]+)([-~])([^-~]+)", date)
        if not m:
            raise ValueError(f"invalid date {date!r} (expected [YYYY-]MM-DD or [YYYY-]MM~DD)")
        if m[1] is not None and m[1] != "*" and any(len(p.split("/")[0].split("..")[0]) != 4 for p in m[1].split(",")):
            raise ValueError(f"invalid year {m[1]!r} (four digits, {MIN_YEAR}..{MAX_YEAR})")
        eom = m[3] == "~"
        year = _field(m[1] or "*", "year", MIN_YEAR, MAX_YEAR)
        month = _field(m[2], "month", 1, 12)
        day = _field(m[4], "day", 1, 31, eom=eom)
        eom = eom and day is not None
    if time is None:
        hour = minute = (Item(0),)
        second: tuple[Item, ...] | None = (Item(0),)
    else:
        parts = time.split(":")
        if len(parts) not in (2, 3):
            raise ValueError(f"invalid time {time!r} (expected HH:MM[:SS])")
        hour = _field(parts[0], "hour", 0, 23)
        minute = _field(parts[1], "minute", 0, 59)
        second = _field(parts[2], "second", 0, 59, unit=USEC) if len(parts) == 3 else (Item(0),)
    if weekdays is not None and len(weekdays) == 7:
        weekdays = None
    return Spec(weekdays, year, month, day, eom, hour, minute, second, zone)


def _fmt_field(items: tuple[Item, ...] | None, width: int, unit: int = 1) -> str:
    if items is None or (unit == USEC and items == (Item(0, -1, USEC),)):
        return "*"
    out = []
    for i in items:
        s = f"{i.start // unit:0{width}d}"
        if i.stop > 0:
            s += f"..{i.stop // unit:0{width}d}"
        if i.repeat > 0 and not (i.stop > 0 and i.repeat == unit):
            s += f"/{i.repeat // unit}"
        out.append(s)
    return ",".join(out)


def _fmt_weekdays(days: frozenset[int]) -> str:
    runs: list[list[int]] = []
    for d in sorted(days):
        if runs and runs[-1][-1] == d - 1:
            runs[-1].append(d)
        else:
            runs.append([d])
    parts = []
    for r in runs:
        if len(r) >= 3:
            parts.append(f"{WEEKDAYS[r[0]]}..{WEEKDAYS[r[-1]]}")
        else:
            parts.extend(WEEKDAYS[d] for d in r)
    return ",".join(parts)


def format_spec(s: Spec) -> str:
    """Return the normalized text of ``s``, as ``systemd-analyze calendar`` prints it."""
    text = (f"{_fmt_field(s.year, 4)}-{_fmt_field(s.month, 2)}{'~' if s.end_of_month else '-'}"
            f"{_fmt_field(s.day, 2)} {_fmt_field(s.hour, 2)}:{_fmt_field(s.minute, 2)}:"
            f"{_fmt_field(s.second, 2, USEC)}")
    if s.weekdays is not None:
        text = f"{_fmt_weekdays(s.weekdays)} {text}"
    return f"{text} {s.zone}" if s.zone else text


def validate(expr: str) -> str:
    """Return ``expr`` normalized; raise ValueError when it is not a supported OnCalendar expression."""
    return format_spec(parse(expr))


def next_elapse(expr: str, after: datetime) -> datetime | None:
    """Return the first elapse of ``expr`` strictly after ``after``, in ``after``'s zone (a naive
    ``after`` is taken as local time); None when it never elapses again. Raises ValueError."""
    spec = parse(expr)
    if after.tzinfo is None:
        after = after.replace(tzinfo=elapse.local_zone())
    found = elapse.next_after(spec, after)
    return None if found is None else found.astimezone(after.tzinfo)


def period(expr: str) -> float | None:
    """Return the longest interval in seconds between consecutive elapses of ``expr`` over its next
    500 elapses or four years from now (computed in UTC; a regular schedule gives its period); None when it
    elapses at most once more. Raises ValueError."""
    spec = parse(expr)
    spec = Spec(**{**spec.__dict__, "zone": "UTC"})
    t = elapse.next_after(spec, datetime.now(timezone.utc))
    longest = None
    if t is None:
        return None
    end = t + timedelta(days=4 * 366)
    for _ in range(500):
        n = elapse.next_after(spec, t)
        if n is None:
            break
        gap = (n - t).total_seconds()
        longest = gap if longest is None else max(longest, gap)
        t = n
        if t > end:
            break
    return longest

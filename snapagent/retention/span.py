"""``keep_within``: a calendar span in restic's ``--keep-within`` syntax, and the local time zone.

A span is ``<n>y``, ``<n>m`` (months, as in restic — not minutes), ``<n>d``, ``<n>h`` or a
combination (``1y6m``, ``2d12h``). Years, months and days are subtracted on the calendar in the
local time zone (Go's ``AddDate``: ``2d`` across the spring-forward night is 47 hours), hours as
elapsed time — what restic does.
"""

from __future__ import annotations

import os
import re
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from typing import NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_PART = re.compile(r"(\d+)([ymdh])")
_WHOLE = re.compile(r"^(?:\d+[ymdh])+$")
EXAMPLES = "examples: 2d, 36h, 1y6m, 2d12h"


class Span(NamedTuple):
    """A calendar span: years, months, days (calendar arithmetic) and hours (elapsed)."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0

    def __str__(self) -> str:
        s = "".join(f"{n}{u}" for n, u in zip(self, "ymdh") if n)
        return s or "0h"

    def zero(self) -> bool:
        return not any(self)

    def before(self, t: datetime, tz: tzinfo) -> datetime:
        """Return ``t`` minus this span: years, months, days on the wall clock of ``tz`` (month and
        day overflow normalised like Go's ``time.Date``), then hours as elapsed time."""
        wall = t.astimezone(tz)
        months = (wall.year - self.years) * 12 + (wall.month - 1 - self.months)
        y, m = divmod(months, 12)
        day = date(y, m + 1, 1) + timedelta(days=wall.day - 1 - self.days)
        moved = datetime.combine(day, time(wall.hour, wall.minute, wall.second, wall.microsecond), tzinfo=timezone.utc)
        return _go_local(moved, tz) - timedelta(hours=self.hours)


def _go_local(wall: datetime, tz: tzinfo) -> datetime:
    """Return the instant of wall-clock time ``wall`` (given as if it were UTC) in ``tz``, resolved
    as Go's ``time.Date`` does: a time the spring-forward night skips counts with the offset
    before the change, a time the fall-back night repeats is its second (standard-time) instance."""
    offset = wall.astimezone(tz).utcoffset()
    assert offset is not None
    second = (wall - offset).astimezone(tz).utcoffset()
    assert second is not None
    return wall - second


def parse_span(value: object) -> Span:
    """Given ``"2d"``, ``"1y6m"``, … (or a Span), return the Span; raise ValueError showing the syntax."""
    if isinstance(value, Span):
        return value
    if not isinstance(value, str) or not _WHOLE.match(value.strip()):
        raise ValueError(f"invalid keep_within {value!r}: restic's syntax, a number and a unit y (years), "
                         f"m (months), d (days) or h (hours), combined as in 1y6m or 2d12h ({EXAMPLES})")
    parts = {"y": 0, "m": 0, "d": 0, "h": 0}
    for n, unit in _PART.findall(value.strip()):
        parts[unit] += int(n)
    return Span(parts["y"], parts["m"], parts["d"], parts["h"])


def local_zone() -> tzinfo:
    """Return the agent's local time zone as Go (restic) finds it: ``$TZ`` when set (empty:
    UTC), else ``/etc/localtime``; UTC when neither names a zone that can be loaded."""
    name = os.environ.get("TZ")
    try:
        if name is None:
            with open("/etc/localtime", "rb") as f:
                return ZoneInfo.from_file(f, key="localtime")
        name = name.removeprefix(":")
        if not name or name == "UTC":
            return timezone.utc
        if name.startswith("/"):
            with open(name, "rb") as f:
                return ZoneInfo.from_file(f, key=name)
        return ZoneInfo(name)
    except (OSError, ValueError, ZoneInfoNotFoundError):
        return timezone.utc

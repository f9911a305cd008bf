"""The retention policy, pure: which backups of one job in one target to keep, and why.

restic 0.14's ``forget`` (``internal/restic/snapshot_policy.go``), exactly: backups newest first;
``keep_last`` keeps the N newest; ``keep_hourly`` … ``keep_yearly`` keep a backup when its bucket
(``YYYYMMDDHH``, ``YYYYMMDD``, ISO year+week, ``YYYYMM``, ``YYYY`` of its creation time on the
local wall clock) differs from the bucket that rule kept last, while the rule has counts left
(-1: unlimited); one backup counts against every rule it satisfies; ``keep_within`` keeps every
backup created after (the newest backup that is not in the future − the span). A count of 0 is
no rule; with no rule at all nothing is removed. On top of restic: a backup that a kept
incremental depends on (``volumes[].parent``, transitively) is kept, with the reason ``chain``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone, tzinfo
from typing import TYPE_CHECKING, Callable, Iterable

from snapagent.retention.span import Span, local_zone, parse_span

if TYPE_CHECKING:
    from snapagent.config import RetentionConfig

#: (rule name, config key, bucket of a local wall-clock time); ``last`` puts every backup in its own.
BUCKETS: tuple[tuple[str, str, Callable[[datetime], object] | None], ...] = (
    ("last", "keep_last", None),
    ("hourly", "keep_hourly", lambda t: (t.year, t.month, t.day, t.hour)),
    ("daily", "keep_daily", lambda t: (t.year, t.month, t.day)),
    ("weekly", "keep_weekly", lambda t: t.isocalendar()[:2]),
    ("monthly", "keep_monthly", lambda t: (t.year, t.month)),
    ("yearly", "keep_yearly", lambda t: t.year),
)
RULES = tuple(b[0] for b in BUCKETS) + ("within", "chain")


@dataclass(frozen=True)
class Backup:
    """What the policy needs of one backup: its id, creation time (aware) and the ids of the
    backups it is incremental on (its volumes' parents)."""

    id: str
    created: datetime
    parents: tuple[str, ...] = ()


@dataclass
class Decision:
    """The policy's answer: ``keep`` and ``remove`` (ids, newest first) and, for each kept
    backup, the rules that kept it (in the order of ``RULES``)."""

    keep: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    reasons: dict[str, list[str]] = field(default_factory=dict)


def is_empty(rules: "RetentionConfig | None") -> bool:
    """Return True when ``rules`` sets no rule (restic's empty policy: nothing is removed)."""
    if rules is None:
        return True
    within = rules.keep_within
    return not any(getattr(rules, key) for _, key, _ in BUCKETS) and (within is None or parse_span(within).zero())


def _latest(backups: list[Backup], now: datetime) -> datetime | None:
    """Return the newest creation time that is not in the future (None: all are)."""
    past = [b.created for b in backups if b.created < now]
    return max(past) if past else None


def apply(backups: Iterable[Backup], rules: "RetentionConfig | None", now: datetime | None = None,
          tz: tzinfo | None = None) -> Decision:
    """Given the backups of one job in one target and the job's rules, return the Decision.

    ``now`` (default: the current time) only decides which backups are in the future (they do not
    anchor ``keep_within``); ``tz`` (default: the local zone, ``$TZ``) is the wall clock the buckets
    are read on. Raises nothing; a parent id that is not among ``backups`` is ignored.
    """
    ordered = sorted(backups, key=lambda b: (b.created, b.id), reverse=True)
    out = Decision()
    if is_empty(rules):
        out.keep = [b.id for b in ordered]
        return out
    assert rules is not None
    tz = tz or local_zone()
    now = now or datetime.now(timezone.utc)
    counts = {name: getattr(rules, key) or 0 for name, key, _ in BUCKETS}
    last: dict[str, object] = {}
    span: Span | None = parse_span(rules.keep_within) if rules.keep_within is not None else None
    cutoff = None
    if span is not None and not span.zero():
        latest = _latest(ordered, now)
        cutoff = span.before(latest, tz) if latest is not None else None
    for nr, b in enumerate(ordered):
        why = []
        if span is not None and not span.zero() and (cutoff is None or b.created > cutoff):
            why.append("within")
        wall = b.created.astimezone(tz)
        for name, _, bucket in BUCKETS:
            if counts[name] > 0 or counts[name] == -1:
                val = nr if bucket is None else bucket(wall)
                if name not in last or val != last[name]:
                    last[name] = val
                    if counts[name] > 0:
                        counts[name] -= 1
                    why.append(name)
        if why:
            out.keep.append(b.id)
            out.reasons[b.id] = sorted(why, key=RULES.index)
        else:
            out.remove.append(b.id)
    _protect_chains(ordered, out)
    return out


def _protect_chains(ordered: list[Backup], out: Decision) -> None:
    """Move every backup a kept one depends on (transitively) from ``remove`` to ``keep``."""
    by_id = {b.id: b for b in ordered}
    todo = list(out.keep)
    while todo:
        for pid in by_id[todo.pop()].parents:
            if pid in by_id and "chain" not in out.reasons.setdefault(pid, []):
                out.reasons[pid].append("chain")
                if pid in out.remove:
                    out.remove.remove(pid)
                todo.append(pid)
    rank = {b.id: i for i, b in enumerate(ordered)}
    out.keep = sorted(out.reasons, key=rank.__getitem__)

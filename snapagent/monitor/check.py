"""``snapagent check``: the Nagios plugin verdict of one job or all of them.

Per job: CRITICAL when there is no complete backup or the newest one is older than its max age;
WARNING when it is older than the warn age, or the last run failed after the newest backup was
taken; OK otherwise. Several jobs: the worst of them. The text follows the plugin guidelines: one
line ``SNAPAGENT <STATE> - <summary> | <perfdata>``, then one line per job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from snapagent.config import Job
from snapagent.monitor.facts import JobFacts
from snapagent.schedule import calendar

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
DEFAULT_MAX_AGE = 25 * 3600.0


@dataclass
class JobCheck:
    """The verdict on one job: state (0–3), one line of text, perfdata items."""

    job: str
    state: int
    message: str
    perfdata: list[str] = field(default_factory=list)


def max_age_for(job: Job, override: float | None) -> float:
    """Return the max age of ``job``'s newest backup: ``override`` (``--max-age``), else the job's
    ``check_max_age``, else twice its schedule's period, else 25 h."""
    if override is not None:
        return override
    if job.cfg.check_max_age is not None:
        return job.cfg.check_max_age
    if job.cfg.schedule:
        try:
            period = calendar.period(job.cfg.schedule)
        except ValueError:  # validated at load; a newer syntax than this module knows: use the default
            period = None
        if period:
            return 2 * period
    return DEFAULT_MAX_AGE


def human_age(seconds: float) -> str:
    """Return ``seconds`` as ``12s``, ``3m05s``, ``5h12m`` or ``2d03h``."""
    s = int(max(0, seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _clean(text: str) -> str:
    # '|' starts the perfdata for Nagios; the status line is one line
    return " ".join(text.replace("|", "/").split())


def _brief(error: str | None) -> str:
    """Return an error message short enough for a status line: its first line and, when it has
    more (a command's stderr), its last one — usually the cause."""
    lines = [ln.strip() for ln in (error or "no message").splitlines() if ln.strip()] or ["no message"]

    def cut(text: str, n: int) -> str:
        return text if len(text) <= n else text[: n - 1] + "…"

    return cut(lines[0], 160) + (f" … {cut(lines[-1], 120)}" if len(lines) > 1 else "")


def check_job(facts: JobFacts, now: datetime, max_age: float, warn_age: float | None) -> JobCheck:
    """Return the verdict on one job from its ``facts`` at ``now`` (aware)."""
    name = facts.job.name
    newest = facts.newest
    run = facts.run
    failed = run is not None and run.result != "success"
    fail_note = f"last run {run.result} at {run.ended:%Y-%m-%d %H:%M:%SZ}: {_brief(run.error)}" if failed else ""
    count = len(facts.backups)
    if newest is None:
        perf = [f"'{name}_age'=U", f"'{name}_backups'=0;;;0"]
        return JobCheck(name, CRITICAL, _clean("no backup" + (f" ({fail_note})" if failed else "")), perf)
    m = newest.summary
    age = max(0.0, (now - m.created).total_seconds())
    perf = [f"'{name}_age'={age:.0f}s;{'' if warn_age is None else f'{warn_age:.0f}'};{max_age:.0f};0",
            f"'{name}_size'={m.size}B;;;0", f"'{name}_freeze_window'={m.freeze_window_ms / 1000:.3f}s;;;0",
            f"'{name}_backups'={count};;;0"]
    what = f"newest backup {m.id} is {human_age(age)} old"
    if age > max_age:
        return JobCheck(name, CRITICAL, _clean(f"{what} (max {human_age(max_age)})"), perf)
    if warn_age is not None and age > warn_age:
        return JobCheck(name, WARNING, _clean(f"{what} (warn {human_age(warn_age)})"), perf)
    if failed and run.ended >= m.created:
        return JobCheck(name, WARNING, _clean(f"{fail_note}; {what}"), perf)
    if missing := facts.missing_copies(m.id):
        return JobCheck(name, WARNING, _clean(f"{what}, but its copy to target(s) {', '.join(missing)} failed "
                                              f"(`snapagent copy {m.id} --to TARGET`)"), perf)
    damaged = sum(t.damaged for t in facts.targets.values())
    note = f", {damaged} DAMAGED (see `snapagent list`)" if damaged else ""
    return JobCheck(name, OK, _clean(f"{what}, {count} backup(s){note}"), perf)


def report(checks: list[JobCheck]) -> tuple[int, str]:
    """Return (exit code, plugin output) for the verdicts of one or more jobs: the worst state."""
    worst = max(c.state for c in checks)
    perf = " ".join(p for c in checks for p in c.perfdata)
    if len(checks) == 1:
        summary = f"{checks[0].job}: {checks[0].message}"
    else:
        counts = ", ".join(f"{sum(c.state == s for c in checks)} {STATES[s].lower()}"
                           for s in (CRITICAL, WARNING, OK) if any(c.state == s for c in checks))
        bad = "; ".join(f"{c.job}: {c.message}" for c in checks if c.state == worst and worst != OK)
        summary = f"{len(checks)} jobs: {counts}" + (f"; {bad}" if bad else "")
    lines = [f"SNAPAGENT {STATES[worst]} - {summary} | {perf}"]
    if len(checks) > 1:
        lines += [f"{c.job}: {STATES[c.state]} - {c.message}" for c in checks]
    return worst, "\n".join(lines)


def unknown(message: str) -> tuple[int, str]:
    """Return (3, plugin output) for a check that could not be made (config unreadable, bad args)."""
    return UNKNOWN, f"SNAPAGENT UNKNOWN - {_clean(message)}"

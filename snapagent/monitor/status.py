"""``snapagent status``: per job the last run, the last success, the backups per target (count,
oldest, newest, size) and the next scheduled run, as plain JSON data."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from snapagent.manifest import iso
from snapagent.monitor.facts import JobFacts
from snapagent.schedule import calendar


def job_status(facts: JobFacts, now: datetime) -> dict[str, Any]:
    """Return the status of one job from its ``facts`` at ``now`` (aware; the zone of the next run)."""
    run = facts.run
    last_run = None
    if run is not None:
        last_run = {"started": iso(run.started), "ended": iso(run.ended), "result": run.result,
                    "duration_seconds": run.duration_seconds, "freeze_window_seconds": run.freeze_window_seconds,
                    "backup_id": run.backup_id, "error": run.error, "warnings": list(run.warnings),
                    "copy_failed": list(run.copy_failed)}
    ok = facts.last_success
    last_success = None if ok is None else {
        "started": iso(ok.started), "ended": iso(ok.ended), "backup_id": ok.backup_id, "size_bytes": ok.size_bytes,
        "duration_seconds": ok.duration_seconds, "freeze_window_seconds": ok.freeze_window_seconds}
    targets = {}
    for t in facts.targets.values():
        targets[t.name] = {"backups": len(t.backups), "damaged": t.damaged, "size_bytes": t.size,
                           "oldest": t.backups[0].id if t.backups else None,
                           "newest": t.backups[-1].id if t.backups else None,
                           "oldest_created": t.backups[0].summary.created_iso if t.backups else None,
                           "newest_created": t.backups[-1].summary.created_iso if t.backups else None}
    schedule = facts.job.cfg.schedule
    next_run = None
    if schedule:
        try:
            nxt = calendar.next_elapse(schedule, now)
        except ValueError:
            nxt = None
        next_run = iso(nxt) if nxt is not None else None
    return {"job": facts.job.name, "last_run": last_run, "last_success": last_success, "targets": targets,
            "backups": sum(t["backups"] for t in targets.values()),
            "size_bytes": sum(t["size_bytes"] for t in targets.values()),
            "schedule": schedule, "next_run": next_run}

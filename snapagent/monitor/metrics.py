"""The Prometheus textfile (``agent.metrics_file``) for node_exporter's textfile collector, written
atomically after every run with the state of every job of the config, not only the one that ran.

Series (label ``backup_job``; ``snapagent_backups`` also ``target``):
``snapagent_last_run_timestamp_seconds``, ``snapagent_last_run_success``,
``snapagent_last_duration_seconds`` (only for jobs that have run since run records exist),
``snapagent_last_success_timestamp_seconds`` (0: never), ``snapagent_last_size_bytes``,
``snapagent_last_freeze_window_seconds``, ``snapagent_backups``; and
``snapagent_last_freeze_phase_seconds`` (labels ``backup_job``, ``phase``: ``lock`` — the waits
for the locks —, ``snapshot``, ``verify``, ``release``) of the last success whose manifest records
how its window split.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from snapagent.config import Config
from snapagent.monitor.facts import JobFacts, gather
from snapagent.util.fs import write_atomic

_HELP = {
    "last_run_timestamp_seconds": "End of the last backup run (success or failure), Unix time.",
    "last_run_success": "1 when the last backup run succeeded, 0 when it failed or was interrupted.",
    "last_success_timestamp_seconds": "End of the last successful backup run, Unix time (0: never).",
    "last_duration_seconds": "Duration of the last backup run.",
    "last_size_bytes": "Stored size of the last successful backup.",
    "last_freeze_window_seconds": "Freeze window (first quiesce to last release) of the last successful backup.",
}


def render(facts: list[JobFacts]) -> bytes:
    """Return the textfile exposition of the jobs' ``facts``."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest  # lazy: read commands start fast

    reg = CollectorRegistry()
    g = {k: Gauge(f"snapagent_{k}", h, ["backup_job"], registry=reg) for k, h in _HELP.items()}
    backups = Gauge("snapagent_backups", "Complete backups of the job in the target.", ["backup_job", "target"],
                    registry=reg)
    phases = Gauge("snapagent_last_freeze_phase_seconds",
                   "How the freeze window of the last successful backup split: time in each phase "
                   "(lock: waiting for the locks; snapshot: the snapshot commands; verify; release).",
                   ["backup_job", "phase"], registry=reg)
    for f in facts:
        job = f.job.name
        if (run := f.run) is not None:
            g["last_run_timestamp_seconds"].labels(job).set(run.ended.timestamp())
            g["last_run_success"].labels(job).set(1 if run.result == "success" else 0)
            g["last_duration_seconds"].labels(job).set(run.duration_seconds)
        ok = f.last_success
        g["last_success_timestamp_seconds"].labels(job).set(ok.ended.timestamp() if ok else 0)
        if ok is not None:
            g["last_size_bytes"].labels(job).set(ok.size_bytes)
            g["last_freeze_window_seconds"].labels(job).set(ok.freeze_window_seconds)
            for phase, seconds in ok.freeze_phase_seconds.items():
                phases.labels(job, phase).set(seconds)
        for t in f.targets.values():
            backups.labels(job, t.name).set(len(t.backups))
    return generate_latest(reg)


def write(config: Config, path: Path) -> None:
    """Write the metrics of every job of ``config`` to ``path`` atomically, mode 0644 (the
    exporter reads it as its own user). Raises OSError, e.g. when the directory does not exist
    (it is the exporter's: snapagent does not create it)."""
    if not path.parent.is_dir():
        raise FileNotFoundError(2, "directory does not exist", str(path.parent))
    lock = config.agent.state_dir / "locks" / "metrics.lock"
    lock.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        # two jobs ending together: each reads every record and writes the whole file, so the
        # second must read after the first wrote, or the first job's new state would be lost
        fcntl.flock(fd, fcntl.LOCK_EX)
        write_atomic(path, render([gather(config, job) for job in config.jobs.values()]), mode=0o644)
    finally:
        os.close(fd)

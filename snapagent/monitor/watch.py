"""The monitoring hook around one ``backup`` run: ping ``/start``, then — whatever the end:
success, failure, signal — write the run record, the metrics file and ping success or ``/fail``.

Nothing here fails a backup or changes its exit code: what goes wrong is a warning. A run that
finds its job already running (JobLocked) did not run: it records and pings nothing, the running
one will.
"""

from __future__ import annotations

import contextlib
import time
from datetime import datetime, timezone
from typing import Callable, Iterator

from snapagent import signals
from snapagent.config import Config, Job
from snapagent.errors import Interrupted, JobLocked
from snapagent.manifest import Manifest
from snapagent.monitor import logtail, metrics, ping, runs
from snapagent.monitor.runs import RunRecord, Success
from snapagent.util import steps


class Watch:
    """What the run tells the hook: ``success(manifest)`` once the backup is committed."""

    def __init__(self) -> None:
        self.manifest: Manifest | None = None
        self.warnings: list[str] = []
        self.copy_failed: list[str] = []

    def success(self, manifest: Manifest, warnings: list[str] | None = None, copy_failed: list[str] | None = None) -> None:
        """The backup is committed; ``warnings``: what went wrong after (a failed copy, prune);
        ``copy_failed``: the copy_to targets without their copy."""
        self.manifest = manifest
        self.warnings = list(warnings or [])
        self.copy_failed = list(copy_failed or [])


@contextlib.contextmanager
def watch(config: Config, job: Job, warn: Callable[[str], None]) -> Iterator[Watch]:
    """Around the run of ``job``: yield a Watch to call ``success(manifest)`` on; on exit record
    the outcome (re-raising the run's exception untouched). ``warn`` gets every problem."""
    w = Watch()
    url = job.cfg.ping_url
    started, t0 = datetime.now(timezone.utc), time.monotonic()
    with contextlib.ExitStack() as stack:
        tail = stack.enter_context(logtail.capture()) if url else None
        if url and (msg := ping.send(url, "start", timeout=job.cfg.ping_timeout)):
            warn(msg)
        try:
            yield w
        except JobLocked:
            raise
        except BaseException as e:
            result = "interrupted" if isinstance(e, (Interrupted, KeyboardInterrupt)) else "failure"
            error = str(e).strip() or type(e).__name__
            _finish(config, job, w, result, error, started, time.monotonic() - t0, tail, warn)
            raise
        if w.manifest is None:
            _finish(config, job, w, "failure", "the run ended without a backup", started, time.monotonic() - t0,
                    tail, warn)
        else:
            _finish(config, job, w, "success", None, started, time.monotonic() - t0, tail, warn)


def _finish(config: Config, job: Job, w: Watch, result: str, error: str | None, started: datetime,
            duration: float, tail, warn: Callable[[str], None]) -> None:
    state_dir = config.agent.state_dir
    ended = datetime.now(timezone.utc)
    m = w.manifest if result == "success" else None
    if m is not None:
        last = Success(started=started, ended=ended, duration_seconds=round(duration, 3), backup_id=m.id, size_bytes=m.size,
                       freeze_window_seconds=m.freeze_window_ms / 1000,
                       freeze_phase_seconds=runs.freeze_phases(m))
    else:
        prev = runs.load(state_dir, job.name)
        last = prev.last_success if prev is not None else None
    record = RunRecord(job=job.name, started=started, ended=ended, duration_seconds=round(duration, 3),
                       result=result, error=error, backup_id=m.id if m else None, size_bytes=m.size if m else None,
                       freeze_window_seconds=m.freeze_window_ms / 1000 if m else None, last_success=last,
                       warnings=w.warnings if m else [], copy_failed=w.copy_failed if m else [])
    try:
        with steps.step("run record"):
            runs.save(state_dir, record)
    except OSError as e:
        warn(f"run record of job {job.name!r} not written: {e.strerror or e}")
    if config.agent.metrics_file is not None:
        try:
            with signals.waiting(f"writing the metrics file {config.agent.metrics_file} (it lists every target)"), \
                    steps.step("metrics"):
                metrics.write(config, config.agent.metrics_file)
        except Exception as e:  # noqa: BLE001 - metrics never fail a backup
            warn(f"metrics file {config.agent.metrics_file} not written: {getattr(e, 'strerror', None) or e}")
    if job.cfg.ping_url:
        if m is not None:
            event, body = "success", (f"backup {m.id} stored: {m.size} bytes, freeze window "
                                      f"{m.freeze_window_ms:.0f} ms, {duration:.1f} s")
        else:
            event, body = "fail", (tail.text() if tail is not None else "") + f"\nsnapagent: error: {error}\n"
        with signals.waiting(f"sending the {event} ping to {ping.host_of(job.cfg.ping_url)} (up to {job.cfg.ping_timeout:g}s)"), \
                steps.step(f"ping {event}"):
            msg = ping.send(job.cfg.ping_url, event, body, job.cfg.ping_timeout)
        if msg:
            warn(msg)

"""Undo what killed runs left behind, from their step journals."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from snapagent import registry
from .errors import OperationFailed
from .joblock import JobLock
from .journal import journals, read_open
from snapagent.util.runner import Runner

log = logging.getLogger("snapagent.cleanup")


def undo_records(records: list[dict[str, Any]], runner: Runner) -> tuple[list[str], list[str]]:
    """Undo open journal ``records`` in reverse order; return (done, failed) messages. Never raises."""
    done, failed = [], []
    for rec in reversed(records):
        owner = rec.get("owner", {})
        what = f"{rec.get('kind')} {rec.get('key')!r}"
        try:
            plugins = registry.discover(owner["kind"])
            cls = plugins[owner["name"]].load()
            msg = cls.undo(rec, runner)
            done.append(msg)
            log.info("cleanup: %s", msg)
        except Exception as e:  # noqa: BLE001 - keep undoing the rest; the journal stays
            failed.append(f"could not undo {what}: {e}")
            log.error("cleanup: could not undo %s: %s", what, e)
    return done, failed


def sweep(state_dir: Path, runner: Runner, job: str | None = None, holding: str | None = None) -> list[str]:
    """Undo the leftovers of every dead run (of ``job``); return what was done.

    Journals of a job whose lock is held by another live process are skipped. ``holding`` names a
    job whose lock the caller already holds. Raises OperationFailed when something could not be
    undone (its journal is kept for the next try).
    """
    done: list[str] = []
    failures: list[str] = []
    for path in list(journals(state_dir, job)):
        jname = path.parent.name
        lock = None
        if jname != holding:
            lock = JobLock(state_dir, jname)
            if not lock.try_acquire():
                done.append(f"skipped {path.name}: job {jname!r} is running (pid {lock.holder()})")
                continue
        try:
            records = read_open(path)
            ok, bad = undo_records(records, runner)
            done.extend(ok)
            failures.extend(bad)
            if not bad and not runner.dry_run:
                path.unlink(missing_ok=True)
        finally:
            if lock:
                lock.release()
    if failures:
        raise OperationFailed("cleanup incomplete:\n  " + "\n  ".join(failures))
    return done

"""Undo what runs left behind, from their step journals: the one code path for a run's own exit
(normal, error, signal) and for ``snapagent cleanup`` after a kill."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from snapagent import held, registry, signals
from snapagent.errors import OperationFailed
from snapagent.journal import holder, journals, read_open
from snapagent.util.runner import Runner

log = logging.getLogger("snapagent.cleanup")


def _undoer(owner: dict[str, str]):
    """Return the plugin class (or core module) that undoes records of ``owner``; raise
    OperationFailed when it is not installed or cannot be loaded."""
    kind, name = owner.get("kind"), owner.get("name")
    if kind == "core":
        if name != held.OWNER["name"]:
            raise OperationFailed(f"unknown core owner {name!r}")
        return held
    if kind not in registry.GROUPS:
        raise OperationFailed(f"the record names no plugin (owner {owner!r})")
    found = registry.discover(kind).get(str(name))
    if found is None:
        raise OperationFailed(f"{kind} plugin {name!r} is not installed")
    return found.load()


def undo_records(records: list[dict[str, Any]], runner: Runner) -> tuple[list[str], list[str]]:
    """Undo open journal ``records`` in reverse order; return (done, failed) messages. Never raises
    an Exception (an undo that fails leaves its record for the next try)."""
    done, failed = [], []
    for rec in reversed(records):
        what = f"{rec.get('kind')} {rec.get('key')!r}"
        try:
            with signals.waiting(f"undoing {what}"):
                msg = _undoer(rec.get("owner") or {}).undo(rec, runner)
            done.append(msg)
            log.info("cleanup: %s", msg)
        except Exception as e:  # noqa: BLE001 - keep undoing the rest; the journal stays
            failed.append(f"could not undo {what}: {e}")  # the caller reports it
    return done, failed


def sweep(state_dir: Path, runner: Runner, group: str | None = None) -> list[str]:
    """Undo the leftovers of every dead run (of ``group``: a job, ``_restore``, ``_drill``); return
    what was done. Journals held by a live snapagent are skipped. Raise OperationFailed when
    something could not be undone (its journal is kept for the next try)."""
    done: list[str] = []
    failures: list[str] = []
    for path in list(journals(state_dir, group)):
        pid = holder(path)
        if pid is not None:
            done.append(f"skipped {path.parent.name}/{path.name}: its run is still going (pid {pid})")
            continue
        ok, bad = undo_records(read_open(path), runner)
        done.extend(ok)
        failures.extend(f"{b} (journal {path})" for b in bad)
        if not bad and not runner.dry_run:
            path.unlink(missing_ok=True)
    if failures:
        raise OperationFailed("cleanup incomplete:\n  " + "\n  ".join(failures) + "\n"
                              "fix the cause and run `snapagent cleanup` again; to give a record up, release what "
                              "it names by hand and delete its journal file (docs/runbook.md)")
    return done

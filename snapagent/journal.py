"""Step journal: every step that takes something is recorded (and fsynced) before it acts.

A run's journal is ``<state_dir>/journal/<group>/<run_id>.jsonl``: the group is the job name for
a backup, ``_restore`` or ``_drill`` for those (job names never start with ``_``). Each line is an
``open`` record (a snapshot, a mount, a temp place, a freeze, a scratch directory, a server
process) or the ``close`` of one. Whatever is open when the run ends — normally, by an error, a
signal, or because it was killed — is undone in reverse order by the plugin named in the record's
``owner`` (``snapagent.cleanup``). A run that finishes with nothing open deletes its journal.

A live run holds an ``flock`` on its journal file, so ``cleanup`` never undoes what a running
snapagent holds; the lock dies with the process.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

from snapagent.util.fs import fsync_dir

log = logging.getLogger("snapagent.journal")

RESTORE_GROUP = "_restore"
DRILL_GROUP = "_drill"


class Journal:
    """The journal of one run (open for appending, flock held until ``finish``/``close``)."""

    def __init__(self, path: Path):
        self.path = path
        self._f = None

    @classmethod
    def start(cls, state_dir: Path, group: str, run_id: str) -> "Journal":
        """Create the journal file of a new run, lock it and record the run's start."""
        d = state_dir / "journal" / group
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        j = cls(d / f"{run_id}.jsonl")
        fd = os.open(j.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        j._f = os.fdopen(fd, "a", encoding="utf-8")
        fsync_dir(d)
        j._write({"op": "run", "group": group, "run": run_id, "pid": os.getpid(), "time": time.time()})
        return j

    def _write(self, rec: dict[str, Any]) -> None:
        assert self._f is not None
        self._f.write(json.dumps(rec, sort_keys=True) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())

    def open(self, kind: str, key: str, owner: dict[str, str], **data: Any) -> None:
        """Record that ``kind`` ``key`` is about to be taken; ``owner`` names the plugin that can undo it."""
        self._write({"op": "open", "kind": kind, "key": key, "owner": owner, **data})

    def close(self, kind: str, key: str) -> None:
        """Record that ``kind`` ``key`` was released (or intentionally kept)."""
        self._write({"op": "close", "kind": kind, "key": key})

    def finish(self) -> None:
        """Delete the journal of a run that left nothing open."""
        self.path.unlink(missing_ok=True)
        fsync_dir(self.path.parent)
        self.close_file()

    def close_file(self) -> None:
        """Stop writing (and release the lock) but keep the file: ``cleanup`` undoes what is open."""
        if self._f:
            self._f.close()
            self._f = None


def read_open(path: Path) -> list[dict[str, Any]]:
    """Return the records of journal ``path`` that were opened and never closed, in order.

    A torn last line (the agent died mid-write) is ignored.
    """
    open_recs: dict[tuple[str, str], dict[str, Any]] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if not isinstance(rec, dict):
                continue
            k = (rec.get("kind"), rec.get("key"))
            if rec.get("op") == "open":
                open_recs[k] = rec
            elif rec.get("op") == "close":
                open_recs.pop(k, None)
    return list(open_recs.values())


def holder(path: Path) -> str | None:
    """Return the pid (as text) of the live run holding journal ``path``, or None when none does."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        with os.fdopen(os.dup(fd), encoding="utf-8", errors="replace") as f:
            try:
                return str(json.loads(f.readline()).get("pid", "?"))
            except (json.JSONDecodeError, AttributeError):
                return "?"
    finally:
        os.close(fd)
    return None


def journals(state_dir: Path, group: str | None = None) -> Iterator[Path]:
    """Yield the journal files under ``state_dir`` (of ``group``: a job, ``_restore``, ``_drill``)."""
    root = state_dir / "journal"
    if not root.is_dir():
        return
    dirs = [root / group] if group else sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    for d in dirs:
        if d.is_dir():
            yield from sorted(d.glob("*.jsonl"))

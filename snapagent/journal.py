"""Step journal: every step that takes something is recorded (and fsynced) before it acts.

A run's journal is ``<state_dir>/journal/<job>/<run_id>.jsonl``; each line is an ``open`` record
(a snapshot, a mount, a temp place, a freeze) or the ``close`` of one. Whatever is open when the run
ends — normally or because it was killed — is undone by ``undo_open`` in reverse order, by the
plugin named in the record (``owner``). A run that finishes deletes its journal.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterator

from snapagent.util.fs import fsync_dir

log = logging.getLogger("snapagent.journal")


class Journal:
    """The journal of one run."""

    def __init__(self, path: Path):
        self.path = path
        self._f = None

    @classmethod
    def start(cls, state_dir: Path, job: str, run_id: str) -> "Journal":
        """Create the journal file of a new run and record its start."""
        d = state_dir / "journal" / job
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
        j = cls(d / f"{run_id}.jsonl")
        j._f = open(j.path, "a", encoding="utf-8")
        os.chmod(j.path, 0o600)
        fsync_dir(d)
        j._write({"op": "run", "job": job, "run": run_id, "pid": os.getpid(), "time": time.time()})
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
        if self._f:
            self._f.close()
            self._f = None
        self.path.unlink(missing_ok=True)
        fsync_dir(self.path.parent)


def read_open(path: Path) -> list[dict[str, Any]]:
    """Return the records of journal ``path`` that were opened and never closed, in order.

    A torn last line (the agent died mid-write) is ignored.
    """
    open_recs: dict[tuple[str, str], dict[str, Any]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            k = (rec.get("kind"), rec.get("key"))
            if rec.get("op") == "open":
                open_recs[k] = rec
            elif rec.get("op") == "close":
                open_recs.pop(k, None)
    return list(open_recs.values())


def journals(state_dir: Path, job: str | None = None) -> Iterator[Path]:
    """Yield the journal files under ``state_dir`` (of ``job``)."""
    root = state_dir / "journal"
    if not root.is_dir():
        return
    dirs = [root / job] if job else sorted(p for p in root.iterdir() if p.is_dir())
    for d in dirs:
        if d.is_dir():
            yield from sorted(d.glob("*.jsonl"))

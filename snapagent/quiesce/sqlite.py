"""SQLite quiescer: the writer lock on one held connection across the snapshot.

Procedure (sqlite.org wal / lang_transaction / howtocorrupt): a dedicated connection in autocommit
mode with a bounded busy timeout; optionally ``PRAGMA wal_checkpoint(TRUNCATE)``; ``BEGIN IMMEDIATE``
(writers block on their own busy_timeout, readers go on); snapshot; ``ROLLBACK``. The ``-wal`` file
is captured with the database in the same snapshot and must never be dropped on restore. The agent
never opens the database file any other way (closing a second descriptor drops POSIX locks).
"""

from __future__ import annotations

import os
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import field_validator

from snapagent.config import Duration, Strict
from snapagent.errors import PreflightFailed, QuiesceFailed
from snapagent.plugin.handover import record_owner, resolve_owner
from snapagent.plugin.quiescer import Handover, Locate, ProbeResult, Quiescer, RestoreContext
from snapagent.util import sqllog

PUT_IN_PLACE = "docs/databases.md#put-a-restored-sqlite-database-in-place"


class SqliteConfig(Strict):
    path: Path
    checkpoint: bool = True
    busy_timeout: Duration = 5.0

    @field_validator("path")
    @classmethod
    def _abs(cls, v: Path) -> Path:
        if not v.is_absolute():
            raise ValueError("must be an absolute path")
        return Path(os.path.normpath(v))


CHECKPOINT_BUDGET = 0.5  # seconds a checkpoint may take before the lock is taken regardless


def _busy(e: sqlite3.OperationalError) -> bool:
    """True for SQLITE_BUSY / SQLITE_LOCKED: someone else holds the lock right now."""
    return getattr(e, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED) or \
        "locked" in str(e) or "busy" in str(e)


def _retry(step, until: float):
    """Run ``step()`` (on a connection with busy_timeout 0) until it does not fail with "busy",
    retrying at once — never sleeping, never yielding the CPU — until ``until``; return (its
    result, tries). SQLite's own busy handler sleeps between tries and loses to a writer that
    commits back to back; retrying at once catches the microseconds between two of its
    transactions. (Yielding was measured worse: the writer retakes the lock while we are off the
    CPU.) The spin is bounded by ``until`` and typically lasts milliseconds."""
    tries = 0
    while True:
        tries += 1
        try:
            return step(), tries
        except sqlite3.OperationalError as e:
            if not _busy(e) or time.monotonic() >= until:
                raise


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="microseconds")


class SqliteQuiescer(Quiescer):
    type = "sqlite"
    Config = SqliteConfig
    releases_on_death = True  # the write lock is a POSIX lock of the agent's own descriptor
    consistency = "application"

    @classmethod
    def lock_waits(cls, cfg: SqliteConfig) -> dict[str, float]:
        return {"busy_timeout": cfg.busy_timeout} if "busy_timeout" in cfg.model_fields_set else {}

    def __init__(self, cfg: SqliteConfig, ctx):
        super().__init__(cfg, ctx)
        self.conn: sqlite3.Connection | None = None
        self.rec: dict[str, Any] = {"type": self.type, "path": str(cfg.path), "consistency": self.consistency}
        self._locked = False

    def files(self) -> list[Path]:
        return [self.cfg.path]

    @classmethod
    def data_dirs(cls, cfg: SqliteConfig) -> list[Path]:
        return [cfg.path.parent]  # the -wal, -shm and journal files live beside it

    def describe(self) -> str:
        return f"sqlite {self.cfg.path}"

    def preflight(self) -> None:
        p = self.cfg.path
        if not p.is_file():
            raise PreflightFailed(f"sqlite database {str(p)!r} does not exist")
        try:
            # mode=rw: never create a database by accident
            self.conn = sqlite3.connect(f"file:{p.as_posix().replace('?', '%3f').replace('#', '%23')}?mode=rw",
                                        uri=True, isolation_level=None, timeout=0, check_same_thread=False)
            self._sql("PRAGMA busy_timeout = 0")  # every wait is a retry of ours (see quiesce)
            sqllog.statement(self.type, "PRAGMA journal_mode")
            mode = _retry(lambda: self.conn.execute("PRAGMA journal_mode").fetchone()[0],
                          time.monotonic() + self.cfg.busy_timeout)[0]
        except sqlite3.Error as e:
            self._close()
            raise PreflightFailed(f"sqlite database {str(p)!r}: {e}") from None
        self.rec.update(journal_mode=mode, sqlite_version=sqlite3.sqlite_version,
                        owner=record_owner(p))  # whom a restore gives the file back to

    def prepare(self) -> None:
        """Checkpoint the WAL (bounded by CHECKPOINT_BUDGET and busy_timeout) before any lock of
        the job is taken, and before the driver flushes the volume: inside the window it would
        hold every other quiescer's lock for its duration. Raise QuiesceFailed."""
        if self.conn is None:
            self.preflight()
        if self.cfg.checkpoint and self.rec.get("journal_mode") == "wal":
            try:
                self._checkpoint(time.monotonic() + min(CHECKPOINT_BUDGET, self.cfg.busy_timeout))
            except sqlite3.Error as e:
                raise QuiesceFailed(f"sqlite {str(self.cfg.path)!r}: checkpoint failed: {e}") from None

    def quiesce(self, deadline: float) -> None:
        """Checkpoint the WAL (bounded, optional; unless ``prepare`` did), then take the write lock, retrying at once while
        a writer holds it — SQLite's own busy handler sleeps between tries and loses the race
        against a writer that commits back to back. The wait is bounded by ``busy_timeout`` and
        ``deadline``. Raise QuiesceFailed."""
        if self.conn is None:
            self.preflight()
        assert self.conn is not None
        start = time.monotonic()
        until = min(deadline, start + self.cfg.busy_timeout)
        if until <= start:
            raise QuiesceFailed(f"sqlite {str(self.cfg.path)!r}: no time left in max_freeze to take the lock")
        try:
            if self.cfg.checkpoint and self.rec.get("journal_mode") == "wal" and "checkpoint" not in self.rec:
                self._checkpoint(min(until, time.monotonic() + CHECKPOINT_BUDGET))
            sqllog.statement(self.type, "BEGIN IMMEDIATE (retried at once while busy)")
            t0 = time.monotonic()
            _, tries = _retry(lambda: self.conn.execute("BEGIN IMMEDIATE"), until)
            self.held_at = time.monotonic()
            self._locked = True
            self.rec["lock_wait_ms"] = round((self.held_at - t0) * 1000, 3)
            self.rec["lock_tries"] = tries
            self.rec["locked_at"] = _utc(time.time())
        except sqlite3.Error as e:
            raise QuiesceFailed(f"sqlite {str(self.cfg.path)!r}: could not take the write lock within "
                                f"{until - start:.2f}s (busy_timeout, max_freeze): {e}") from None

    def _checkpoint(self, until: float) -> None:
        """``wal_checkpoint(TRUNCATE)``, retried at once while writers are busy until ``until``;
        what it could not finish stays in the -wal file, which the snapshot holds anyway."""
        sqllog.statement(self.type, "PRAGMA wal_checkpoint(TRUNCATE) (retried at once while busy)")
        t0, tries = time.monotonic(), 0
        while True:
            tries += 1
            try:
                busy, log_frames, done = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.OperationalError as e:
                if not _busy(e):
                    raise
                busy, log_frames, done = 1, -1, -1
            if not busy or time.monotonic() >= until:
                break
        self.rec["checkpoint"] = {"busy": busy, "log_frames": log_frames, "checkpointed": done, "tries": tries,
                                  "ms": round((time.monotonic() - t0) * 1000, 3)}

    def verify(self) -> None:
        if self.conn is None or not self._locked or not self.conn.in_transaction:
            raise QuiesceFailed(f"sqlite {str(self.cfg.path)!r}: the write lock was lost before the snapshot ended")

    def release(self) -> dict[str, Any]:
        if self._locked and self.conn is not None:
            try:
                self._sql("ROLLBACK")
            except sqlite3.Error:
                pass
            self._locked = False
            self.rec["released_at"] = _utc(time.time())
        self._close()
        return dict(self.rec)

    def _sql(self, sql: str) -> sqlite3.Cursor:
        """Execute ``sql`` on the held connection, logged (``sqllog``; a statement retried in a
        loop is logged once by its caller instead)."""
        sqllog.statement(self.type, sql)
        return self.conn.execute(sql)

    def _close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except sqlite3.Error:
                pass
            self.conn = None

    @classmethod
    def prepare_restore(cls, record: dict[str, Any], locate: Locate, ctx: RestoreContext) -> Handover | None:
        """Give the restored database file and its ``-wal``/``-journal`` to the live file's owner
        (recorded at backup; by name when that user exists here); return the hand-over: the files,
        their owner and the check command. SQLite has no server: nothing to start or stop."""
        path = locate(record["path"])
        # regular files only: a restored tree is as untrusted as the manifest (never a symlink's target)
        files = [p for p in (path, *(path.with_name(path.name + sfx) for sfx in ("-wal", "-journal")))
                 if p.is_file() and not p.is_symlink()]
        user = None
        if files:
            try:
                user, uid, gid = resolve_owner(record.get("owner"), path, "root")
            except KeyError:
                user = None
            else:
                for p in files:
                    os.lchown(p, uid, gid)
        return Handover(kind="sqlite", data_dir=str(path.parent), owner=user, files=[str(p) for p in files],
                        check=["sqlite3", str(path), "PRAGMA integrity_check"], put_in_place=PUT_IN_PLACE,
                        notes=["no server to start: point the application at the file, or put it in place "
                               "(never without its -wal file)"])

    @classmethod
    def drill(cls, record: dict[str, Any], locate: Locate, ctx: RestoreContext) -> list[ProbeResult]:
        """``PRAGMA integrity_check`` and exact row counts of the restored database."""
        path = locate(record["path"])
        name = f"sqlite {record['path']}"
        if not path.is_file():
            return [ProbeResult(name, False, message=f"restored database {path} is missing")]
        try:
            conn = sqlite3.connect(f"file:{path.as_posix().replace('?', '%3f').replace('#', '%23')}?mode=rw", uri=True, isolation_level=None)
            try:
                check = [r[0] for r in conn.execute("PRAGMA integrity_check")]
                tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]
                counts = {t: conn.execute(f'SELECT count(*) FROM "{t.replace(chr(34), chr(34) * 2)}"').fetchone()[0] for t in tables}
            finally:
                conn.close()
        except sqlite3.Error as e:
            return [ProbeResult(name, False, message=f"cannot open restored database: {e}")]
        ok = check == ["ok"]
        return [ProbeResult(name, ok, {"integrity_check": check[:10], "rows": counts},
                            "integrity_check ok" if ok else "integrity_check failed")]

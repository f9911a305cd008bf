"""PostgreSQL quiescer: a crash-consistent image with CHECKPOINT, or the backup API on one session.

Topology first: the server names its ``data_directory``, the target of the ``pg_wal`` symlink and
every tablespace location; ``files()`` returns them so the engine refuses any that lies outside
the job's volumes. Then the mode (``mode = "auto"`` picks):

* **checkpoint** — all of them lie on one volume, or the driver snapshots all volumes at one
  instant (``Driver.atomic``): optional ``CHECKPOINT`` (shortens recovery), snapshot. The image is
  crash-consistent; PostgreSQL's crash recovery makes it consistent on start.
* **backup-api** — otherwise: ``pg_backup_start(label, fast => true)`` (``pg_start_backup`` on
  12–14) on one held session → snapshot all → ``pg_backup_stop`` on the same session. Its
  ``labelfile``/``spcmapfile`` go into the manifest record byte for byte; the archived WAL from the
  start to the stop segment (plus the ``.backup`` history file) is copied from ``wal_archive`` into
  the backup as an extra artifact, so the backup is self-contained. Needs ``archive_mode = on``.

``pg_backup_stop`` is called with ``wait_for_archive => false`` so the freeze window does not
include the archiver's latency; the agent itself then waits (``archive_timeout``) until every
needed segment is complete in ``wal_archive``, which also proves archiving works. No lock that
blocks writers is taken in either mode; the agent's death ends the session, which aborts a
running backup server-side. Passwords are never accepted in the DSN (use a pgpass file).

A backup-API record also names ``oldest_needed_walfile`` and ``wal_archive``: after prune,
``clean_archive`` (``archive.py``) removes from the archive what no kept backup needs
(``wal_prune = false``: left alone).
"""

from __future__ import annotations

import logging
import os
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator, model_validator

from snapagent.config import Duration, Strict
from snapagent.errors import PreflightFailed, QuiesceFailed
from snapagent.plugin.handover import record_owner
from snapagent.plugin.quiescer import (
    Archive,
    ArchiveCleanup,
    ExtraArtifact,
    Handover,
    KeptRecord,
    Locate,
    ProbeResult,
    Quiescer,
    RestoreContext,
)
from snapagent.quiesce.postgresql import wal
from snapagent.util import sqllog
from snapagent.util.fs import is_within
from snapagent.util.secretfiles import check_secret_file

log = logging.getLogger("snapagent.quiesce.postgresql")

MIN_VERSION = 120000


class PostgresConfig(Strict):
    dsn: str  # libpq conninfo or URI, without a password (pgpass: passfile=… or $PGPASSFILE)
    mode: Literal["auto", "checkpoint", "backup-api"] = "auto"
    wal_archive: Path | None = None  # where archive_command puts the segments (backup-api)
    wal_prune: bool = True  # after prune: remove archived WAL no kept backup needs (quiesce/postgresql/archive.py)
    checkpoint: bool = True  # CHECKPOINT before a checkpoint-mode snapshot
    connect_timeout: Duration = 10.0
    archive_timeout: Duration = 60.0  # how long to wait for the backup's WAL to be archived
    bindir: Path | None = None  # server binaries for `drill`; default /usr/lib/postgresql/<major>/bin

    @field_validator("dsn")
    @classmethod
    def _dsn(cls, v: str) -> str:
        import psycopg.conninfo

        try:
            parts = psycopg.conninfo.conninfo_to_dict(v)
        except psycopg.ProgrammingError as e:
            raise ValueError(f"not a valid libpq connection string: {_unquoted(str(e), v)}") from None
        if "password" in parts:
            raise ValueError("must not contain a password (it would end up in configs and logs); "
                             "use a pgpass file: passfile=/path or $PGPASSFILE, mode 0600")
        for key in ("passfile", "sslkey"):  # secrets libpq reads: private now, not at backup time
            if parts.get(key):
                try:
                    check_secret_file(Path(parts[key]))
                except ValueError as e:
                    raise ValueError(f"{key}: {e}") from None
        return v

    @field_validator("wal_archive", "bindir")
    @classmethod
    def _abs(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_absolute():
            raise ValueError("must be an absolute path")
        return v

    @model_validator(mode="after")
    def _archive_needed(self) -> "PostgresConfig":
        if self.mode == "backup-api" and self.wal_archive is None:
            raise ValueError("wal_archive: required when mode = \"backup-api\" (the directory archive_command writes to)")
        return self


def _unquoted(message: str, dsn: str) -> str:
    """Return libpq's ``message`` about ``dsn`` with the pieces it quotes hidden when the DSN holds
    a password: a password with a space is cut into tokens that libpq then quotes in the message
    (``missing "=" after "…"``), and config errors are printed and logged."""
    if not re.search(r"password|://[^/?#]*@", dsn, re.I):
        return message
    return re.sub(r'"([^"]*)"', lambda m: m.group() if m.group(1) == "=" else '"…"', message)


def _utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


_TOPOLOGY_SQL = """
SELECT current_setting('data_directory'), current_setting('server_version'),
       current_setting('server_version_num')::int, current_setting('wal_level'),
       current_setting('archive_mode'), pg_backend_pid(), current_setting('is_superuser'),
       (SELECT rolname FROM pg_roles WHERE oid = 10), current_setting('config_file'),
       current_setting('hba_file'), pg_is_in_recovery(),
       (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')
"""


class PostgresQuiescer(Quiescer):
    type = "postgresql"
    Config = PostgresConfig
    releases_on_death = True  # the backup is tied to the session; the server aborts it on disconnect
    consistency = "application"

    def __init__(self, cfg: PostgresConfig, ctx):
        super().__init__(cfg, ctx)
        self.conn = None
        self.rec: dict[str, Any] = {"type": self.type}
        self.topo: dict[str, Any] | None = None
        self.mode: str | None = None
        self._in_backup = False
        self._stopped = False

    # -- connection and topology ----------------------------------------------------------------
    def describe(self) -> str:
        where = self.topo["data_directory"] if self.topo else self.cfg.dsn
        return f"postgresql {where}"

    def _connect(self):
        import psycopg

        if self.conn is None:
            try:
                self.conn = psycopg.connect(self.cfg.dsn, autocommit=True, cursor_factory=sqllog.psycopg_cursor(self.type),
                                            connect_timeout=max(2, int(self.cfg.connect_timeout)),
                                            application_name=f"snapagent:{self.ctx.job}"[:63])
            except psycopg.Error as e:
                raise PreflightFailed(f"postgresql: cannot connect ({self._conn_desc()}): {str(e).strip()}") from None
        return self.conn

    def _conn_desc(self) -> str:
        import psycopg.conninfo

        d = psycopg.conninfo.conninfo_to_dict(self.cfg.dsn)
        return " ".join(f"{k}={d[k]}" for k in ("host", "port", "user", "dbname") if k in d) or "libpq defaults"

    def _timeouts(self, seconds: float) -> None:
        """Bound every following statement (and lock wait) to ``seconds``."""
        ms = str(max(1, int(seconds * 1000)))
        self.conn.execute("SELECT set_config('statement_timeout', %s, false), set_config('lock_timeout', %s, false)", (ms, ms))

    def topology(self) -> dict[str, Any]:
        """Ask the server where its files are; return and cache {data_directory, pg_wal, tablespaces, …}.

        Raises PreflightFailed when it cannot connect, lacks privileges or runs on another host.
        """
        if self.topo is not None:
            return self.topo
        import psycopg

        conn = self._connect()
        try:
            self._timeouts(max(5.0, self.cfg.connect_timeout))
            row = conn.execute(_TOPOLOGY_SQL).fetchone()
            spcs = conn.execute("SELECT oid::text, spcname, pg_tablespace_location(oid) FROM pg_tablespace "
                                "WHERE pg_tablespace_location(oid) <> '' ORDER BY oid").fetchall()
        except psycopg.errors.InsufficientPrivilege as e:
            raise PreflightFailed(f"postgresql: the role lacks privileges to read the server's settings ({str(e).strip()}); "
                                  "use a superuser or grant pg_read_all_settings") from None
        except psycopg.Error as e:
            raise PreflightFailed(f"postgresql: cannot read the server's topology: {str(e).strip()}") from None
        dd, version, vnum, wal_level, archive_mode, pid, su, bootstrap, conf, hba, in_rec, seg = row
        datadir = Path(dd)
        if not (datadir / "PG_VERSION").is_file():
            raise PreflightFailed(f"postgresql: the server's data_directory {dd} is not visible here "
                                  "(snapagent must run on the database host, with permission to read it)")
        walpath = datadir / "pg_wal"
        pg_wal = os.path.realpath(walpath) if walpath.is_symlink() else None
        tablespaces = {oid: loc for oid, _name, loc in spcs if os.path.isabs(loc)}
        self.topo = {
            "data_directory": dd, "pg_wal": pg_wal, "tablespaces": tablespaces,
            "tablespace_names": {oid: name for oid, name, loc in spcs if os.path.isabs(loc)},
            "server_version": version, "server_version_num": vnum, "wal_level": wal_level,
            "archive_mode": archive_mode, "backend_pid": pid, "superuser": su == "on",
            "bootstrap_superuser": bootstrap, "config_file": conf, "hba_file": hba, "in_recovery": in_rec,
            "wal_segment_size": int(seg),
        }
        return self.topo

    def files(self) -> list[Path]:
        t = self.topology()
        out = [Path(t["data_directory"])]
        if t["pg_wal"]:
            out.append(Path(t["pg_wal"]))
        out += [Path(loc) for loc in t["tablespaces"].values()]
        return out

    # -- preflight ------------------------------------------------------------------------------
    def _volume_of(self, f: Path) -> int | None:
        for i, root in enumerate(self.ctx.volume_roots):
            if is_within(f, root):
                return i
        return None

    def choose_mode(self) -> str:
        """Return "checkpoint" or "backup-api" for this topology; raise PreflightFailed when the
        configured mode cannot give a consistent backup."""
        t = self.topology()
        files = self.files()
        vols = {str(f): self._volume_of(f) for f in files}
        one_instant = self.ctx.atomic or len(set(vols.values())) == 1
        if self.cfg.mode == "checkpoint" and not one_instant:
            where = "; ".join(f"{f} on {self.ctx.volume_roots[v] if v is not None else 'no volume'}" for f, v in vols.items())
            raise PreflightFailed(
                f"postgresql: mode = \"checkpoint\" needs PGDATA, pg_wal and every tablespace in one atomic snapshot, "
                f"but they lie on different volumes that are snapshotted one after another ({where}); "
                "use mode = \"backup-api\" (or \"auto\") with archiving, or move them onto one volume")
        if self.cfg.mode == "checkpoint" or (self.cfg.mode == "auto" and one_instant):
            return "checkpoint"
        if t["in_recovery"]:
            raise PreflightFailed("postgresql: backup-api mode on a standby is not supported; back up the primary "
                                  "or put PGDATA, pg_wal and the tablespaces on one volume")
        return "backup-api"

    def preflight(self) -> None:
        import psycopg

        t = self.topology()
        if t["server_version_num"] < MIN_VERSION:
            raise PreflightFailed(f"postgresql: server {t['server_version']} is too old (12 or newer is supported)")
        self.mode = self.choose_mode()
        if self.cfg.mode == "auto":
            log.info("%s: mode auto chose %s (%s)", self.describe(), self.mode,
                     "PGDATA, pg_wal and every tablespace are in one atomic snapshot" if self.mode == "checkpoint"
                     else "PGDATA, pg_wal and the tablespaces are not in one atomic snapshot")
        conn = self.conn
        try:
            if self.mode == "checkpoint" and self.cfg.checkpoint and not t["superuser"]:
                ok = t["server_version_num"] >= 150000 and conn.execute(
                    "SELECT pg_has_role(current_user, 'pg_checkpoint', 'MEMBER')").fetchone()[0]
                if not ok:
                    raise PreflightFailed("postgresql: CHECKPOINT needs a superuser or a member of pg_checkpoint; "
                                          "grant it or set checkpoint = false")
            if self.mode == "backup-api":
                self._preflight_backup_api(t)
        except psycopg.Error as e:
            raise PreflightFailed(f"postgresql: preflight query failed: {str(e).strip()}") from None
        self.rec.update({k: t[k] for k in ("data_directory", "pg_wal", "tablespaces", "tablespace_names",
                                           "server_version", "server_version_num", "wal_segment_size",
                                           "bootstrap_superuser", "config_file", "hba_file")})
        self.rec.update(mode=self.mode, consistency="crash" if self.mode == "checkpoint" else "application",
                        files=[str(f) for f in self.files()], connection=self._conn_desc(),
                        owner=record_owner(Path(t["data_directory"])))  # whom a restore gives the files to
        if self.cfg.bindir:
            self.rec["bindir"] = str(self.cfg.bindir)

    def _preflight_backup_api(self, t: dict[str, Any]) -> None:
        why = "backup-api mode is needed" if self.cfg.mode == "auto" else "mode = \"backup-api\""
        if self.cfg.mode == "auto":
            why += " (PGDATA, pg_wal and the tablespaces are not in one atomic snapshot)"
        if t["wal_level"] not in ("replica", "logical"):
            raise PreflightFailed(f"postgresql: {why}, but wal_level = {t['wal_level']}; set wal_level = replica")
        if t["archive_mode"] not in ("on", "always"):
            raise PreflightFailed(f"postgresql: {why}, but archiving is off (archive_mode = {t['archive_mode']}); "
                                  "set archive_mode = on and an archive_command that copies segments into wal_archive")
        if self.cfg.wal_archive is None:
            raise PreflightFailed(f"postgresql: {why}; set wal_archive to the directory archive_command copies segments to")
        if not self.cfg.wal_archive.is_dir():
            raise PreflightFailed(f"postgresql: wal_archive {self.cfg.wal_archive} is not a directory")
        fn = "pg_backup_start(text, boolean)" if t["server_version_num"] >= 150000 else "pg_start_backup(text, boolean, boolean)"
        if not self.conn.execute("SELECT has_function_privilege(%s, 'EXECUTE')", (fn,)).fetchone()[0]:
            raise PreflightFailed(f"postgresql: the role may not run {fn}; use a superuser or GRANT EXECUTE ON FUNCTION {fn}")
        row = self.conn.execute("SELECT last_archived_wal, last_archived_time, last_failed_wal, last_failed_time "
                                "FROM pg_stat_archiver").fetchone()
        if row[3] is not None and (row[1] is None or row[3] > row[1]):
            raise PreflightFailed(f"postgresql: archive_command is failing (last failure for {row[2]} at {row[3]}); "
                                  "fix archiving first (see the server log and pg_stat_archiver)")

    # -- the freeze -----------------------------------------------------------------------------
    def quiesce(self, deadline: float) -> None:
        import psycopg

        if self.mode is None:
            self.preflight()
        self.rec["started_at"] = _utc()
        what = "CHECKPOINT" if self.mode == "checkpoint" else "pg_backup_start"
        t0 = time.monotonic()
        try:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise QuiesceFailed("postgresql: no time left in max_freeze to start")
            self._timeouts(remaining)
            if self.mode == "checkpoint":
                self._checkpoint()
            else:
                self._backup_start()
        except psycopg.errors.QueryCanceled as e:
            raise QuiesceFailed(f"postgresql: {what} did not finish within max_freeze "
                                f"(statement_timeout {remaining:.1f}s): {str(e).strip()}") from None
        except psycopg.errors.LockNotAvailable as e:
            raise QuiesceFailed(f"postgresql: {what} waited too long for a lock (lock_timeout): {str(e).strip()}") from None
        except psycopg.Error as e:
            raise QuiesceFailed(f"postgresql: {what} failed: {str(e).strip()}") from None
        self.rec["quiesce_ms"] = round((time.monotonic() - t0) * 1000, 3)

    def _checkpoint(self) -> None:
        # every commit acknowledged before consistent_at is in the image: the checkpoint flushes the
        # WAL inserted before it started, even under synchronous_commit = off
        before = _utc()
        if self.cfg.checkpoint:
            self.conn.execute("CHECKPOINT")
        fn = "pg_last_wal_replay_lsn()" if self.topo["in_recovery"] else "pg_current_wal_lsn()"
        self.rec["lsn"] = self.conn.execute(f"SELECT {fn}::text").fetchone()[0]
        self.rec["consistent_at"] = before if self.cfg.checkpoint else _utc()

    def _backup_start(self) -> None:
        label = f"snapagent {self.ctx.job} {_utc()}"
        if self.topo["server_version_num"] >= 150000:
            sql = "SELECT pg_backup_start(%s, fast => true)::text"
        else:
            sql = "SELECT pg_start_backup(%s, true, false)::text"
        # a cancelled start is aborted by the server itself; closing the session then suffices
        self.rec["start_lsn"] = self.conn.execute(sql, (label,)).fetchone()[0]
        self._in_backup = True
        self.rec["label"] = label
        self.rec["backup_started_at"] = _utc()

    def verify(self) -> None:
        if self.mode != "backup-api":
            return  # nothing is held in checkpoint mode
        import psycopg

        try:
            self._timeouts(5)
            pid = self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        except (psycopg.Error, AttributeError) as e:
            raise QuiesceFailed(f"postgresql: the backup session was lost during the snapshot: {e}") from None
        if pid != self.topo["backend_pid"]:
            raise QuiesceFailed("postgresql: the backup session changed during the snapshot")

    def release(self) -> dict[str, Any]:
        if self._in_backup and not self._stopped and self.conn is not None:
            self._stopped = True
            self._backup_stop()
        self._close()
        return dict(self.rec)

    def _backup_stop(self) -> None:
        """Call pg_backup_stop on the held session; record labelfile/spcmapfile. Never raises."""
        import psycopg

        self.rec["consistent_at"] = _utc()  # commits acknowledged before this precede the stop LSN
        if self.topo["server_version_num"] >= 150000:
            sql = ("SELECT lsn::text, labelfile, spcmapfile, pg_walfile_name(lsn) "
                   "FROM pg_backup_stop(wait_for_archive => false)")
        else:
            sql = "SELECT lsn::text, labelfile, spcmapfile, pg_walfile_name(lsn) FROM pg_stop_backup(false, false)"
        try:
            self._timeouts(10)
            lsn, labelfile, spcmapfile, stopfile = self.conn.execute(sql).fetchone()
        except psycopg.Error as e:
            self.rec["error"] = f"pg_backup_stop failed: {str(e).strip()}"
            log.error("postgresql: %s", self.rec["error"])
            return
        self.rec.update(stop_lsn=lsn, labelfile=labelfile, spcmapfile=spcmapfile or "", stop_walfile=stopfile,
                        stopped_at=_utc())
        m = re.search(r"^START WAL LOCATION: \S+ \(file ([0-9A-F]{24})\)", labelfile, re.M)
        if m:
            self.rec["start_walfile"] = m.group(1)
            from snapagent.quiesce.postgresql import archive

            archive.record_facts(self.rec, self.cfg.wal_archive)
            try:
                self.rec["wal_files"] = wal.wanted_files(self.rec)
            except Exception as e:  # noqa: BLE001 - release never raises; artifacts() reports it
                self.rec["error"] = str(e)
        else:
            self.rec["error"] = "pg_backup_stop returned a labelfile without START WAL LOCATION"

    def _close(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001
                pass
            self.conn = None

    def artifacts(self) -> list[ExtraArtifact]:
        if self.mode != "backup-api":
            return []
        from snapagent.errors import OperationFailed

        if "error" in self.rec or "wal_files" not in self.rec:
            raise OperationFailed(f"postgresql: the backup did not stop cleanly: {self.rec.get('error', 'no WAL range')}")
        names, archive = self.rec["wal_files"], self.cfg.wal_archive
        seg = self.rec["wal_segment_size"]

        def open_wal():
            present = wal.wait_for_archive(archive, names, seg, self.cfg.archive_timeout)
            return wal.tar_stream(self.ctx.runner, archive, present)

        return [ExtraArtifact("wal", open_wal)]

    # -- archive hygiene (after prune) ----------------------------------------------------------
    @classmethod
    def archive(cls, cfg: PostgresConfig) -> Archive | None:
        return None if cfg.wal_archive is None else Archive(cfg.wal_archive, cfg.wal_prune, "wal_prune")

    @classmethod
    def clean_archive(cls, cfg: PostgresConfig, kept: list[KeptRecord], others: list[Path], dry_run: bool) -> ArchiveCleanup:
        from snapagent.quiesce.postgresql import archive

        assert cfg.wal_archive is not None
        return archive.clean(cls.type, cfg.wal_archive, kept, others, dry_run)

    # -- restore side ---------------------------------------------------------------------------
    @classmethod
    def prepare_restore(cls, record: dict[str, Any], locate: Locate, ctx: RestoreContext) -> Handover | None:
        from snapagent.quiesce.postgresql import restore

        return restore.prepare(record, locate, ctx)

    @classmethod
    def drill(cls, record: dict[str, Any], locate: Locate, ctx: RestoreContext) -> list[ProbeResult]:
        from snapagent.quiesce.postgresql import drill

        return drill.drill(record, locate, ctx)

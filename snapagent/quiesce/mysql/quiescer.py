"""MySQL/MariaDB quiescer: a read/commit lock held on one pinned session across the snapshot.

Procedure (design.md; MySQL FLUSH / LOCK INSTANCE, MariaDB BACKUP STAGE, mylvmbackup): a pinned
connection (PyMySQL never reconnects by itself), ``CONNECTION_ID()`` recorded; refuse (or wait,
bounded by the deadline) while a query has run longer than ``long_query_threshold``; then one of

- ``backup-stage`` (MariaDB ≥ 10.4): ``BACKUP STAGE START`` + ``BACKUP STAGE BLOCK_COMMIT`` — no
  commit, no binlog write, no DDL, non-transactional tables flushed; release ``BACKUP STAGE END``;
- ``ftwrl``: ``FLUSH TABLES`` then ``FLUSH TABLES WITH READ LOCK``; release ``UNLOCK TABLES``;
- ``lock-instance`` (MySQL ≥ 8.0): ``LOCK INSTANCE FOR BACKUP`` (blocks DDL, not DML) plus
  ``FLUSH TABLES <non-InnoDB tables> WITH READ LOCK``; InnoDB is crash-consistent only, so it needs
  every file on one volume (one snapshot instant); release ``UNLOCK TABLES``/``UNLOCK INSTANCE``.

Every lock statement runs with ``lock_wait_timeout`` bounded by the deadline and a watchdog that
sends ``KILL QUERY`` from a second session at the deadline. The session's ``wait_timeout`` is set
to the time left until the deadline (rounded up), so a hung agent loses its lock then; a killed
agent loses it at once.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator, model_validator

from snapagent.config import Duration, Strict
from snapagent.errors import PreflightFailed, QuiesceFailed
from snapagent.plugin.handover import record_owner
from snapagent.plugin.quiescer import Handover, Locate, ProbeResult, Quiescer, RestoreContext
from snapagent.quiesce.mysql import connection as mc
from snapagent.util.secretfiles import check_secret_file

log = logging.getLogger("snapagent.quiesce.mysql")

METHODS = ("auto", "ftwrl", "backup-stage", "lock-instance")
SYSTEM_SCHEMAS = ("mysql", "information_schema", "performance_schema", "sys")
IDLE_COMMANDS = ("Sleep", "Daemon", "Binlog Dump", "Binlog Dump GTID", "Killed", "Connect")


class MysqlConfig(Strict):
    option_file: Path | None = None
    socket: Path | None = None
    host: str | None = None
    port: int | None = None
    user: str | None = None
    method: Literal["auto", "ftwrl", "backup-stage", "lock-instance"] = "auto"
    long_query_threshold: Duration = 60.0
    long_query_policy: Literal["refuse", "wait"] = "refuse"
    lock_wait_timeout: Duration = 3.0
    connect_timeout: Duration = 5.0

    @model_validator(mode="before")
    @classmethod
    def _no_password(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("password", "passwd", "dsn"):
                if key in data:
                    hint = ("passwords are read only from an option file (mode 0600) named by option_file"
                            if key != "dsn" else "use option_file, socket, host, port, user")
                    raise ValueError(f"{key}: not accepted; {hint}")
        return data

    @field_validator("option_file", "socket")
    @classmethod
    def _abs(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_absolute():
            raise ValueError("must be an absolute path")
        return v

    @field_validator("option_file")
    @classmethod
    def _private(cls, v: Path | None) -> Path | None:
        # it may hold the password: it must exist now, 0600, owned by root or us (not at backup time)
        return None if v is None else check_secret_file(v)

    @field_validator("port")
    @classmethod
    def _port(cls, v: int | None) -> int | None:
        if v is not None and not 0 < v < 65536:
            raise ValueError("must be between 1 and 65535")
        return v

    @field_validator("lock_wait_timeout", "connect_timeout", "long_query_threshold")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be greater than zero")
        return v


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="microseconds")


def resolve_dir(value: str | None, datadir: Path) -> Path | None:
    """Return server directory variable ``value`` as an absolute path (relative ones are in datadir)."""
    if not value:
        return None
    p = Path(value)
    return Path(os.path.normpath(p if p.is_absolute() else datadir / p))


class MysqlQuiescer(Quiescer):
    type = "mysql"
    Config = MysqlConfig
    releases_on_death = True  # the lock belongs to the agent's session; the server ends it on EOF
    consistency = "application"

    @classmethod
    def lock_waits(cls, cfg: MysqlConfig) -> dict[str, float]:
        return {"lock_wait_timeout": cfg.lock_wait_timeout} if "lock_wait_timeout" in cfg.model_fields_set else {}

    def __init__(self, cfg: MysqlConfig, ctx):
        super().__init__(cfg, ctx)
        self.params: mc.ConnectParams | None = None
        self.conn = None      # the pinned session that holds the lock
        self.control = None   # a second session: processlist checks and KILL QUERY at the deadline
        self.info: mc.ServerInfo | None = None
        self.method: str | None = None
        self._release_sql: list[str] = []
        self._files: list[Path] | None = None
        self.rec: dict[str, Any] = {"type": self.type}

    # -- connection and facts -------------------------------------------------------------------
    def _connect(self) -> None:
        if self.conn is not None:
            return
        self.params = mc.params_for(self.cfg)
        # every statement on the pinned session is bounded (lock waits by lock_wait_timeout and the
        # watchdog): a read timeout past that means a hung server; PyMySQL then closes the session
        self.conn = mc.connect(self.params, self.cfg.connect_timeout,
                               read_timeout=self.cfg.lock_wait_timeout + self.cfg.connect_timeout + 5)
        self.control = mc.connect(self.params, self.cfg.connect_timeout, read_timeout=self.cfg.connect_timeout + 5)
        import pymysql

        try:
            self.info = mc.server_info(self.conn)
            self.rec["connection_id"] = mc.query(self.conn, "SELECT CONNECTION_ID()")[0][0]
        except pymysql.MySQLError as e:
            raise PreflightFailed(f"mysql: cannot read the server's settings: {mc.error_text(e)}") from None

    def describe(self) -> str:
        where = self.cfg.socket or self.cfg.option_file or f"{self.cfg.host or 'localhost'}:{self.cfg.port or 3306}"
        return f"mysql {where} (method {self.method or self.cfg.method})"

    def files(self) -> list[Path]:
        """Return datadir, InnoDB system/redo/undo directories, Aria log dir and binlog dir."""
        if self._files is None:
            self._connect()
            v = self.info.variables
            datadir = Path(os.path.normpath(v["datadir"]))
            found = [datadir]
            for name in ("innodb_data_home_dir", "innodb_log_group_home_dir", "innodb_undo_directory", "aria_log_dir_path"):
                found.append(resolve_dir(v.get(name), datadir))
            if self.info.log_bin and v.get("log_bin_basename"):
                found.append(resolve_dir(v["log_bin_basename"], datadir).parent)
            out: list[Path] = []
            for p in found:
                if p is not None and p not in out:
                    out.append(p)
            self._files = out
        return list(self._files)

    def _volume_of(self, path: Path) -> str | None:
        """Return the root directory of the job volume holding ``path`` (None when none does)."""
        roots = self.ctx.volume_roots or [Path(v) for v in self.ctx.volumes]
        real = os.path.realpath(path)
        for root in map(os.path.realpath, roots):
            if real == root or real.startswith(root.rstrip("/") + "/"):
                return root
        return None

    def _choose_method(self) -> str:
        info = self.info
        want = self.cfg.method
        stage_ok = info.flavor == "mariadb" and info.numeric >= (10, 4, 0)
        instance_ok = info.flavor == "mysql" and info.numeric >= (8, 0, 0)
        # one snapshot instant for every file: an atomic driver, or everything on one volume
        one_instant = self.ctx.atomic or len({self._volume_of(f) for f in self.files()}) == 1
        if want == "auto":
            if stage_ok:
                return "backup-stage"
            return "lock-instance" if instance_ok and one_instant else "ftwrl"
        if want == "backup-stage" and not stage_ok:
            raise PreflightFailed(f"mysql: method backup-stage needs MariaDB >= 10.4 (server is {info.version})")
        if want == "lock-instance":
            if not instance_ok:
                raise PreflightFailed(f"mysql: method lock-instance needs MySQL >= 8.0 (server is {info.version})")
            if not one_instant:
                raise PreflightFailed("mysql: method lock-instance leaves InnoDB crash-consistent only, so every "
                                      f"file ({', '.join(map(str, self.files()))}) must be on one volume "
                                      "(or the driver must snapshot all volumes atomically)")
        return want

    # -- lifecycle ------------------------------------------------------------------------------
    def preflight(self) -> None:
        """Connect, read version and directories, choose the method, refuse long queries (policy
        "refuse"); take no lock. Raise PreflightFailed (ConfigError for a bad option file)."""
        import pymysql

        try:
            self._preflight()
        except pymysql.MySQLError as e:
            raise PreflightFailed(f"mysql: preflight failed: {mc.error_text(e)}") from None

    def _preflight(self) -> None:
        self._connect()
        self.files()
        self.method = self._choose_method()
        if self.cfg.method == "auto":
            log.info("%s: method auto chose %s (%s %s)", self.describe(), self.method, self.info.flavor, self.info.version)
        self._check_grants()
        self._warn_split_innodb(self._volume_of(self.files()[0]))
        self.rec.update(flavor=self.info.flavor, version=self.info.version, method=self.method,
                        consistency="crash" if self.method == "lock-instance" else "application",
                        datadir=str(self.files()[0]), files=[str(f) for f in self.files()],
                        owner=record_owner(self.files()[0]),  # whom a restore gives the files to
                        server={k: self.info.variables.get(k) for k in mc.VARIABLES if k != "socket"})
        if self.cfg.long_query_policy == "refuse":
            self._refuse_long_queries()

    def _check_grants(self) -> None:
        """Refuse when the account lacks a global privilege the chosen method needs (RELOAD for
        FTWRL and BACKUP STAGE, BACKUP_ADMIN for LOCK INSTANCE) or the long-query guard needs
        (PROCESS: without it the processlist shows only the account's own sessions), naming the
        GRANT statement to run. When the grants cannot be read, or may come through a role, the
        statements themselves will tell."""
        need = {"ftwrl": ["RELOAD"], "backup-stage": ["RELOAD"], "lock-instance": ["BACKUP_ADMIN"]}[self.method] + ["PROCESS"]
        try:
            grants, roles = mc.global_privileges(self.control)
        except Exception as e:  # noqa: BLE001 - an unreadable grant list is not a refusal
            log.debug("mysql: cannot read the account's grants: %s", e)
            return
        missing = [p for p in need if p not in grants and "ALL PRIVILEGES" not in grants]
        if missing and roles:  # a role may hold them: its statements will tell
            log.debug("mysql: %s not granted directly; the account's roles may hold them", ", ".join(missing))
        elif missing:
            account = mc.current_account(self.control)
            why = {"RELOAD": f"method {self.method} takes its lock with it",
                   "BACKUP_ADMIN": "method lock-instance takes LOCK INSTANCE FOR BACKUP with it",
                   "PROCESS": "the long-query check sees other sessions only with it"}
            raise PreflightFailed(
                f"mysql: the account {account} lacks {', '.join(missing)} "
                f"({'; '.join(f'{p}: {why[p]}' for p in missing)}); as an administrator run: "
                f"GRANT {', '.join(missing)} ON *.* TO {account};")

    def _warn_split_innodb(self, datadir_vol: str | None) -> None:
        if self.ctx.atomic:
            return
        v = self.info.variables
        datadir = Path(v["datadir"])
        for name in ("innodb_log_group_home_dir", "innodb_undo_directory", "innodb_data_home_dir"):
            p = resolve_dir(v.get(name), datadir)
            if p is not None and self._volume_of(p) != datadir_vol:
                log.warning("mysql: %s (%s) is on another volume than the datadir; InnoDB's background "
                            "writes go on under the lock, so only an atomic multi-volume snapshot keeps them "
                            "consistent", name, p)

    def _long_queries(self) -> list[dict[str, Any]]:
        return mc.query_dicts(
            self.control,
            "SELECT ID, USER, HOST, DB, COMMAND, TIME, STATE FROM information_schema.PROCESSLIST "
            "WHERE ID <> CONNECTION_ID() AND ID <> %s AND COMMAND NOT IN (" + ", ".join(["%s"] * len(IDLE_COMMANDS)) + ") "
            "AND USER NOT IN ('system user', 'event_scheduler') AND TIME >= %s ORDER BY TIME DESC",
            (self.rec["connection_id"], *IDLE_COMMANDS, math.floor(self.cfg.long_query_threshold)))

    @staticmethod
    def _show(rows: list[dict[str, Any]]) -> str:
        # the query text is left out on purpose: it may hold secrets (CREATE USER ... IDENTIFIED BY)
        return "; ".join(f"id {r['ID']} user {r['USER']}{' db ' + r['DB'] if r.get('DB') else ''} "
                         f"{r['COMMAND']} for {r['TIME']}s"
                         f"{' (' + r['STATE'] + ')' if r.get('STATE') else ''}" for r in rows[:5])

    def _refuse_long_queries(self) -> None:
        rows = self._long_queries()
        if rows:
            raise PreflightFailed(
                f"mysql: {len(rows)} quer{'y has' if len(rows) == 1 else 'ies have'} run longer than "
                f"long_query_threshold ({self.cfg.long_query_threshold:g}s); a lock now would stall every writer "
                f"behind {'it' if len(rows) == 1 else 'them'}: {self._show(rows)}. "
                "Retry later, KILL it, or set long_query_policy = \"wait\"")

    def _wait_long_queries(self, deadline: float) -> None:
        t0 = time.monotonic()
        rows = self._long_queries()
        while rows:
            if self.cfg.long_query_policy == "refuse":
                raise QuiesceFailed(f"mysql: a query has run longer than long_query_threshold "
                                    f"({self.cfg.long_query_threshold:g}s): {self._show(rows)}")
            if time.monotonic() + 0.2 >= deadline:
                raise QuiesceFailed(f"mysql: waited {time.monotonic() - t0:.1f}s (until max_freeze) for long "
                                    f"queries to finish, still running: {self._show(rows)}")
            time.sleep(0.1)
            rows = self._long_queries()
        if time.monotonic() - t0 > 0.05:
            self.rec["long_query_wait_ms"] = round((time.monotonic() - t0) * 1000, 1)

    def quiesce(self, deadline: float) -> None:
        """Wait out/refuse long queries, then take the method's lock, bounded by ``deadline``;
        record binlog position and GTID. Raise QuiesceFailed (what was taken is released by release())."""
        import pymysql

        if self.method is None:
            self.preflight()
        try:
            self._quiesce(deadline)
        except pymysql.MySQLError as e:
            raise QuiesceFailed(f"mysql: {mc.error_text(e)}") from None

    def _quiesce(self, deadline: float) -> None:
        self._wait_long_queries(deadline)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise QuiesceFailed("mysql: no time left in max_freeze to take the lock")
        budget = min(self.cfg.lock_wait_timeout, remaining)
        # the server gives up waiting by itself even if the agent dies mid-wait; idle past the deadline
        # (a hung agent), it ends the session and with it the lock
        self._exec(f"SET SESSION lock_wait_timeout = {max(1, math.ceil(budget))}", deadline)
        self._exec(f"SET SESSION wait_timeout = {max(1, math.ceil(remaining))}", deadline)
        t0 = time.time()
        steps = {"ftwrl": self._lock_ftwrl, "backup-stage": self._lock_backup_stage,
                 "lock-instance": self._lock_instance}[self.method]
        steps(time.monotonic() + budget)
        self.rec["lock_wait_ms"] = round((time.time() - t0) * 1000, 3)
        self.rec["locked_at"] = _utc(time.time())
        self.rec.update(self._positions())

    # A release statement is due only once the statement it undoes succeeded: after a refused
    # BACKUP STAGE START, "BACKUP STAGE END" would fail too and warn about a lock never taken.
    def _lock_ftwrl(self, until: float) -> None:
        self._exec("FLUSH TABLES", until)
        self._exec("FLUSH TABLES WITH READ LOCK", until)
        self._release_sql = ["UNLOCK TABLES"]

    def _lock_backup_stage(self, until: float) -> None:
        self._exec("BACKUP STAGE START", until)
        self._release_sql = ["BACKUP STAGE END"]
        self._exec("BACKUP STAGE BLOCK_COMMIT", until)

    def _lock_instance(self, until: float) -> None:
        self._exec("LOCK INSTANCE FOR BACKUP", until)
        self._release_sql = ["UNLOCK INSTANCE"]
        tables = mc.query(self.conn,
                          "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_TYPE = 'BASE TABLE' "
                          "AND ENGINE IS NOT NULL AND ENGINE <> 'InnoDB' AND TABLE_SCHEMA NOT IN (%s, %s, %s, %s)",
                          SYSTEM_SCHEMAS)
        self.rec["non_innodb_tables"] = len(tables)
        if tables:
            names = ", ".join(f"{mc.quote_ident(s)}.{mc.quote_ident(t)}" for s, t in tables)
            self._release_sql = ["UNLOCK TABLES", "UNLOCK INSTANCE"]
            self._exec(f"FLUSH TABLES {names} WITH READ LOCK", until)

    def _exec(self, sql: str, until: float) -> None:
        """Run a lock statement on the pinned session; KILL QUERY it from the control session at
        ``until``. Raise QuiesceFailed with the server's message."""
        import pymysql

        wait = until - time.monotonic()
        if wait <= 0:
            raise QuiesceFailed(f"mysql: no time left in max_freeze for {sql.split(' WITH')[0][:40]}")
        timer = threading.Timer(wait, self._kill_query)
        timer.daemon = True
        timer.start()
        t0 = time.monotonic()
        try:
            with self.conn.cursor() as cur:
                cur.execute(sql)
        except pymysql.MySQLError as e:
            took = time.monotonic() - t0
            raise QuiesceFailed(f"mysql: {sql[:60]} failed after {took:.2f}s: {mc.error_text(e)}"
                                f"{' (lock_wait_timeout/max_freeze reached)' if took >= wait - 0.05 else ''}") from None
        finally:
            timer.cancel()

    def _kill_query(self) -> None:
        try:
            mc.query(self.control, f"KILL QUERY {int(self.rec['connection_id'])}")
            log.warning("mysql: lock statement passed its time limit; sent KILL QUERY %s", self.rec["connection_id"])
        except Exception as e:  # noqa: BLE001 - the server's lock_wait_timeout still bounds the wait
            log.warning("mysql: KILL QUERY failed: %s", e)

    def _positions(self) -> dict[str, Any]:
        """Return binlog file/position and GTID while the lock is held (exact under ftwrl/backup-stage)."""
        out: dict[str, Any] = {}
        info = self.info
        try:
            if info.log_bin:
                if info.flavor == "mariadb" and info.numeric >= (10, 5, 2):
                    sql = "SHOW BINLOG STATUS"
                elif info.flavor == "mysql" and info.numeric >= (8, 2, 0):
                    sql = "SHOW BINARY LOG STATUS"
                else:
                    sql = "SHOW MASTER STATUS"
                rows = mc.query_dicts(self.conn, sql)
                if rows:
                    out["binlog"] = {"file": rows[0].get("File"), "position": int(rows[0].get("Position") or 0),
                                     "exact": self.method != "lock-instance"}
            var = "@@gtid_binlog_pos" if info.flavor == "mariadb" else "@@gtid_executed"
            out["gtid"] = mc.query(self.conn, f"SELECT {var}")[0][0] or ""
        except Exception as e:  # noqa: BLE001 - positions are information, not the lock
            out["positions_error"] = str(e)
        return out

    def verify(self) -> None:
        try:
            now = mc.query(self.conn, "SELECT CONNECTION_ID()")[0][0] if self.conn is not None else None
        except Exception as e:  # noqa: BLE001 - any failure means the session (and lock) may be gone
            raise QuiesceFailed(f"mysql: the locking session was lost before the snapshot ended: {e}") from None
        if now != self.rec.get("connection_id"):
            raise QuiesceFailed(f"mysql: the locking session changed ({self.rec.get('connection_id')} -> {now}); "
                                "the lock was lost before the snapshot ended")

    def release(self) -> dict[str, Any]:
        if self._release_sql and self.conn is not None:
            for sql in self._release_sql:
                try:
                    with self.conn.cursor() as cur:
                        cur.execute(sql)
                except Exception as e:  # noqa: BLE001 - closing the session below releases it anyway
                    log.warning("mysql: %s failed (%s); closing the session releases the lock", sql, e)
            self.rec["released_at"] = _utc(time.time())
            self._release_sql = []
        self._close()
        return dict(self.rec)

    def _close(self) -> None:
        for attr in ("conn", "control"):
            c = getattr(self, attr)
            if c is not None:
                try:
                    c.close()
                except Exception:  # noqa: BLE001
                    pass
                setattr(self, attr, None)

    # -- restore side ---------------------------------------------------------------------------
    @classmethod
    def prepare_restore(cls, record: dict[str, Any], locate: Locate, ctx: RestoreContext) -> Handover | None:
        from snapagent.quiesce.mysql.restore import prepare_restore

        return prepare_restore(record, locate, ctx)

    @classmethod
    def drill(cls, record: dict[str, Any], locate: Locate, ctx: RestoreContext) -> list[ProbeResult]:
        from snapagent.quiesce.mysql.drill import drill

        return drill(record, locate, ctx)

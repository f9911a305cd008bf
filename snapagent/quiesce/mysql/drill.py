"""``drill`` of a restored MySQL/MariaDB datadir: start a throwaway server on it (socket in a
private temp dir, ``--skip-networking``, ``--no-defaults`` so no live my.cnf applies), let InnoDB
crash recovery run, ``CHECK TABLE`` every table, count rows, shut it down.

The temp dir, the bind mount that shows a private copy to its owner, and the server are taken
through the drill's ``Held``: journaled first, given back when the probe ends — or by
``snapagent cleanup`` after a kill.
"""

from __future__ import annotations

import os
import pwd
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

from snapagent.errors import CommandFailed, NotFound
from snapagent.plugin.quiescer import Locate, ProbeResult, RestoreContext
from snapagent.quiesce.mysql import connection as mc
from snapagent.quiesce.mysql.restore import server_argv
from snapagent.util.runner import format_argv

START_TIMEOUT = 300.0
SKIP_SCHEMAS = ("information_schema", "performance_schema")
USER_SKIP = ("mysql", "sys", "information_schema", "performance_schema")


def _run_as(datadir: Path) -> str:
    """Return the datadir's owner when it can reach the datadir (every parent searchable), else root."""
    st = datadir.stat()
    try:
        pw = pwd.getpwuid(st.st_uid)
    except KeyError:
        return "root"
    if pw.pw_uid == 0:
        return "root"
    groups = {pw.pw_gid} | {g.gr_gid for g in __import__("grp").getgrall() if pw.pw_name in g.gr_mem}
    for parent in datadir.parents:
        ps = parent.stat()
        mode = stat.S_IMODE(ps.st_mode)
        if not (mode & stat.S_IXOTH or (ps.st_uid == pw.pw_uid and mode & stat.S_IXUSR)
                or (ps.st_gid in groups and mode & stat.S_IXGRP)):
            return "root"
    return pw.pw_name


def _error_lines(errlog: Path) -> tuple[list[str], list[str]]:
    try:
        text = errlog.read_text(errors="replace").splitlines()
    except OSError:
        return [], []
    recovery = [ln for ln in text if "recover" in ln.lower()]
    errors = [ln for ln in text if "[ERROR]" in ln]
    return recovery[-10:], errors[-10:]


def _wait_ready(proc, sock: str, deadline: float):
    import pymysql

    while time.monotonic() < deadline:
        if proc.proc is not None and proc.proc.poll() is not None:
            return None
        if os.path.exists(sock):
            try:
                return pymysql.connect(unix_socket=sock, user="root", autocommit=True, connect_timeout=5)
            except pymysql.MySQLError:
                pass
        time.sleep(0.2)
    return None


def _check_all(conn) -> tuple[int, list[str], dict[str, int]]:
    tables = mc.query(conn, "SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES WHERE TABLE_TYPE = 'BASE TABLE' "
                            "AND TABLE_SCHEMA NOT IN (%s, %s) ORDER BY 1, 2", SKIP_SCHEMAS)
    failed, rows = [], {}
    for schema, name in tables:
        ident = f"{mc.quote_ident(schema)}.{mc.quote_ident(name)}"
        for r in mc.query_dicts(conn, f"CHECK TABLE {ident}"):
            kind, text = str(r.get("Msg_type", "")).lower(), str(r.get("Msg_text", ""))
            if kind == "error" or (kind == "status" and text not in ("OK", "Table is already up to date")):
                failed.append(f"{schema}.{name}: {text}")
        if schema not in USER_SKIP:
            rows[f"{schema}.{name}"] = mc.query(conn, f"SELECT COUNT(*) FROM {ident}")[0][0]
    return len(tables), failed, rows


def drill(record: dict[str, Any], locate: Locate, ctx: RestoreContext) -> list[ProbeResult]:
    """Start a throwaway server on the restored datadir, check every table, count rows, stop it.

    Returns probes "mysql recovery" (server started, crash recovery done; seconds, log lines) and
    "mysql check" (tables checked, failures, row counts). Never raises for a failed probe.
    """
    held = ctx.held
    name = f"mysql {record.get('datadir')}"
    try:
        datadir = locate(record["datadir"])
    except (NotFound, KeyError) as e:
        return [ProbeResult(f"{name} recovery", False, message=f"restored datadir missing: {e}")]
    user = _run_as(datadir)
    tmp = held.tempdir("snapagent-mysql-")  # short: socket paths are limited to 107 bytes
    sock, pid, errlog = str(tmp / "mysqld.sock"), str(tmp / "mysqld.pid"), tmp / "error.log"
    probes: list[ProbeResult] = []
    started_server = mounted = None
    try:
        owner = _owner(datadir)
        if user == "root" and owner not in (None, "root") and os.geteuid() == 0 and _all_in_datadir(record):
            # the scratch copy's parents are private (0700): show the datadir to its owner through a
            # bind mount in our own temp dir, so the server runs as that user, not as root
            mounted = tmp / "datadir"
            mounted.mkdir()
            held.bind_mount(datadir, mounted)
            user, real_locate = owner, locate
            locate = lambda live: mounted / os.path.relpath(real_locate(live), datadir)  # noqa: E731
        pw = pwd.getpwnam(user)
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        argv = server_argv(record, locate, sock, pid, str(errlog), user)
        t0 = time.monotonic()
        proc = started_server = held.start(argv, marker=str(tmp), stop_signal=signal.SIGTERM, stop_timeout=120,
                                           stdout=subprocess.DEVNULL)
        conn = _wait_ready(proc, sock, time.monotonic() + START_TIMEOUT)
        started = round(time.monotonic() - t0, 3)
        recovery, errors = _error_lines(errlog)
        if conn is None:
            return [ProbeResult(f"{name} recovery", False, {"seconds": started, "errors": errors, "log": recovery,
                                                             "argv": format_argv(argv)},
                                "the server did not start on the restored datadir")]
        try:
            gtid = mc.query(conn, "SELECT @@gtid_binlog_pos" if record.get("flavor") == "mariadb"
                            else "SELECT @@gtid_executed")[0][0]
            probes.append(ProbeResult(f"{name} recovery", True, {"seconds": started, "run_as": user, "log": recovery,
                                                                  "gtid": gtid, "recorded_gtid": record.get("gtid")},
                                      f"server started and recovered in {started:.1f}s"))
            t1 = time.monotonic()
            checked, failed, rows = _check_all(conn)
            probes.append(ProbeResult(f"{name} check", not failed,
                                      {"tables_checked": checked, "failed": failed[:20], "rows": rows,
                                       "seconds": round(time.monotonic() - t1, 3)},
                                      f"CHECK TABLE: {checked} tables, {len(failed)} failed"))
            mc.query(conn, "SHUTDOWN")
        finally:
            conn.close()
        proc.wait(timeout=120)
    except CommandFailed as e:
        probes.append(ProbeResult(f"{name} server", False, {"errors": _error_lines(errlog)[1]}, str(e)))
    except Exception as e:  # noqa: BLE001 - a failing probe is a result, not a crash of the drill
        probes.append(ProbeResult(f"{name} check", False, {"errors": _error_lines(errlog)[1]}, f"drill failed: {e}"))
    finally:
        if started_server is not None:
            held.release("process", str(tmp))
        if mounted is not None:
            held.release("mount", str(mounted))
        held.release("dir", str(tmp))
    return probes


def _owner(path: Path) -> str | None:
    try:
        return pwd.getpwuid(path.stat().st_uid).pw_name
    except KeyError:
        return None


def _all_in_datadir(record: dict[str, Any]) -> bool:
    d = os.path.normpath(record["datadir"])
    return all(os.path.normpath(f) == d or os.path.normpath(f).startswith(d + "/") for f in record.get("files", [d]))

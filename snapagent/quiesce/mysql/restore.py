"""Restore side of the mysql quiescer: make a restored datadir startable, and the drill.

``prepare_restore`` removes the live server's pid file and sockets from the restored datadir and
repoints the binlog index at the restored binlogs (left as they are, its absolute paths name the
*live* server's binlog files). ``drill`` starts a throwaway server on the restored datadir (socket
in a private temp dir, ``--skip-networking``, ``--skip-grant-tables``, ``--no-defaults`` so no live
my.cnf applies), lets InnoDB crash recovery run, runs ``CHECK TABLE`` on every table, counts rows,
and shuts it down.
"""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from snapagent.errors import CommandFailed, NotFound
from snapagent.util.runner import Runner, format_argv
from . import connection as mc
from snapagent.plugin.quiescer import ProbeResult

START_TIMEOUT = 300.0
SKIP_SCHEMAS = ("information_schema", "performance_schema")
USER_SKIP = ("mysql", "sys", "information_schema", "performance_schema")


def restored_path(record: dict[str, Any], locate: Callable[[str], Path], live: str | None) -> Path | None:
    """Return where live path ``live`` is in the restore: a recorded file, or a path inside one."""
    if not live:
        return None
    live = os.path.normpath(live)
    try:
        return locate(live)
    except NotFound:
        pass
    for f in sorted(record.get("files", []), key=len, reverse=True):
        if live.startswith(f.rstrip("/") + "/"):
            return locate(f) / os.path.relpath(live, f)
    return None


def _binlog_dir(record: dict[str, Any]) -> str | None:
    base = (record.get("server") or {}).get("log_bin_basename")
    return os.path.dirname(os.path.normpath(base)) if base and _on(record) else None


def _on(record: dict[str, Any]) -> bool:
    return str((record.get("server") or {}).get("log_bin", "0")).upper() in ("1", "ON")


def prepare_restore(record: dict[str, Any], locate: Callable[[str], Path]) -> dict[str, Any]:
    """Remove stale pid file/sockets and repoint the binlog index in the restored datadir; return
    notes for the user (where the datadir is, how to start a server on it)."""
    server = record.get("server") or {}
    datadir = locate(record["datadir"])
    removed = []
    pid = restored_path(record, locate, server.get("pid_file"))
    if pid is not None and (pid.is_file() or pid.is_symlink()):
        pid.unlink()
        removed.append(str(pid))
    for child in datadir.iterdir():
        if stat.S_ISSOCK(child.lstat().st_mode) or child.name.endswith(".sock.lock"):
            child.unlink()
            removed.append(str(child))
    notes: dict[str, Any] = {"datadir": str(datadir), "removed": removed}
    index_live = server.get("log_bin_index")
    index = restored_path(record, locate, index_live)
    if _on(record) and index is not None and index.is_file():
        notes["binlog_index"] = _repoint_index(index, Path(record["datadir"]), _binlog_dir(record), record, locate,
                                               datadir)
    notes["start"] = format_argv(server_argv(record, locate, "/tmp/restored-mysql.sock", "/tmp/restored-mysql.pid",
                                             "/tmp/restored-mysql.err", "mysql"))
    return notes


def _repoint_index(index: Path, live_datadir: Path, live_dir: str | None, record, locate, datadir: Path) -> int:
    """Rewrite binlog index entries that point into the live binlog directory; return how many.
    Binlogs inside the restored datadir become ``./name`` (the server reads them relative to its
    datadir, so the copy can be moved); others get their absolute restored path."""
    lines = index.read_text().splitlines()
    out, changed = [], 0
    for line in lines:
        p = line.strip()
        if p:
            live = os.path.normpath(p if os.path.isabs(p) else live_datadir / p)
            new = restored_path(record, locate, live) if live_dir and os.path.dirname(live) == live_dir else None
            if new is not None:
                rel = os.path.relpath(new, datadir)
                p = f"./{rel}" if not rel.startswith("..") else str(new)
                changed += 1
        out.append(p)
    tmp = index.with_name(index.name + ".snapagent-tmp")
    tmp.write_text("\n".join(out) + ("\n" if out else ""))
    st = index.stat()
    os.chown(tmp, st.st_uid, st.st_gid)
    os.chmod(tmp, stat.S_IMODE(st.st_mode))
    os.replace(tmp, index)
    return changed


def server_argv(record: dict[str, Any], locate: Callable[[str], Path], sock: str, pid: str, errlog: str,
                user: str) -> list[str]:
    """Return the argv of a server on the restored datadir: no my.cnf, no network, no replication
    start, no event scheduler, the InnoDB layout settings the live server had."""
    server = record.get("server") or {}
    flavor = record.get("flavor", "mariadb")
    live_datadir = Path(record["datadir"])
    argv = ["mariadbd" if flavor == "mariadb" else "mysqld", "--no-defaults",
            f"--datadir={locate(record['datadir'])}", f"--socket={sock}", f"--pid-file={pid}",
            "--skip-networking", f"--user={user}", f"--log-error={errlog}", "--event-scheduler=OFF",
            "--skip-replica-start" if flavor == "mysql" and _numeric(record.get("version", "")) >= (8, 0, 26)
            else "--skip-slave-start"]
    for name, value in sorted(server.items()):
        if value in (None, "") or name not in ("innodb_page_size", "innodb_data_file_path", "innodb_undo_tablespaces",
                                                "lower_case_table_names", "innodb_log_file_size", "server_id"):
            continue
        argv.append(f"--{name.replace('_', '-')}={value}")
    for name in ("innodb_data_home_dir", "innodb_log_group_home_dir", "innodb_undo_directory", "aria_log_dir_path"):
        live = server.get(name)
        if not live:
            continue
        p = Path(live) if os.path.isabs(live) else live_datadir / live
        new = restored_path(record, locate, str(p))
        if new is not None:
            argv.append(f"--{name.replace('_', '-')}={new}/")
    if _on(record) and server.get("log_bin_basename"):
        base = restored_path(record, locate, server["log_bin_basename"])
        if base is not None:
            argv.append(f"--log-bin={base}")
            index = restored_path(record, locate, server.get("log_bin_index"))
            if index is not None:
                argv.append(f"--log-bin-index={index}")
    else:
        argv.append("--skip-log-bin")
    return argv


def _numeric(version: str) -> tuple[int, ...]:
    parts = []
    for p in version.split("-")[0].split(".")[:3]:
        parts.append(int("".join(ch for ch in p if ch.isdigit()) or 0))
    return tuple(parts)


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


def drill(record: dict[str, Any], locate: Callable[[str], Path], runner: Runner | None = None) -> list[ProbeResult]:
    """Start a throwaway server on the restored datadir, check every table, count rows, stop it.

    Returns probes "mysql recovery" (server started, crash recovery done; seconds, log lines) and
    "mysql check" (tables checked, failures, row counts). Never raises for a failed probe.
    """
    runner = runner or Runner()
    name = f"mysql {record.get('datadir')}"
    try:
        datadir = locate(record["datadir"])
    except (NotFound, KeyError) as e:
        return [ProbeResult(f"{name} recovery", False, message=f"restored datadir missing: {e}")]
    user = _run_as(datadir)
    tmp = Path(tempfile.mkdtemp(prefix="snapagent-mysql-"))  # short: socket paths are limited to 107 bytes
    sock, pid, errlog = str(tmp / "mysqld.sock"), str(tmp / "mysqld.pid"), tmp / "error.log"
    probes: list[ProbeResult] = []
    proc = None
    mounted = None
    try:
        owner = _owner(datadir)
        if user == "root" and owner not in (None, "root") and os.geteuid() == 0 and _all_in_datadir(record):
            # the scratch copy's parents are private (0700): show the datadir to its owner through a
            # bind mount in our own temp dir, so the server runs as that user, not as root
            mounted = tmp / "datadir"
            mounted.mkdir()
            runner.run(["mount", "--bind", "--", str(datadir), str(mounted)], mutating=True, timeout=30)
            user, real_locate = owner, locate
            locate = lambda live: mounted / os.path.relpath(real_locate(live), datadir)  # noqa: E731
        pw = pwd.getpwnam(user)
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        argv = server_argv(record, locate, sock, pid, str(errlog), user)
        t0 = time.monotonic()
        proc = runner.stream(argv, mutating=True, stdout=subprocess.DEVNULL)
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
        if proc is not None:
            proc.kill()
        if mounted is not None:
            try:
                runner.run(["umount", "--", str(mounted)], mutating=True, timeout=60)
            except CommandFailed:
                runner.run(["umount", "-l", "--", str(mounted)], mutating=True, timeout=60, ok_codes=(0, 32))
        if mounted is None or not os.path.ismount(mounted):
            shutil.rmtree(tmp, ignore_errors=True)
    return probes


def _owner(path: Path) -> str | None:
    try:
        return pwd.getpwuid(path.stat().st_uid).pw_name
    except KeyError:
        return None


def _all_in_datadir(record: dict[str, Any]) -> bool:
    d = os.path.normpath(record["datadir"])
    return all(os.path.normpath(f) == d or os.path.normpath(f).startswith(d + "/") for f in record.get("files", [d]))

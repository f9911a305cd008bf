"""Restore side of the mysql quiescer: make a restored datadir start as it is.

``prepare_restore`` removes the live server's pid file and sockets from the restored datadir,
repoints the binlog index at the restored binlogs (left as they are, its absolute paths name the
*live* server's binlog files) and hands the copy over: the files to the server's user, a way
through DEST for it, a free port and a private socket. ``server_argv`` is how a server is started
on the copy (by the drill, and in the hand-over).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Callable

from snapagent.errors import NotFound, OperationFailed
from snapagent.plugin.handover import claim, free_port, reach, resolve_owner, run_dir
from snapagent.plugin.quiescer import Handover, RestoreContext


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
            root = locate(f)
            p = root / os.path.relpath(live, f)
            # the restored tree is as untrusted as the record: never follow a symlink out of it
            parent, real_root = os.path.realpath(p.parent), os.path.realpath(root)
            return p if parent == real_root or parent.startswith(real_root.rstrip("/") + "/") else None
    return None


def _binlog_dir(record: dict[str, Any]) -> str | None:
    base = (record.get("server") or {}).get("log_bin_basename")
    return os.path.dirname(os.path.normpath(base)) if base and _on(record) else None


def _on(record: dict[str, Any]) -> bool:
    return str((record.get("server") or {}).get("log_bin", "0")).upper() in ("1", "ON")


def prepare_restore(record: dict[str, Any], locate: Callable[[str], Path], ctx: RestoreContext) -> Handover:
    """Remove stale pid file/sockets, repoint the binlog index, give the restored files to the
    server's user (the live datadir's owner, else ``mysql``) and let it through DEST; return the
    hand-over: a server on a free port of 127.0.0.1 with its socket, pid file and error log in a
    private run directory. Raises OperationFailed when that user does not exist here."""
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
    details: dict[str, Any] = {"removed": removed}
    index_live = server.get("log_bin_index")
    index = restored_path(record, locate, index_live)
    if _on(record) and index is not None and index.is_file():
        details["binlog_index"] = _repoint_index(index, Path(record["datadir"]), _binlog_dir(record), record, locate,
                                                 datadir)
    try:
        user, uid, gid = resolve_owner(record.get("owner"), datadir, "mysql")
    except KeyError:
        raise OperationFailed("the restored datadir's owner (the live datadir's, else user mysql) does not exist "
                              "on this host; create the user and restore again") from None
    places = list(dict.fromkeys(locate(f) for f in record.get("files", [record["datadir"]])))
    for d in places:
        details.setdefault("owner_changed", 0)
        details["owner_changed"] += claim(d, uid, gid)
    notes = reach(ctx, places, uid, gid)
    run = run_dir(ctx, "mysql", uid, gid, "mysqld.sock.lock")
    sock = str(run / "mysqld.sock")
    port = free_port(PORT_FROM, avoid=(3306, 3307))
    argv = server_argv(record, locate, sock, str(run / "mysqld.pid"), str(run / "error.log"), user, port=port)
    argv[0] = ctx.runner.which(argv[0]) or argv[0]
    mariadb = record.get("flavor", "mariadb") == "mariadb"
    notes.append(f"the server runs in the foreground (add & or use another terminal); its log: {run / 'error.log'}; "
                 "no my.cnf applies (--no-defaults), replication and events stay off")
    return Handover(kind="mysql", data_dir=str(datadir), owner=user, port=port, socket=sock, start=argv,
                    check=["mariadb-check" if mariadb else "mysqlcheck", f"--socket={sock}", "--all-databases"],
                    stop=["mariadb-admin" if mariadb else "mysqladmin", f"--socket={sock}", "shutdown"],
                    put_in_place=PUT_IN_PLACE, files=[str(p) for p in places if p != datadir], notes=notes,
                    details=details)


PORT_FROM = 3340  # 3306 is the default, 3307 a common second instance
PUT_IN_PLACE = "docs/databases.md#put-a-restored-mysql-or-mariadb-datadir-in-place"


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
                user: str, port: int | None = None) -> list[str]:
    """Return the argv of a server on the restored datadir: no my.cnf, no network (with ``port``:
    that port on 127.0.0.1 only), no replication start, no event scheduler, the InnoDB layout
    settings the live server had."""
    server = record.get("server") or {}
    flavor = record.get("flavor", "mariadb")
    live_datadir = Path(record["datadir"])
    argv = ["mariadbd" if flavor == "mariadb" else "mysqld", "--no-defaults",
            f"--datadir={locate(record['datadir'])}", f"--socket={sock}", f"--pid-file={pid}",
            *(["--skip-networking"] if port is None else [f"--port={port}", "--bind-address=127.0.0.1"]),
            f"--user={user}", f"--log-error={errlog}", "--event-scheduler=OFF",
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
            # inside the datadir: relative names, so the binlogs the copy writes are indexed as
            # ./name and the copy can be moved into the live server's place
            datadir = locate(record["datadir"])
            argv.append(f"--log-bin={base.name if base.parent == datadir else base}")
            index = restored_path(record, locate, server.get("log_bin_index"))
            if index is not None:
                argv.append(f"--log-bin-index={index.name if index.parent == datadir else index}")
    else:
        argv.append("--skip-log-bin")
    return argv


def _numeric(version: str) -> tuple[int, ...]:
    parts = []
    for p in version.split("-")[0].split(".")[:3]:
        parts.append(int("".join(ch for ch in p if ch.isdigit()) or 0))
    return tuple(parts)

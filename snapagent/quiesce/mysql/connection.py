"""Connecting to MySQL/MariaDB for the mysql quiescer: option files, connection settings, server facts.

The password comes only from an option file (``[client]``, ``[client-server]``, ``[client-mariadb]``
groups, later groups win) that must not be readable by group or others; it is handed to PyMySQL in
memory and never logged, put in argv or recorded.
"""

from __future__ import annotations

import configparser
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from snapagent.errors import ConfigError, PreflightFailed
from snapagent.util import sqllog

GROUPS = ("client", "client-server", "client-mariadb")
KEYS = ("user", "password", "socket", "host", "port")


def read_option_file(path: Path) -> dict[str, str]:
    """Given a MySQL option file, return its client settings (user, password, socket, host, port).

    ``!include``/``!includedir`` lines are ignored; values may be quoted. Raises ConfigError when the
    file cannot be read or parsed, or holds a password while readable by group/others.
    """
    try:
        st = os.stat(path)
        with open(path, encoding="utf-8") as f:
            lines = [ln for ln in f if not ln.lstrip().startswith("!")]
    except OSError as e:
        raise ConfigError(f"mysql option_file {path}: cannot read it: {e.strerror}") from None
    parser = configparser.RawConfigParser(allow_no_value=True, strict=False, interpolation=None,
                                          comment_prefixes=("#", ";"), inline_comment_prefixes=None)
    try:
        parser.read_string("".join(lines), source=str(path))
    except configparser.Error as e:
        raise ConfigError(f"mysql option_file {path}: cannot parse it: {e}") from None
    out: dict[str, str] = {}
    for group in GROUPS:
        if not parser.has_section(group):
            continue
        for key, value in parser.items(group):
            key = key.replace("_", "-").strip()
            if key in KEYS and value is not None:
                value = value.strip()
                if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                    value = value[1:-1]
                out[key] = value
    if out.get("password") and stat.S_IMODE(st.st_mode) & 0o077:
        raise ConfigError(f"mysql option_file {path}: holds a password but is readable by group/others "
                          f"(mode {stat.S_IMODE(st.st_mode):04o}); chmod 600 it")
    return out


@dataclass
class ConnectParams:
    """Where and as whom to connect; ``password`` is never shown by ``describe()`` or repr."""

    socket: str | None = None
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = None

    def __repr__(self) -> str:
        return f"ConnectParams({self.describe()})"

    def describe(self) -> str:
        """Return where we connect, for messages (never the password)."""
        where = f"socket {self.socket}" if self.socket else f"{self.host or 'localhost'}:{self.port or 3306}"
        return f"{self.user or '(current user)'}@{where}"


def params_for(cfg: Any) -> ConnectParams:
    """Given a MysqlConfig, return the ConnectParams: option file values, overridden by explicit keys."""
    opts = read_option_file(cfg.option_file) if cfg.option_file else {}
    port = cfg.port or (int(opts["port"]) if opts.get("port", "").isdigit() else None)
    socket = str(cfg.socket) if cfg.socket else opts.get("socket")
    host = cfg.host or opts.get("host")
    if cfg.host or cfg.port:  # an explicit TCP address wins over a socket from the option file
        socket = str(cfg.socket) if cfg.socket else None
    return ConnectParams(socket=socket, host=host, port=port, user=cfg.user or opts.get("user"),
                         password=opts.get("password"))


def connect(params: ConnectParams, timeout: float, read_timeout: float | None = None):
    """Open a PyMySQL connection in autocommit mode (no auto-reconnect: PyMySQL never reconnects
    unless asked); raise PreflightFailed naming where it tried (never the password)."""
    try:
        import pymysql
    except ImportError:
        raise PreflightFailed("the mysql quiescer needs PyMySQL (pip install 'snapagent[mysql]')") from None
    kwargs: dict[str, Any] = {"user": params.user or "root", "password": params.password or "",
                              "connect_timeout": max(timeout, 0.5), "autocommit": True,
                              "read_timeout": read_timeout, "write_timeout": read_timeout,
                              "charset": "utf8mb4", "program_name": "snapagent",
                              "cursorclass": sqllog.pymysql_cursor("mysql")}
    if params.socket:
        kwargs["unix_socket"] = params.socket
    else:
        kwargs["host"] = params.host or "localhost"
        kwargs["port"] = params.port or 3306
    try:
        return pymysql.connect(**kwargs)
    except pymysql.MySQLError as e:
        raise PreflightFailed(f"mysql: cannot connect as {params.describe()}: {_msg(e)}") from None


def _msg(e: Exception) -> str:
    args = getattr(e, "args", ())
    if len(args) >= 2:
        return f"{args[1]} (error {args[0]})"
    return str(e)


def error_text(e: Exception) -> str:
    """Return a one-line text for a PyMySQL error: message and error code."""
    return _msg(e)


def query(conn, sql: str, args: Any = None) -> list[tuple]:
    """Run ``sql`` on ``conn`` and return all rows (tuples)."""
    with conn.cursor() as cur:
        cur.execute(sql, args)
        return list(cur.fetchall() or [])


def query_dicts(conn, sql: str, args: Any = None) -> list[dict[str, Any]]:
    """Run ``sql`` and return the rows as dicts keyed by column name."""
    with conn.cursor() as cur:
        cur.execute(sql, args)
        cols = [d[0] for d in cur.description or []]
        return [dict(zip(cols, row)) for row in cur.fetchall() or []]


def quote_ident(name: str) -> str:
    """Return ``name`` as a backquoted MySQL identifier."""
    return "`" + name.replace("`", "``") + "`"


_GLOBAL_GRANT = re.compile(r"^GRANT (.+?) ON \*\.\* TO ", re.I)
_ROLE_GRANT = re.compile(r"^GRANT [^ ]+ TO ", re.I)  # GRANT `role` TO … (no ON): privileges held through a role


def global_privileges(conn) -> tuple[set[str], bool]:
    """Return the global (``ON *.*``) privileges ``SHOW GRANTS`` lists for the session's account,
    upper case (``"ALL PRIVILEGES"`` when granted so), and whether the account holds roles (whose
    privileges that list may not show)."""
    out: set[str] = set()
    roles = False
    for (line,) in query(conn, "SHOW GRANTS"):
        if m := _GLOBAL_GRANT.match(str(line)):
            out.update(p.strip().upper() for p in m.group(1).split(","))
        elif " ON " not in str(line).upper() and _ROLE_GRANT.match(str(line)):
            roles = True
    return out, roles


def current_account(conn) -> str:
    """Return the session's account as ``'user'@'host'`` (``CURRENT_USER()``), for a GRANT statement."""
    user, _, host = str(query(conn, "SELECT CURRENT_USER()")[0][0]).rpartition("@")
    return f"'{user}'@'{host}'"


@dataclass
class ServerInfo:
    """What the quiescer needs to know about the server (read once, no locks)."""

    version: str
    flavor: str  # "mariadb" | "mysql"
    numeric: tuple[int, int, int]
    variables: dict[str, Any]

    @property
    def log_bin(self) -> bool:
        return str(self.variables.get("log_bin", "0")).upper() in ("1", "ON")


# Read for topology, the record and the drill (settings a restored datadir must start with).
VARIABLES = ("datadir", "innodb_log_group_home_dir", "innodb_undo_directory", "innodb_data_home_dir",
             "log_bin", "log_bin_basename", "log_bin_index", "pid_file", "aria_log_dir_path",
             "innodb_page_size", "innodb_data_file_path", "innodb_undo_tablespaces",
             "lower_case_table_names", "innodb_log_file_size", "server_id", "socket")


def server_info(conn) -> ServerInfo:
    """Return the ServerInfo of the server behind ``conn`` (absent variables are None)."""
    version, comment = query(conn, "SELECT VERSION(), @@version_comment")[0]
    flavor = "mariadb" if "mariadb" in f"{version} {comment}".lower() else "mysql"
    parts = []
    for p in version.split("-")[0].split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    numeric = tuple((parts + [0, 0, 0])[:3])
    rows = query(conn, "SHOW GLOBAL VARIABLES WHERE Variable_name IN (" + ", ".join(["%s"] * len(VARIABLES)) + ")",
                 VARIABLES)
    variables: dict[str, Any] = {k: None for k in VARIABLES}
    variables.update({name.lower(): value for name, value in rows})
    return ServerInfo(version, flavor, numeric, variables)  # type: ignore[arg-type]

"""Every statement a quiescer sends to its database, logged through this one place: DEBUG on
``snapagent.sql`` (shown with ``-vv``) as ``sql DB: STATEMENT`` on one line, its parameters
after ``--``.

Statements carry no secrets (passwords reach the drivers as connection parameters or files,
never as SQL); parameters are shown as they are bound. Nothing is formatted unless DEBUG is on.
Inside the freeze window a shown statement costs one write to stderr (tens of microseconds).

- ``statement(db, sql, params)`` for call sites that execute through a driver without hooks
  (sqlite3: its trace callback would fire once per retry of a busy lock);
- ``psycopg_cursor(db)`` / ``pymysql_cursor(db)``: a cursor class for the connection
  (``cursor_factory=`` / ``cursorclass=``) that logs every ``execute`` made through it,
  ``conn.execute`` included.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("snapagent.sql")


def statement(db: str, sql: Any, params: Any = None) -> None:
    """Log ``sql`` (sent to ``db``, e.g. ``"postgresql"``) with its bound ``params``, if any."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    text = " ".join(str(sql).split())
    log.debug("sql %s: %s%s", db, text, f" -- {params!r}" if params else "")


def psycopg_cursor(db: str) -> type:
    """Return a psycopg Cursor class that logs each statement it executes as sent to ``db``."""
    import psycopg

    class LoggingCursor(psycopg.Cursor):
        def execute(self, query, params=None, **kw):  # noqa: ANN001 - psycopg's own signature
            statement(db, query.as_string(self) if hasattr(query, "as_string") else query, params)
            return super().execute(query, params, **kw)

    return LoggingCursor


def pymysql_cursor(db: str) -> type:
    """Return a PyMySQL Cursor class that logs each statement it executes as sent to ``db``."""
    import pymysql.cursors

    class LoggingCursor(pymysql.cursors.Cursor):
        def execute(self, query, args=None):  # noqa: ANN001 - PyMySQL's own signature
            statement(db, query, args)
            return super().execute(query, args)

    return LoggingCursor

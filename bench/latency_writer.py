#!/usr/bin/env python3
"""A paced SQLite writer that records each commit's latency (the benchmark's application).

    python bench/latency_writer.py DB OUT [PACE]
    python bench/latency_writer.py --pg DSN OUT [PACE]     # PostgreSQL (psycopg, autocommit)

Commits one row per transaction (``BEGIN IMMEDIATE`` … ``COMMIT``, WAL mode, busy_timeout 60 s:
an application that waits for the lock rather than failing), sleeping PACE seconds (default 0.002)
between commits, until SIGTERM; then writes ``<start> <latency>`` per commit to OUT (Unix time of
the ``BEGIN``, seconds from ``BEGIN`` to the end of ``COMMIT``). Latencies are kept in memory so
recording them costs the writer nothing while it runs.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import time


def _sqlite(db: str):
    """Return commit(wall): one SQLite transaction on ``db``."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=60)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, at REAL, payload BLOB)")

    def commit(wall: float) -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (at, payload) VALUES (?, ?)", (wall, os.urandom(200)))
        conn.execute("COMMIT")
    return commit


def _pg(dsn: str):
    """Return commit(wall): one autocommitted PostgreSQL INSERT through ``dsn``."""
    import psycopg

    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("CREATE TABLE IF NOT EXISTS t (id bigserial PRIMARY KEY, at double precision, payload bytea)")
    return lambda wall: conn.execute("INSERT INTO t (at, payload) VALUES (%s, %s)", (wall, os.urandom(200)))


def main(db: str, out: str, pace: float = 0.002, pg: bool = False) -> None:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    commit = _pg(db) if pg else _sqlite(db)
    starts: list[float] = []
    lats: list[float] = []
    with open(out + ".ready", "w"):
        pass
    while not stop:
        wall, t = time.time(), time.perf_counter()
        commit(wall)
        lats.append(time.perf_counter() - t)
        starts.append(wall)
        time.sleep(pace)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(f"{s:.6f} {lat:.6f}\n" for s, lat in zip(starts, lats))
    os.replace(tmp, out)


if __name__ == "__main__":
    args = sys.argv[1:]
    pg = args[:1] == ["--pg"]
    args = args[1:] if pg else args
    main(args[0], args[1], float(args[2]) if len(args) > 2 else 0.002, pg)

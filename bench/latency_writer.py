#!/usr/bin/env python3
"""A paced SQLite writer that records each commit's latency (the benchmark's application).

    python bench/latency_writer.py DB OUT [PACE]

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


def main(db: str, out: str, pace: float = 0.002) -> None:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    conn = sqlite3.connect(db, isolation_level=None, timeout=60)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, at REAL, payload BLOB)")
    starts: list[float] = []
    lats: list[float] = []
    with open(out + ".ready", "w"):
        pass
    while not stop:
        wall, t = time.time(), time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO t (at, payload) VALUES (?, ?)", (wall, os.urandom(200)))
        conn.execute("COMMIT")
        lats.append(time.perf_counter() - t)
        starts.append(wall)
        time.sleep(pace)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(f"{s:.6f} {lat:.6f}\n" for s, lat in zip(starts, lats))
    os.replace(tmp, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *([float(sys.argv[3])] if len(sys.argv) > 3 else []))

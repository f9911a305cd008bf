"""A continuous SQLite writer for hot-backup tests and the demo.

Run as ``python writer.py DB ACKFILE [PACE [JOURNAL_MODE]]``: creates table ``t`` (WAL mode by
default, or e.g. ``delete``), then commits one row per transaction forever, sleeping PACE seconds
between commits (default 0.002; 0: back to back); after each commit it appends
``<id> <time.time()>`` to ACKFILE (the acknowledgement log the tests compare the restored
database against).
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time


def main(db: str, ackfile: str, pace: float = 0.002, journal_mode: str = "wal", busy_ms: int = 60000) -> None:
    conn = sqlite3.connect(db, isolation_level=None, timeout=busy_ms / 1000)
    conn.execute(f"PRAGMA journal_mode={journal_mode}")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, at REAL, payload BLOB)")
    with open(ackfile, "a", buffering=1) as ack:
        while True:
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.execute("INSERT INTO t (at, payload) VALUES (?, ?)", (time.time(), os.urandom(200)))
            conn.execute("COMMIT")
            ack.write(f"{cur.lastrowid} {time.time():.6f}\n")
            if pace:
                time.sleep(pace)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *([float(sys.argv[3])] if len(sys.argv) > 3 else []), *sys.argv[4:5])

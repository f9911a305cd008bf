"""A continuous SQLite writer for hot-backup tests and the demo.

Run as ``python writer.py DB ACKFILE``: creates table ``t`` (WAL mode), then commits one row per
transaction forever; after each commit it appends ``<id> <time.time()>`` to ACKFILE (the
acknowledgement log the tests compare the restored database against).
"""

from __future__ import annotations

import os
import sqlite3
import sys
import time


def main(db: str, ackfile: str, busy_ms: int = 60000) -> None:
    conn = sqlite3.connect(db, isolation_level=None, timeout=busy_ms / 1000)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, at REAL, payload BLOB)")
    with open(ackfile, "a", buffering=1) as ack:
        while True:
            conn.execute("BEGIN IMMEDIATE")
            cur = conn.execute("INSERT INTO t (at, payload) VALUES (?, ?)", (time.time(), os.urandom(200)))
            conn.execute("COMMIT")
            ack.write(f"{cur.lastrowid} {time.time():.6f}\n")
            time.sleep(0.002)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

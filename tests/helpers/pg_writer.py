"""A continuous PostgreSQL writer for hot-backup tests.

Run as ``python pg_writer.py DSN ACKFILE``: creates table ``bank``, then commits one row per
transaction forever; after each acknowledged commit it appends ``<id> <time.time()>`` to ACKFILE.
"""

from __future__ import annotations

import os
import sys
import time

import psycopg


def main(dsn: str, ackfile: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bank (id bigserial PRIMARY KEY, at double precision, payload text)")
        with open(ackfile, "a", buffering=1) as ack:
            while True:
                row = conn.execute("INSERT INTO bank (at, payload) VALUES (%s, %s) RETURNING id",
                                   (time.time(), os.urandom(100).hex())).fetchone()
                ack.write(f"{row[0]} {time.time():.6f}\n")
                time.sleep(0.005)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

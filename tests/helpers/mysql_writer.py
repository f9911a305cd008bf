"""A continuous MySQL/MariaDB writer for hot-backup tests.

Run as ``python mysql_writer.py SOCKET ACKFILE [TABLE]``: creates ``app.<TABLE>`` (InnoDB), then
commits one row per transaction forever; after each commit it appends ``<id> <time.time()>`` to
ACKFILE (the acknowledgement log the tests compare the restored database against).
"""

from __future__ import annotations

import os
import sys
import time

import pymysql


def main(sock: str, ackfile: str, table: str = "t") -> None:
    conn = pymysql.connect(unix_socket=sock, user="root", autocommit=True)
    with conn.cursor() as cur:
        cur.execute("CREATE DATABASE IF NOT EXISTS app")
        cur.execute(f"CREATE TABLE IF NOT EXISTS app.`{table}` (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
                    "at DOUBLE NOT NULL, payload VARBINARY(200)) ENGINE=InnoDB")
    with open(ackfile, "a", buffering=1) as ack, conn.cursor() as cur:
        while True:
            cur.execute(f"INSERT INTO app.`{table}` (at, payload) VALUES (%s, %s)", (time.time(), os.urandom(100)))
            ack.write(f"{cur.lastrowid} {time.time():.6f}\n")
            time.sleep(0.003)


if __name__ == "__main__":
    main(*sys.argv[1:])

"""The torture suite's writer: bank transfers with a gap-free sequence, acknowledged durably.

``python bank.py KIND TARGET ACKFILE [PACE] [JOURNAL_MODE]`` — KIND is ``sqlite`` (TARGET a database
file; JOURNAL_MODE ``wal`` or ``delete``), ``postgresql`` (TARGET a libpq DSN) or ``mysql`` (TARGET
a unix socket). It creates ``accounts`` (ACCOUNTS accounts of START each) and ``seq``, then forever:
moves a random amount between two accounts and inserts the next sequence number **in the same
transaction**, commits, and appends ``<n> <time>`` to ACKFILE, fsynced — an acknowledged commit.
PACE seconds between transactions (0: back to back).

Invariants a restored copy must keep: the balances sum to ACCOUNTS * START; ``seq`` is 1..max
without a gap; every ``n`` acknowledged before the backup's lock is in it (``check.py``).
"""

from __future__ import annotations

import os
import random
import sys
import time

ACCOUNTS = 20
START = 1000
TOTAL = ACCOUNTS * START


class Bank:
    """One connection; ``setup()`` once, then ``transfer(n)`` commits transaction ``n``."""

    def __init__(self, kind: str, target: str, journal_mode: str = "wal"):
        self.kind = kind
        if kind == "sqlite":
            import sqlite3

            self.conn = sqlite3.connect(target, isolation_level=None, timeout=120)
            self.conn.execute(f"PRAGMA journal_mode={journal_mode}")
            self.ph = "?"
        elif kind == "postgresql":
            import psycopg

            self.conn = psycopg.connect(target)
            self.ph = "%s"
        elif kind == "mysql":
            import pymysql

            self.conn = pymysql.connect(unix_socket=target, user="root", autocommit=False, database=None)
            self.ph = "%s"
        else:
            raise SystemExit(f"unknown kind {kind!r}")

    def execute(self, sql: str, params: tuple = ()):
        if self.kind == "mysql":
            cur = self.conn.cursor()
            cur.execute(sql, params)
            return cur
        return self.conn.execute(sql, params)

    def begin(self) -> None:
        if self.kind == "sqlite":
            self.conn.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        if self.kind == "sqlite":
            self.conn.execute("COMMIT")
        else:
            self.conn.commit()

    def setup(self) -> int:
        """Create the tables (once); return the last sequence number (0 for a new bank)."""
        if self.kind == "mysql":
            self.execute("CREATE DATABASE IF NOT EXISTS bank")
            self.execute("USE bank")
            engine = " ENGINE=InnoDB"
        else:
            engine = ""
        self.begin()
        self.execute(f"CREATE TABLE IF NOT EXISTS accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL){engine}")
        self.execute(f"CREATE TABLE IF NOT EXISTS seq (n INTEGER PRIMARY KEY){engine}")
        if self.execute("SELECT count(*) FROM accounts").fetchone()[0] == 0:
            for i in range(1, ACCOUNTS + 1):
                self.execute(f"INSERT INTO accounts VALUES ({self.ph}, {self.ph})", (i, START))
        last = self.execute("SELECT coalesce(max(n), 0) FROM seq").fetchone()[0]
        self.commit()
        return int(last)

    def transfer(self, n: int) -> None:
        a, b = random.sample(range(1, ACCOUNTS + 1), 2)
        amount = random.randint(1, 50)
        self.begin()
        self.execute(f"UPDATE accounts SET balance = balance - {self.ph} WHERE id = {self.ph}", (amount, a))
        self.execute(f"UPDATE accounts SET balance = balance + {self.ph} WHERE id = {self.ph}", (amount, b))
        self.execute(f"INSERT INTO seq VALUES ({self.ph})", (n,))
        self.commit()


def main(kind: str, target: str, ackfile: str, pace: str = "0", journal_mode: str = "wal") -> None:
    bank = Bank(kind, target, journal_mode)
    n = bank.setup()
    fd = os.open(ackfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    while True:
        n += 1
        bank.transfer(n)
        os.write(fd, f"{n} {time.time():.6f}\n".encode())
        os.fsync(fd)
        if float(pace):
            time.sleep(float(pace))


if __name__ == "__main__":
    main(*sys.argv[1:])

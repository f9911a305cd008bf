#!/usr/bin/env python3
"""Stand-in for a MuroDB-like database's admin tool (a toy database in a directory).

The database: ``DBDIR/data`` (checkpointed records), ``DBDIR/wal`` (records since the last
checkpoint), ``DBDIR/LOCK`` (writers take an exclusive flock on it for every write).

    murodb_admin.py writer DBDIR ACKFILE   write one record per transaction forever, acknowledging
                                           each with "<n> <time>" in ACKFILE
    murodb_admin.py lock DBDIR [READY]     take the writer lock, checkpoint the wal into data,
                                           print READY, hold the lock until stdin reaches EOF,
                                           then release, print figures and exit 0
    murodb_admin.py check DBDIR            the drill probe: every record of data and wal is whole
                                           and numbered 1, 2, 3 … without a gap; print the count
                                           and exit 0, or say which record is wrong and exit 1
"""

from __future__ import annotations

import fcntl
import os
import sys
import time


def writer(db: str, ackfile: str) -> None:
    lock = os.open(os.path.join(db, "LOCK"), os.O_RDWR | os.O_CREAT, 0o600)
    n = 0
    with open(os.path.join(db, "wal"), "ab", buffering=0) as wal, open(ackfile, "a", buffering=1) as ack:
        while True:
            fcntl.flock(lock, fcntl.LOCK_EX)
            n += 1
            wal.write(f"{n} {time.time():.6f}\n".encode())
            fcntl.flock(lock, fcntl.LOCK_UN)
            ack.write(f"{n} {time.time():.6f}\n")
            time.sleep(0.002)


def lock(db: str, ready: str = "READY") -> int:
    fd = os.open(os.path.join(db, "LOCK"), os.O_RDWR | os.O_CREAT, 0o600)
    t0 = time.monotonic()
    fcntl.flock(fd, fcntl.LOCK_EX)
    wal_path, data_path = os.path.join(db, "wal"), os.path.join(db, "data")
    with open(wal_path, "a+b") as f:  # a new database has no wal yet
        f.seek(0)
        records = f.read()
    with open(data_path, "ab") as f:
        f.write(records)
        f.flush()
        os.fsync(f.fileno())
    with open(wal_path, "r+b") as f:
        f.truncate(0)
        os.fsync(f.fileno())
    print(f"checkpointed={len(records.splitlines())}", flush=True)
    print(ready, flush=True)
    sys.stdin.read()  # hold until the agent closes our stdin (or dies)
    held = time.monotonic() - t0
    fcntl.flock(fd, fcntl.LOCK_UN)
    print(f"released_after_ms={held * 1000:.0f}", flush=True)
    return 0


def check(db: str) -> int:
    lines = []
    for name in ("data", "wal"):
        path = os.path.join(db, name)
        if os.path.exists(path):
            with open(path, "rb") as f:
                lines += f.read().decode(errors="replace").splitlines()
    for i, line in enumerate(lines, 1):
        n, _, stamp = line.partition(" ")
        if n != str(i) or not stamp:
            print(f"record {i} is damaged: {line[:80]!r}", file=sys.stderr)
            return 1
    print(f"records={len(lines)}")
    print(f"murodb {db}: {len(lines)} records, numbered without a gap")
    return 0


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "writer":
        writer(*args)
    elif cmd == "lock":
        sys.exit(lock(*args))
    elif cmd == "check":
        sys.exit(check(*args))
    else:
        sys.exit(f"unknown command {cmd!r}")

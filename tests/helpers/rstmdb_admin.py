#!/usr/bin/env python3
"""Stand-in for an rstmdb-like database's admin tool: ``rstmdb_admin.py compact DBDIR``.

Compacts the toy log-structured store in DBDIR (``segments/*.log`` merged into one segment) under
its flock, and prints the WAL offset a restore must replay from as ``wal_offset=<n>`` (plus
``segments=<n>``) — the lines snapagent records in the manifest.

``rstmdb_admin.py verify DBDIR`` is the drill probe: the store has its compacted segment and no
half-written one (``compacted.tmp``); prints what it found and exits 0, or says what is wrong and
exits 1.
"""

from __future__ import annotations

import fcntl
import os
import sys


def compact(db: str) -> int:
    fd = os.open(os.path.join(db, "LOCK"), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    seg = os.path.join(db, "segments")
    os.makedirs(seg, exist_ok=True)
    names = sorted(n for n in os.listdir(seg) if n.endswith(".log"))
    data = b"".join(open(os.path.join(seg, n), "rb").read() for n in names)
    tmp = os.path.join(seg, "compacted.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    for n in names:
        os.unlink(os.path.join(seg, n))
    os.rename(tmp, os.path.join(seg, "000-compacted.log"))
    wal = os.path.join(db, "wal")
    offset = os.path.getsize(wal) if os.path.exists(wal) else 0
    print("compaction done")
    print(f"segments={len(names)}")
    print(f"wal_offset={offset}")
    return 0


def verify(db: str) -> int:
    seg = os.path.join(db, "segments")
    names = sorted(os.listdir(seg)) if os.path.isdir(seg) else []
    if "compacted.tmp" in names or "000-compacted.log" not in names:
        print(f"rstmdb {db}: no complete compacted segment (found: {', '.join(names) or 'nothing'})", file=sys.stderr)
        return 1
    wal = os.path.join(db, "wal")
    print(f"rstmdb {db}: {len(names)} segment(s), wal {os.path.getsize(wal) if os.path.exists(wal) else 0} bytes: ok")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("compact", "verify"):
        sys.exit("usage: rstmdb_admin.py compact|verify DBDIR")
    sys.exit((compact if sys.argv[1] == "compact" else verify)(sys.argv[2]))

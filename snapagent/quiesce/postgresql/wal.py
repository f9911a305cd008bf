"""WAL segment arithmetic and the archived-WAL artifact of a PostgreSQL backup-API backup.

A backup taken with ``pg_backup_start``/``pg_backup_stop`` is only restorable together with the
WAL from its start to its stop LSN. These helpers name those segments, wait until the server's
``archive_command`` has put all of them (complete) into ``wal_archive``, and stream them as tar.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from pathlib import Path
from typing import IO, Iterator

from snapagent.errors import OperationFailed
from snapagent.util.runner import Runner

SEGMENT_RE = re.compile(r"^[0-9A-F]{24}$")


def parse_lsn(lsn: str) -> int:
    """Given an LSN as PostgreSQL prints it (``16/B374D848``), return it as an integer; raise ValueError."""
    hi, lo = lsn.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def segment_name(tli: int, segno: int, seg_size: int) -> str:
    """Return the file name of WAL segment ``segno`` on timeline ``tli`` (``XLogFileName``)."""
    per_id = 0x100000000 // seg_size
    return f"{tli:08X}{segno // per_id:08X}{segno % per_id:08X}"


def split_segment(name: str, seg_size: int) -> tuple[int, int]:
    """Given a segment file name, return (timeline, segment number); raise ValueError when malformed."""
    if not SEGMENT_RE.match(name):
        raise ValueError(f"not a WAL segment name: {name!r}")
    per_id = 0x100000000 // seg_size
    return int(name[:8], 16), int(name[8:16], 16) * per_id + int(name[16:], 16)


def segments_between(start: str, stop: str, seg_size: int) -> list[str]:
    """Return the segment names from ``start`` to ``stop`` inclusive (both segment names).

    Raises OperationFailed when the timeline changed during the backup (not supported).
    """
    tli1, s1 = split_segment(start, seg_size)
    tli2, s2 = split_segment(stop, seg_size)
    if tli1 != tli2:
        raise OperationFailed(f"the timeline changed during the backup ({tli1} -> {tli2}); take a new backup")
    if s2 < s1:
        raise OperationFailed(f"stop segment {stop} lies before start segment {start}")
    return [segment_name(tli1, n, seg_size) for n in range(s1, s2 + 1)]


def history_file_name(start_segment: str, start_lsn: str, seg_size: int) -> str:
    """Return the name of the ``.backup`` history file ``pg_backup_stop`` writes for a backup."""
    offset = parse_lsn(start_lsn) % seg_size
    return f"{start_segment}.{offset:08X}.backup"


def wanted_files(rec: dict) -> list[str]:
    """Given a backup-API manifest record, return the archive file names the backup needs."""
    seg_size = rec["wal_segment_size"]
    names = segments_between(rec["start_walfile"], rec["stop_walfile"], seg_size)
    names.append(history_file_name(rec["start_walfile"], rec["start_lsn"], seg_size))
    tli = split_segment(rec["start_walfile"], seg_size)[0]
    names += [f"{t:08X}.history" for t in range(2, tli + 1)]  # timeline histories, when they exist
    return names


def wait_for_archive(archive: Path, names: list[str], seg_size: int, timeout: float,
                     optional: tuple[str, ...] = (".history",)) -> list[str]:
    """Wait until every file of ``names`` is in ``archive`` (segments complete: ``seg_size`` bytes).

    Names ending in one of ``optional`` may be absent. Return the names present. Raises
    OperationFailed naming the missing files after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        missing = []
        for n in names:
            p = archive / n
            try:
                st = os.stat(p)
            except FileNotFoundError:
                if not n.endswith(optional):
                    missing.append(n)
                continue
            if SEGMENT_RE.match(n) and st.st_size != seg_size:
                missing.append(f"{n} (incomplete: {st.st_size} of {seg_size} bytes)")
        if not missing:
            return [n for n in names if (archive / n).exists()]
        if time.monotonic() > deadline:
            shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
            raise OperationFailed(
                f"postgresql: WAL needed by the backup is not in wal_archive {archive} after {timeout:g}s: {shown}. "
                "Is archive_command copying uncompressed segments into that directory? (see pg_stat_archiver)")
        time.sleep(0.1)


@contextlib.contextmanager
def tar_stream(runner: Runner, archive: Path, names: list[str]) -> Iterator[IO[bytes]]:
    """Yield a tar stream of the files ``names`` of directory ``archive``; raise CommandFailed on error."""
    for n in names:
        if "/" in n or n.startswith(("-", ".")):
            raise OperationFailed(f"refusing to archive the file name {n!r}")
    argv = ["tar", "--create", "--file=-", "--format=posix", "--directory", str(archive),
            "--no-wildcards", "--", *names]
    proc = runner.stream(argv, mutating=False)
    try:
        yield proc.stdout
        proc.wait()
    finally:
        proc.kill()

"""WAL archive hygiene: after prune, remove the archived WAL no kept backup-API backup needs.

Every backup-API backup records ``oldest_needed_walfile``: the segment holding its start (redo)
LSN. A kept backup needs its own WAL (already copied into it) and, for point-in-time recovery
beyond its stop, every later segment; it never needs one before that. So the archive keeps every
file from the oldest segment any kept backup needs on, and loses what lies before it — what
``pg_archivecleanup ARCHIVE OLDEST`` does (PostgreSQL's own tool, run by hand with the same
segment name), with these rules:

* only names the agent can reason about are touched: ``TTTTTTTTXXXXXXXXYYYYYYYY`` (upper-case
  hex; ``T`` the timeline), optionally ``.partial``, and ``<segment>.<offset>.backup`` history
  files (``pg_archivecleanup -b``, PostgreSQL 17), each optionally compressed by archive_command
  (``.gz``, ``.zst``, ``.lz4``, ``.xz``, ``.bz2``: ``pg_archivecleanup -x``); never a timeline
  history file (``.history``), a temp file or anything else;
* a file goes when its segment number (the last 16 characters, timeline ignored, like
  ``pg_archivecleanup``) lies before the oldest needed one, and only on a timeline no newer than
  the newest a kept backup starts on (a newer timeline is a history the agent knows nothing of);
* only regular files: a symlink is never followed nor removed; the directory is read and
  changed through one descriptor;
* no kept backup that says what it needs (none kept, or all in checkpoint mode), a record that
  names no valid segment, or an archive that holds no segment at or after the oldest needed one
  (a wrong ``wal_archive``?): nothing is removed, and ``reason`` says why.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from snapagent.plugin.quiescer import ArchiveCleanup, KeptRecord

log = logging.getLogger("snapagent.quiesce.postgresql")

_COMPRESSED = r"(?:\.(?:gz|zst|lz4|xz|bz2))?"
#: (timeline, segment number as 16 hex characters, what) of every name the agent may remove
_REMOVABLE = re.compile(r"^(?P<tli>[0-9A-F]{8})(?P<seg>[0-9A-F]{16})"
                        r"(?P<kind>|\.partial|\.[0-9A-F]{8}\.backup)" + _COMPRESSED + "$")
_SEGMENT = re.compile(r"^[0-9A-F]{24}$")


def classify(name: str) -> tuple[int, str, str] | None:
    """Given a file name in the archive, return (timeline, segment number in hex, kind) — kind
    ``segment``, ``partial`` or ``backup`` — or None for a name the agent never removes."""
    m = _REMOVABLE.match(name)
    if m is None:
        return None
    kind = {"": "segment", ".partial": "partial"}.get(m["kind"], "backup")
    return int(m["tli"], 16), m["seg"], kind


def _norm(p: str | Path) -> str:
    return os.path.normpath(str(p))


def counted(kept: list[KeptRecord], archive: Path, others: list[Path]) -> list[KeptRecord]:
    """Return the kept backup-API records that draw on ``archive``: those naming it, those
    naming none (written before the field), and those naming an archive no quiescer is
    configured with now (moved: their segments may be here)."""
    mine, elsewhere = _norm(archive), {_norm(o) for o in others} - {_norm(archive)}
    return [k for k in kept if k.record.get("mode") == "backup-api"
            and _norm(k.record.get("wal_archive") or mine) not in elsewhere]


def needed(records: list[KeptRecord]) -> tuple[str, KeptRecord, int] | str:
    """Return (the oldest segment name any of ``records`` needs, the record needing it, the
    newest timeline they start on), or the reason no cut-off can be named."""
    if not records:
        return "no kept backup-API backup draws on it (none kept, or checkpoint mode only)"
    oldest: tuple[str, KeptRecord] | None = None
    newest_tli = 0
    for k in records:
        name = k.record.get("oldest_needed_walfile") or k.record.get("start_walfile")
        if not isinstance(name, str) or not _SEGMENT.match(name):
            return f"backup {k.backup} records no valid oldest segment ({name!r})"
        newest_tli = max(newest_tli, int(name[:8], 16))
        if oldest is None or name[8:] < oldest[0][8:]:
            oldest = (name, k)
    assert oldest is not None
    return oldest[0], oldest[1], newest_tli


def clean(quiescer: str, archive: Path, kept: list[KeptRecord], others: list[Path], dry_run: bool) -> ArchiveCleanup:
    """Remove (``dry_run``: list) the files of ``archive`` no ``kept`` record needs; see the module
    docstring for the rules. Never raises: what cannot be done is in ``reason`` or ``failed``."""
    out = ArchiveCleanup(quiescer, str(archive))
    cut = needed(counted(kept, archive, others))
    if isinstance(cut, str):
        out.reason = cut
        return out
    oldest, by, newest_tli = cut
    out.kept_from, out.needed_by = oldest, by.backup
    try:
        fd = os.open(archive, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        out.reason = f"cannot read it ({e.strerror})"
        return out
    try:
        sizes = _select(fd, out, oldest, newest_tli)
        if not out.reason and not dry_run:
            _remove(fd, out, sizes)
    finally:
        os.close(fd)
    return out


def _select(fd: int, out: ArchiveCleanup, oldest: str, newest_tli: int) -> dict[str, int]:
    """Fill ``out.remove``/``bytes``/``kept`` from the directory ``fd``; set ``reason`` when the
    archive does not hold what the kept backups need. Return {name: size} of the chosen files."""
    chosen: list[tuple[str, int, str, int]] = []
    total, reaches = 0, False
    with os.scandir(fd) as it:
        for entry in it:
            total += 1
            c = classify(entry.name)
            if c is None or not entry.is_file(follow_symlinks=False):
                continue
            tli, seg, kind = c
            if seg >= oldest[8:] and kind != "backup":
                reaches = True
            elif seg < oldest[8:] and tli <= newest_tli:
                chosen.append((seg, tli, entry.name, entry.stat(follow_symlinks=False).st_size))
    if not reaches:
        out.reason = (f"it holds no segment at or after {oldest}, the oldest backup {out.needed_by} needs "
                      "(is wal_archive the directory archive_command writes to?)")
        out.kept = total
        return {}
    chosen.sort()
    out.remove = [name for _, _, name, _ in chosen]
    out.bytes = sum(size for *_, size in chosen)
    out.kept = total - len(chosen)
    return {name: size for _, _, name, size in chosen}


def _remove(fd: int, out: ArchiveCleanup, sizes: dict[str, int]) -> None:
    """Remove ``out.remove`` from the directory ``fd``; ``out.bytes`` becomes what was freed."""
    for name in out.remove:  # oldest first: a kill leaves the archive without a hole
        try:
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            continue  # gone already (pg_archivecleanup, the admin)
        except OSError as e:
            out.failed.append(f"{name}: {e.strerror}")
            continue
        out.removed.append(name)
    out.bytes = sum(sizes[n] for n in out.removed)
    out.kept += len(out.remove) - len(out.removed)
    if out.removed:
        os.fsync(fd)


def record_facts(rec: dict[str, Any], archive: Path) -> None:
    """Add what archive cleanup reads later to a backup-API record whose ``start_walfile`` is set."""
    rec["oldest_needed_walfile"] = rec["start_walfile"]
    rec["wal_archive"] = str(archive)

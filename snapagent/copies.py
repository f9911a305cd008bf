"""Copying a stored backup to another target, verified: after a backup run (``jobs.X.copy_to``)
and by hand (``snapagent copy ID --to TARGET``).

Each artifact is streamed as stored (``Target.open_stored``: compressed bytes are never
re-encoded) into the destination's writer (``Writer.add_stored``), the manifest last
(``Writer.commit``): the copy exists in the destination iff its manifest does, and a killed copy
leaves only the writer's journaled temp place, which ``snapagent cleanup`` removes.

Verification is the write path's, end to end: the source reader checks size and sha256 of what
it read against the source manifest (``finish()``), and the destination writer hashes the exact
bytes it wrote (and fsyncs them), which must equal the manifest's record before the manifest is
written. A read-back of a local copy right after fsync would read the page cache and prove
nothing more; ``snapagent verify ID --from TARGET`` reads a copy back from its medium.

An incremental backup needs its chain in the destination: the links it lacks are copied first,
oldest first, so a destination never holds an incremental whose parent it lacks.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from snapagent import catalog, cleanup, signals, verify
from snapagent.config import Config
from snapagent.errors import BackupDamaged, VerifyFailed
from snapagent.joblock import JobLock
from snapagent.journal import Journal, read_open
from snapagent.plugin.target import Damaged, Stored, Target, listing_order
from snapagent.util.runner import Runner

log = logging.getLogger("snapagent.copies")


@dataclass
class CopyResult:
    """What a copy did: ``copied`` the ids written to ``target`` (missing chain links first,
    oldest first, then the backup), or ``present`` when the target already held a good copy."""

    id: str
    source: str
    target: str
    copied: list[str] = field(default_factory=list)
    present: bool = False

    def as_dict(self) -> dict:
        return {"id": self.id, "source": self.source, "target": self.target, "copied": self.copied,
                "present": self.present}


def missing_links(config: Config, stored: Stored, dest: Target) -> list[Stored]:
    """Return the earlier backups of ``stored``'s chains that ``dest`` lacks, oldest first.
    Raise NotFound / BackupDamaged when a link is missing or damaged everywhere, or damaged in
    ``dest`` (a copy must not rest on it)."""
    need: dict[str, Stored] = {}
    for vol in stored.manifest.volumes:
        for link, _ in catalog.chain(config, stored, vol)[:-1]:
            there = dest.get(link.id)
            if isinstance(there, Damaged):
                raise BackupDamaged(f"backup {stored.id} is incremental on {link.id}, whose copy in target "
                                    f"{dest.name!r} is damaged: {there.reason} ({there.location}); remove it there first")
            if link.id not in need and there is None:
                need[link.id] = link
    return sorted(need.values(), key=listing_order)


def copy_backup(config: Config, stored: Stored, dest: Target, runner: Runner, locked: bool = False,
                say: Callable[[str], None] = lambda s: None) -> CopyResult:
    """Copy ``stored`` (and the chain links ``dest`` lacks) into ``dest``, verified; return what
    was done. A good copy already there is verified and reported ``present``.

    Takes the job lock unless the caller (a backup run) holds it: ``locked``. Raise BackupDamaged (``dest`` holds a damaged copy),
    VerifyFailed (a source artifact or the written bytes do not match the manifest), TargetFailed,
    NotFound (a chain link is gone), JobLocked, Interrupted; nothing is listed in ``dest`` for
    a backup whose copy failed (links copied before it stay: each is complete).
    """
    result = CopyResult(stored.id, stored.target.name, dest.name)
    there = dest.get(stored.id)
    if isinstance(there, Damaged):
        raise BackupDamaged(f"target {dest.name!r} already holds backup {stored.id}, damaged: {there.reason} "
                            f"({there.location}); remove it there first")
    if isinstance(there, Stored):
        bad = [r.message for r in verify.check(there) if not r.ok]
        if bad:
            raise VerifyFailed(f"target {dest.name!r} already holds backup {stored.id}, but it fails verification: "
                               + "; ".join(bad))
        result.present = True
        return result
    state_dir = config.agent.state_dir
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    job = stored.manifest.job
    with signals.raising(), (nullcontext() if locked else JobLock(state_dir, job)):
        if not locked:
            for msg in cleanup.sweep(state_dir, runner, job):
                say(f"cleaned up after an earlier run: {msg}")
        for b in missing_links(config, stored, dest) + [stored]:
            _copy_one(config, b, dest, runner)
            result.copied.append(b.id)
            say(f"copied {b.id} from target {b.target.name!r} to target {dest.name!r}")
    return result


def _copy_one(config: Config, b: Stored, dest: Target, runner: Runner) -> None:
    """Copy one backup, journaled: what an uncommitted writer wrote is undone before returning
    (or by ``cleanup`` after a kill)."""
    run_id = f"copy-{dest.name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%S.%fZ}"
    journal = Journal.start(config.agent.state_dir, b.manifest.job, run_id)
    try:
        writer = dest.begin(b.manifest.job, b.id, journal)
        for art in b.manifest.artifacts:
            with b.target.open_stored(b.id, art) as src:
                wrote = writer.add_stored(art, src)
                src.finish()
            if (wrote.size, wrote.sha256) != (art.size, art.sha256):
                raise VerifyFailed(f"copy of {b.id} to target {dest.name!r}: artifact {art.name} was written as "
                                   f"{wrote.size} bytes, sha256 {wrote.sha256[:16]}… but the manifest records "
                                   f"{art.size} bytes, sha256 {art.sha256[:16]}…; nothing was stored")
        with signals.shielded(raise_after=False):
            writer.commit(b.manifest)
    finally:
        with signals.shielded(raise_after=False):
            _, failed = cleanup.undo_records(read_open(journal.path), runner)
            if failed:
                journal.close_file()
                log.warning("left for `snapagent cleanup`: %s", "; ".join(failed))  # the outcome is the run's own error line
            else:
                journal.finish()


def copy_after_backup(config: Config, stored: Stored, names: list[str], runner: Runner,
                      say: Callable[[str], None] = lambda s: None) -> dict[str, str]:
    """Copy a new backup to each of ``names`` (the job's ``copy_to``), the job lock held by the
    caller; return {target: warning naming it} of the failed copies (the backup stands)."""
    failed = {}
    for name in names:
        try:
            copy_backup(config, stored, config.target(name), runner, locked=True, say=say)
        except Exception as e:  # noqa: BLE001 - the local backup is committed: a failed copy is a warning
            failed[name] = (f"copy to target {name!r} failed: {e}; the backup is kept in target "
                            f"{stored.target.name!r}; retry with `snapagent copy {stored.id} --to {name}`")
    return failed


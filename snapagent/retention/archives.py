"""Archive hygiene after prune: clean the directories outside the backups that backups draw on.

A quiescer whose backups draw on such a directory names it (``Quiescer.archive``: PostgreSQL's
``wal_archive`` in backup-API mode). After a job's retention ran in every target, each such
archive is handed the quiescer records of every backup still kept — in every target, of every
job whose quiescer names the same directory — and removes what none of them needs
(``Quiescer.clean_archive``). Nothing is cleaned when the job has no retention rules (prune keeps
everything, so does this), when any job sharing the archive opts out (``wal_prune = false``), or
when another job sharing it is running (its backup may still wait for segments there; the next
prune cleans up). The other jobs' locks are held while their archive is cleaned.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from typing import Callable

from snapagent.config import Config, Job
from snapagent.joblock import JobLock
from snapagent.plugin.quiescer import ArchiveCleanup, KeptRecord
from snapagent.plugin.target import Stored
from snapagent.retention import policy
from snapagent.retention.prune import TargetPrune, targets_of


def _norm(p) -> str:
    return os.path.normpath(str(p))


def _users(config: Config, qtype: str, path) -> list[tuple[Job, int, object]]:
    """Return (job, quiescer index, archive) of every quiescer of type ``qtype`` naming ``path``."""
    out = []
    for j in (config.jobs[n] for n in sorted(config.jobs)):
        for i, (qcls, qcfg) in enumerate(j.quiescers):
            a = qcls.archive(qcfg) if qcls.type == qtype else None
            if a is not None and _norm(a.path) == _norm(path):
                out.append((j, i, a))
    return out


def kept_records(config: Config, jobs: list[Job], qtype: str, dropped: set[tuple[str, str]]) -> list[KeptRecord]:
    """Return the ``qtype`` records of every good backup of ``jobs`` in every target holding them,
    but those in ``dropped`` ((target, id): a dry run's would-be removals). Raise what a target's
    listing raises."""
    out = []
    for j in jobs:
        for t in targets_of(config, j):
            for b in t.list(j.name):
                if isinstance(b, Stored) and (t.name, b.id) not in dropped:
                    out += [KeptRecord(b.id, j.name, q.facts()) for q in b.manifest.quiescers if q.type == qtype]
    return out


def clean(config: Config, job: Job, decided: list[TargetPrune], dry_run: bool, locked: bool = False,
          say: Callable[[str], None] = lambda s: None) -> list[ArchiveCleanup]:
    """After ``job``'s prune (``decided``: its results in each target): clean each archive its
    quiescers name; return one ArchiveCleanup each. ``dry_run``: what would go (the backups
    ``decided`` would remove count as gone). Unless ``locked`` (a backup run holds it), the job
    lock is taken; the locks of other jobs sharing an archive are taken for it, or it is skipped.
    Raise JobLocked when this job is running."""
    specs = [(qcls, qcfg, a) for qcls, qcfg in job.quiescers if (a := qcls.archive(qcfg)) is not None]
    if not specs:
        return []
    with ExitStack() as stack:
        if not locked and not dry_run:
            stack.enter_context(JobLock(config.agent.state_dir, job.name))
        return [_clean_one(config, job, qcls, qcfg, a.path, decided, dry_run, say) for qcls, qcfg, a in specs]


def _clean_one(config: Config, job: Job, qcls, qcfg, path, decided: list[TargetPrune], dry_run: bool,
               say: Callable[[str], None]) -> ArchiveCleanup:
    skip = ArchiveCleanup(qcls.type, str(path))
    if policy.is_empty(job.cfg.retention):
        skip.reason = "the job has no retention rules: every backup is kept, and what it draws on"
        return skip
    users = _users(config, qcls.type, path)
    off = [f"jobs.{j.name}.quiesce[{i}].{a.key} = false" for j, i, a in users if not a.prune]
    if off:
        skip.reason = f"{off[0]}: left as it is"
        return skip
    jobs = list({j.name: j for j, _, _ in users}.values())
    with ExitStack() as stack:
        for other in (j for j in jobs if j.name != job.name and not dry_run):
            lock = JobLock(config.agent.state_dir, other.name)
            if not lock.try_acquire():
                skip.reason = (f"job {other.name!r} draws on it too and is running ({lock.holder()}): "
                               "its backup may still need segments there; the next prune cleans up")
                return skip
            stack.callback(lock.release)
        dropped = {(r.target, i) for r in decided for i in r.remove} if dry_run else set()
        try:
            kept = kept_records(config, jobs, qcls.type, dropped)
        except Exception as e:  # noqa: BLE001 - a target we cannot read may hold a backup that needs it
            skip.reason = f"cannot list every target holding backups that may need it ({e})"
            return skip
        others = [a.path for j in config.jobs.values() for q, c in j.quiescers
                  if q.type == qcls.type and (a := q.archive(c)) is not None]
        result = qcls.clean_archive(qcfg, kept, others, dry_run)
    if result.removed:
        say(f"{describe(result)}: removed {len(result.removed)} file(s), {_mib(result.bytes)}, older than "
            f"{result.kept_from} (needed by {result.needed_by}); {result.kept} file(s) kept")
    return result  # the callers report ``failed`` (a warning each)


def describe(r: ArchiveCleanup) -> str:
    """Return ``archive PATH (TYPE)`` for messages."""
    return f"archive {r.archive} ({r.quiescer})"


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"

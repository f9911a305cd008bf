"""Pruning: apply a job's retention to its backups in every target, and remove what it drops.

Per job and target: the good backups go through ``policy.apply``; damaged ones are never touched
(reported). Removing one backup, newest first (so a kill never leaves an incremental whose parent
is gone): journal a ``delete`` record (owner: the target) → release the snapshots a driver kept
for it (``IncrementalBase.release_base``) → ``Target.delete`` (the backup disappears in one step,
then its artifacts go) → close the record. A killed prune leaves the record open; ``snapagent
cleanup`` (or the job's next run) has the target finish a delete that began, and leaves a
backup it had not reached intact for the next prune to decide again.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from snapagent import cleanup, signals
from snapagent.config import Config, Job, RetentionConfig
from snapagent.joblock import JobLock
from snapagent.journal import Journal, read_open
from snapagent.manifest import iso
from snapagent.plugin.driver import IncrementalBase
from snapagent.plugin.target import Damaged, Stored, Target
from snapagent.retention import policy
from snapagent.util.runner import Runner

log = logging.getLogger("snapagent.prune")


@dataclass
class TargetPrune:
    """What prune decided (and did) for one job in one target. ``removed``: the ids actually
    removed (none in a dry run); ``failed``: one message per backup that could not be removed."""

    job: str
    target: str
    empty_policy: bool
    keep: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    reasons: dict[str, list[str]] = field(default_factory=dict)
    created: dict[str, str] = field(default_factory=dict)
    damaged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    #: The job's archive cleanups (``retention/archives.py``), carried by its own target's record.
    archives: list = field(default_factory=list)

    def as_dict(self) -> dict:
        """Return the ``--json`` record (design note: job, target, keep, remove, reasons; plus
        damaged, removed, failed; archives when there are some)."""
        out = {"job": self.job, "target": self.target, "keep": self.keep, "remove": self.remove,
               "reasons": self.reasons, "damaged": self.damaged, "removed": self.removed, "failed": self.failed}
        if self.archives:  # only a job whose quiescer names an archive has any
            out["archives"] = [a.as_dict() for a in self.archives]
        return out


def describe(rules: RetentionConfig | None) -> str:
    """Return the rules as restic prints its policy (``keep 3 daily, all monthly, within 2d``)."""
    if policy.is_empty(rules):
        return "no retention rules: nothing is removed"
    assert rules is not None
    parts = []
    for name, key, _ in policy.BUCKETS:
        n = getattr(rules, key) or 0
        if n:
            parts.append(f"{'all' if n == -1 else n} {name}")
    if rules.keep_within is not None and not rules.keep_within.zero():
        parts.append(f"all within {rules.keep_within} of the newest")
    return "keep " + ", ".join(parts)


def decide(job: Job, target: Target, now: datetime | None = None) -> tuple[TargetPrune, dict[str, Stored]]:
    """Return the decision for ``job`` in ``target`` and its good backups by id; take nothing."""
    rules = job.cfg.retention
    found = target.list(job.name)
    good = {b.id: b for b in found if isinstance(b, Stored)}
    backups = [policy.Backup(b.id, b.manifest.created, tuple(v.parent for v in b.manifest.volumes if v.parent))
               for b in good.values()]
    d = policy.apply(backups, rules, now=now)
    return TargetPrune(job.name, target.name, policy.is_empty(rules), d.keep, d.remove, d.reasons,
                       {i: iso(b.manifest.created) for i, b in good.items()},
                       [b.id for b in found if isinstance(b, Damaged)]), good


def targets_of(config: Config, job: Job) -> list[Target]:
    """Return the job's own target, its ``copy_to`` targets, then every other target that holds
    backups of the job (copies made by hand): retention applies in each with the same rules."""
    own = config.target(job.target_name)
    copies = [config.target(n) for n in job.cfg.copy_to]
    named = {own.name, *job.cfg.copy_to}
    return [own] + copies + [t for t in config.all_targets() if t.name not in named and t.list(job.name)]


def prune(config: Config, job: Job, runner: Runner, locked: bool = False,
          say: Callable[[str], None] = lambda s: None, only: set[str] | None = None) -> list[TargetPrune]:
    """Apply ``job``'s retention in each of its targets; return one TargetPrune per target.

    With ``runner.dry_run`` nothing is taken or removed. Otherwise the job lock is taken (unless
    the caller, a backup run, holds it: ``locked``) and every removal is journaled. Raise
    JobLocked when a run of the job holds the lock; a backup that cannot be removed is reported in
    ``failed`` and the others go on; Interrupted after the backup being removed is settled.
    ``only``: prune only the targets of these names.
    """
    targets = [t for t in targets_of(config, job) if only is None or t.name in only]
    if runner.dry_run:
        return [decide(job, t)[0] for t in targets]
    state_dir = config.agent.state_dir
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    with signals.raising(), (nullcontext() if locked else JobLock(state_dir, job.name)):
        if not locked:
            for msg in cleanup.sweep(state_dir, runner, job.name):
                say(f"cleaned up after an earlier run: {msg}")
        return [_prune_target(config, job, t, runner, say) for t in targets]


def _prune_target(config: Config, job: Job, target: Target, runner: Runner, say: Callable[[str], None]) -> TargetPrune:
    result, good = decide(job, target)
    if not result.remove:
        return result
    run_id = f"prune-{datetime.now(timezone.utc):%Y%m%dT%H%M%S.%fZ}"
    journal = Journal.start(config.agent.state_dir, job.name, run_id)
    # a kept snapshot belongs to the backup in the job's own target; a copy elsewhere records
    # it too (its manifest is the same) but removing the copy must not release it
    own = target.name == job.target_name
    kept = own and any(v.kept for bid in result.remove for v in good[bid].manifest.volumes)
    driver = job.driver_cls(runner, job.options) if kept else None
    if driver is not None:
        driver.journal = journal
    try:
        for bid in result.remove:  # newest first
            err = _remove(good[bid], target, driver, journal, own)
            if err:
                result.failed.append(f"{bid}: {err}")
                log.warning("prune: could not remove %s: %s", bid, err)
            else:
                result.removed.append(bid)
                say(f"removed {bid} from target {target.name!r}")
    finally:
        with signals.shielded(raise_after=False):
            _, failed = cleanup.undo_records(read_open(journal.path), runner)
            if failed:
                result.failed += failed
                journal.close_file()
            else:
                journal.finish()
    return result


def _remove(b: Stored, target: Target, driver, journal: Journal, own: bool = True) -> str | None:
    """Remove one backup (journaled, bases first when in the job's ``own`` target); return why
    it could not be, or None."""
    key = b.location
    journal.open("delete", key, {"kind": "target", "name": target.type}, backup=b.id, target=target.name)
    kept = [v for v in b.manifest.volumes if v.kept] if own else []
    if kept and not isinstance(driver, IncrementalBase):
        journal.close("delete", key)
        return f"it kept snapshots for incremental exports, but driver {driver.name!r} cannot release them; left intact"
    for v in kept:
        try:
            driver.release_base(v)
        except Exception as e:  # noqa: BLE001 - the backup stays: its kept snapshot must not leak
            journal.close("delete", key)
            return f"could not release its kept snapshot {v.snapshot} ({e}); left intact"
    try:
        target.delete(b.id)
    except Exception as e:  # noqa: BLE001 - the record stays open: cleanup finishes or leaves it intact
        return str(e)
    journal.close("delete", key)
    return None

"""What is known of a job at a glance: its backups per target (complete ones; damaged ones
counted apart), the newest one, and its last run record. Read by ``check``, ``status`` and the
metrics; takes no lock and changes nothing."""

from __future__ import annotations

from dataclasses import dataclass, field

from snapagent.config import Config, Job
from snapagent.monitor import runs
from snapagent.monitor.runs import RunRecord, Success
from snapagent.plugin.target import Damaged, Stored, listing_order


@dataclass
class TargetFacts:
    """The backups of one job in one target, oldest first."""

    name: str
    backups: list[Stored] = field(default_factory=list)
    damaged: int = 0

    @property
    def size(self) -> int:
        return sum(b.size for b in self.backups)


@dataclass
class JobFacts:
    """A job's backups in every target that holds some (its own target always) and its last run."""

    job: Job
    targets: dict[str, TargetFacts]
    run: RunRecord | None

    @property
    def backups(self) -> list[Stored]:
        """Every complete backup of the job, oldest first; a backup copied to several targets
        once (its copy in the first target, the job's own one first)."""
        first: dict[str, Stored] = {}
        for t in self.targets.values():
            for b in t.backups:
                first.setdefault(b.id, b)
        return sorted(first.values(), key=listing_order)

    def missing_copies(self, backup_id: str) -> list[str]:
        """Return the targets whose copy of ``backup_id`` the last run could not make and which
        still lack it (a copy made by hand since clears it)."""
        failed = self.run.copy_failed if self.run is not None and self.run.backup_id == backup_id else []
        return [t for t in failed if not any(b.id == backup_id for b in self.targets.get(t, TargetFacts(t)).backups)]

    @property
    def newest(self) -> Stored | None:
        good = self.backups
        return good[-1] if good else None

    @property
    def last_success(self) -> Success | None:
        """The last successful run: from the run record, else from the newest backup's manifest
        (backups taken before snapagent kept run records)."""
        if self.run is not None and self.run.last_success is not None:
            return self.run.last_success
        if (b := self.newest) is None:
            return None
        m = b.manifest
        return Success(started=m.created, ended=m.completed,
                       duration_seconds=max(0.0, (m.completed - m.created).total_seconds()),
                       backup_id=m.id, size_bytes=m.size, freeze_window_seconds=m.freeze_window_ms / 1000,
                       freeze_phase_seconds=runs.freeze_phases(m))


def gather(config: Config, job: Job, strict: bool = False) -> JobFacts:
    """Return the facts of ``job``: list every configured target (raises what a target's listing
    raises, e.g. OSError when it cannot be read) and load the run record (``strict``: raise
    OSError when it exists but cannot be read)."""
    targets: dict[str, TargetFacts] = {job.target_name: TargetFacts(job.target_name)}
    for target in config.all_targets():
        for b in target.list(job.name):
            tf = targets.setdefault(target.name, TargetFacts(target.name))
            if isinstance(b, Damaged):
                tf.damaged += 1
            else:
                tf.backups.append(b)
    return JobFacts(job, targets, runs.load(config.agent.state_dir, job.name, strict))

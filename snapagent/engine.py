"""The backup lifecycle: runs one job as a consistency group.

preflight all → lock job → sweep leftovers → journal → driver.before_quiesce (what the snapshots
need, e.g. a btrfs top-level mount) → quiesce all (fixed order) → snapshot all → verify all →
release all (reverse order; only those that quiesced) → export → target commit (artifacts, then
manifest) → release snapshots (or keep incremental bases) → prune by the job's
retention in its own target → copy to the ``copy_to`` targets (``snapagent.copies``) → prune
there (the job lock still held; a failed prune or copy is a warning). Everything taken is
journaled before it is taken and undone from the journal on every exit path: exceptions and
signals (``snapagent.signals``) included. Once the manifest is committed the backup exists: what
fails afterwards (releasing a snapshot) is a warning that ``snapagent cleanup`` retries, and the
run succeeds.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import ValidationError

from snapagent import __version__, chains, cleanup, places, signals
from snapagent.config import Config, Job
from snapagent.errors import (
    ConfigError,
    FreezeOverrun,
    Interrupted,
    OperationFailed,
    PreflightFailed,
    SnapagentError,
    SnapshotFailed,
    UsageError,
)
from snapagent.joblock import JobLock
from snapagent.journal import Journal, read_open
from snapagent.manifest import ExtraRecord, Freeze, FreezeStep, Manifest, QuiescerRecord, Volume
from snapagent.plugin.driver import Driver, IncrementalBase, Snapshot, SnapshotPlaces
from snapagent.plugin.quiescer import QuiesceContext, Quiescer
from snapagent.plugin.target import Damaged, Stored, Writer
from snapagent.util import logfields, progress
from snapagent.util import steps as steplog
from snapagent.util.fs import is_within
from snapagent.util.names import check_abspath
from snapagent.util.runner import Runner

log = logging.getLogger("snapagent.engine")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def label_for(volume: str, taken: set[str]) -> str:
    """Return a filesystem-safe, unique label for ``volume`` (its last path component)."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", volume.rstrip("/").rsplit("/", 1)[-1] or "root").lstrip(".-") or "vol"
    label, n = base[:200], 2
    while label in taken:
        label, n = f"{base[:200]}-{n}", n + 1
    taken.add(label)
    return label


def _one_line(text: str) -> str:
    """``text`` as one line of at most 500 characters (a path may hold a newline)."""
    return text.replace("\r", "\\r").replace("\n", "\\n")[:500]


def _freeze_record(window: float, first: float, steps: list[tuple[str, str, float, float, float | None]]) -> Freeze:
    """Return the Freeze of a window of ``window`` seconds that began at ``first`` (monotonic),
    given its steps as (phase, what, start, seconds, held_at or None); times become milliseconds
    relative to ``first``."""
    def rel(t: float) -> float:
        return round((t - first) * 1000, 3)
    return Freeze(window_ms=round(window * 1000, 3), steps=[
        FreezeStep(phase=ph, what=_one_line(what), start_ms=rel(start), ms=round(secs * 1000, 3),
                   held_at_ms=None if at is None else rel(at)) for ph, what, start, secs, at in steps])


class Phases:
    """Per-phase wall-clock durations in milliseconds (a phase entered twice adds up), each also
    logged as a step (``-v``) under ``what`` (default: its name; ``""``: not logged, its parts are)."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str, what: str | None = None) -> Iterator[None]:
        t = time.monotonic()
        try:
            with steplog.step(what or name) if what != "" else nullcontext():
                yield
        finally:
            self.ms[name] = round(self.ms.get(name, 0.0) + (time.monotonic() - t) * 1000, 1)


@dataclass
class BackupResult:
    """A committed backup, and what went wrong after the commit (``snapagent cleanup`` retries it)."""

    manifest: Manifest
    warnings: list[str] = field(default_factory=list)
    copy_failed: list[str] = field(default_factory=list)  # the copy_to targets that did not get their copy


class BackupRun:
    """One run of one job: ``run()`` takes the backup, ``plan()`` is the dry run."""

    def __init__(self, config: Config, job: Job, runner: Runner, say: Callable[[str], None] = lambda s: None):
        self.config = config
        self.job = job
        self.runner = runner
        self.say = say
        self.state_dir = config.agent.state_dir
        self.target = config.target(job.target_name)
        self.driver: Driver = job.driver_cls(runner, job.options)
        self.ctx = ctx = QuiesceContext(job.name, runner, list(job.cfg.volumes), runner.dry_run)
        ctx.protected = {"the agent's state_dir": self.state_dir,
                         **{f"target {self.target.name!r}": p for p in self.target.local_paths()}}
        if config.agent.scratch_dir is not None:
            ctx.protected["the agent's scratch_dir"] = config.agent.scratch_dir
        self.quiescers: list[Quiescer] = [cls(qcfg, ctx) for cls, qcfg in job.quiescers]
        self.phases = Phases()
        self.warnings: list[str] = []  # before the commit: a chain that could not be continued
        self.locations: dict[str, tuple[int, str]] = {}

    # -- preflight ------------------------------------------------------------------------------
    def preflight(self) -> None:
        """Check everything and take nothing; raise PreflightFailed naming every problem found
        (a ConfigError when one of them is the config's: an option file that became unreadable)."""
        problems = self.preflight_problems()
        if len(problems) == 1:
            raise problems[0]
        if problems:
            cls = next((type(e) for e in problems if isinstance(e, UsageError)), PreflightFailed)
            raise cls(f"preflight of job {self.job.name!r} failed:\n  " + "\n  ".join(map(str, problems)))

    def preflight_problems(self) -> list[SnapagentError]:
        """Run every check of the preflight — the driver (tools, volumes), where each quiescer's
        files lie, each quiescer's own preflight (connection, grants, modes), the target, the state
        dir — and return every failure, not only the first; take nothing."""
        problems: list[SnapagentError] = []

        def check(fn: Callable[..., Any], *args: Any) -> Any:
            try:
                return fn(*args)
            except SnapagentError as e:
                problems.append(e)
                return None

        vols = list(self.job.cfg.volumes)
        roots = check(self.driver.preflight, vols)
        if roots is not None and len(roots) != len(vols):
            problems.append(PreflightFailed(f"driver {self.driver.name!r} named {len(roots)} volume roots for {len(vols)} volumes"))
            roots = None
        # the quiescers are still checked when the driver failed (their connections and grants)
        self.ctx.volume_roots = list(roots) if roots is not None else [Path(v) for v in vols]
        self.ctx.atomic = bool(self.driver.atomic)
        for q in self.quiescers:
            files = check(q.files)
            if files is None:  # it could not even tell (no connection): its preflight would say it again
                continue
            if roots is not None:
                check(self._place_files, q, files, roots)
            check(q.preflight)
        if roots is not None:
            check(self._check_places, vols, roots)
        check(self.target.preflight, self.job.name)
        probe = self.state_dir
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not os.access(probe, os.W_OK | os.X_OK):
            problems.append(PreflightFailed(f"state_dir {self.state_dir} is not writable ({probe} is not)"))
        return problems

    def preflight_report(self) -> list[SnapagentError]:
        """``config check --connect``: return every preflight problem (``preflight_problems``);
        the quiescers' sessions are closed afterwards."""
        try:
            return self.preflight_problems()
        finally:
            self._close_quiescers()

    def _place_files(self, q: Quiescer, files: list[Path], roots: list[Path]) -> None:
        """Record which volume (of ``roots``) holds each of ``q``'s ``files`` (``self.locations``).
        Raise PreflightFailed for a file on no volume."""
        for f in files:
            try:
                check_abspath(str(f))
            except ValueError as e:
                raise PreflightFailed(f"{q.describe()}: {e}") from None
            for i, root in enumerate(roots):
                if is_within(f, root):
                    self.locations[str(f)] = (i, os.path.relpath(os.path.realpath(f), os.path.realpath(root)))
                    break
            else:
                raise PreflightFailed(
                    f"{q.describe()}: {f} is not on any volume of job {self.job.name!r} "
                    f"({', '.join(map(str, roots))}); its snapshot would not hold it")

    def _check_places(self, vols: list[str], roots: list[Path]) -> None:
        """Refuse (ConfigError, exit 2) a configured snapshot place inside a volume or a database's data."""
        if not isinstance(self.driver, SnapshotPlaces):
            return
        where = [(f"volume {v!r}", Path(r)) for v, r in zip(vols, roots)]
        where += [(f"the data of {q.describe()}", f if f.is_dir() else f.parent) for q in self.quiescers for f in q.files()]
        if problems := places.refusals(f"jobs.{self.job.name}", self.driver.configured_places(self.driver.options),
                                       where, resolve=True):
            raise ConfigError("\n".join(problems))

    def _preflight_or_close(self) -> None:
        try:
            with self.phases("preflight"):
                self.preflight()
        except BaseException:
            self._close_quiescers()
            raise

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> BackupResult:
        """Take the backup; return it once committed. Raise OperationFailed (nothing stored,
        everything released) or Interrupted."""
        assert not self.runner.dry_run, "use plan() for a dry run"
        # the lock first: a second run of a running job is refused before it touches anything
        lock = JobLock(self.state_dir, self.job.name).take()
        try:
            self._preflight_or_close()
        except BaseException:
            lock.release()
            raise
        with lock, signals.raising():  # raising() may raise at once (a Ctrl-C lost before): the lock is released
            for msg in cleanup.sweep(self.state_dir, self.runner, self.job.name):
                self.say(f"cleaned up after an earlier run: {msg}")
            created = utcnow()
            backup_id = f"{self.job.name}-{created:%Y%m%dT%H%M%SZ}"
            while self.target.get(backup_id) is not None:  # two runs within one second
                time.sleep(1)
                created = utcnow()
                backup_id = f"{self.job.name}-{created:%Y%m%dT%H%M%SZ}"
            journal = Journal.start(self.state_dir, self.job.name, backup_id)
            logfields.bind(job=self.job.name, backup_id=backup_id)
            self.driver.journal = journal
            self.ctx.journal = journal
            result: BackupResult | None = None
            try:
                result = self._backup(backup_id, created, journal)
            finally:
                with signals.shielded(raise_after=False):
                    self._close_quiescers()
                    _, failed = cleanup.undo_records(read_open(journal.path), self.runner)
                    if failed:
                        journal.close_file()
                        if result is not None:
                            result.warnings += [f"{f}; `snapagent cleanup` will retry" for f in failed]
                        else:
                            log.warning("left for `snapagent cleanup`: %s", "; ".join(failed))  # the outcome is the run's own error line
                    else:
                        journal.finish()
                    if result is not None and signals.caught():
                        result.warnings.append(f"{signals.caught()} received after the backup was complete; it is kept")
            own, retention = {self.target.name}, self.job.cfg.retention is not None
            if retention and not signals.caught():
                result.warnings += self._prune(own)
            if self.job.cfg.copy_to and not signals.caught():
                failed = self._copy(result.manifest)
                result.copy_failed = sorted(failed)
                result.warnings += list(failed.values())
            if retention and not signals.caught():  # the copy targets, and any other holding the job's backups
                result.warnings += self._prune(set(self.config.targets) - own)
            if retention and not signals.caught():
                result.warnings += self._clean_archives()
            return result

    def _copy(self, manifest: Manifest) -> dict[str, str]:
        """Copy the committed backup to the job's ``copy_to`` targets; return {target: warning}
        of those without their copy (a failed or interrupted copy never fails the backup; what
        it began is undone)."""
        names = self.job.cfg.copy_to
        stored = self.target.get(manifest.id)
        if not isinstance(stored, Stored):
            return {n: f"copy to target {n!r} skipped: target {self.target.name!r} does not list {manifest.id} "
                       "as a good backup" for n in names}
        from snapagent import copies  # only jobs with copy_to need it (start-up time)

        try:
            return copies.copy_after_backup(self.config, stored, names, self.runner, self.say)
        except Interrupted as e:
            return {n: f"copy to target {n!r} stopped ({e}); the backup is kept in target {self.target.name!r}"
                    for n in names if self.config.target(n).get(manifest.id) is None}

    def _prune(self, only: set[str]) -> list[str]:
        """Apply the job's retention in the targets ``only`` after the commit, the job lock still
        held; return warnings (a failing or interrupted prune never fails the backup)."""
        from snapagent.retention.prune import prune  # only jobs with a retention need it (start-up time)

        try:
            done = prune(self.config, self.job, self.runner, locked=True, say=self.say, only=only)
        except Interrupted as e:
            return [f"prune stopped ({e}); the backup is kept; `snapagent cleanup` finishes a begun removal"]
        except Exception as e:  # noqa: BLE001 - the backup is committed: a prune failure is a warning
            return [f"prune failed: {e}; the backup is kept; run `snapagent prune {self.job.name}`"]
        for r in done:
            if r.removed:
                self.say(f"prune: removed {len(r.removed)} backup(s) of job {self.job.name!r} from target {r.target!r}")
        return [f"prune: could not remove {f}" for r in done for f in r.failed]

    def _clean_archives(self) -> list[str]:
        """After prune in every target: clean the archives the job's quiescers draw on (PostgreSQL's
        WAL archive); return warnings (a failure never fails the backup)."""
        from snapagent.retention import archives

        try:
            done = archives.clean(self.config, self.job, [], dry_run=False, locked=True, say=self.say)
        except Interrupted as e:
            return [f"archive cleanup stopped ({e}); the backup is kept"]
        except Exception as e:  # noqa: BLE001 - the backup is committed
            return [f"archive cleanup failed: {e}; the backup is kept; run `snapagent prune {self.job.name}`"]
        return [f"{archives.describe(r)}: could not remove {f}" for r in done for f in r.failed]

    def _close_quiescers(self) -> None:
        for q in reversed(self.quiescers):
            try:
                with signals.waiting(f"releasing {q.describe()}"):
                    q.release()
            except Exception:  # noqa: BLE001 - release never raises by contract; be defensive
                log.exception("releasing %s", q.describe())

    def _backup(self, backup_id: str, created: datetime, journal: Journal) -> BackupResult:
        snap_name = f"snapagent-{backup_id}"
        with self.phases("prepare", f"prepare {self.driver.name} (before the locks)"):
            self.driver.before_quiesce(list(self.job.cfg.volumes))
        snaps, qrecords, freeze = self._freeze_and_snapshot(snap_name)
        self.say(f"snapshot {snap_name}: {len(snaps)} volume(s), freeze window {freeze.window_ms:.1f} ms")
        fmt = self.job.export
        driver = self.driver
        keeps = self.job.cfg.mode == "incremental" and isinstance(driver, IncrementalBase) and driver.keeps_base(fmt)
        backups = self.target.list(self.job.name)
        # their kept bases are released after the commit: the newest backup's, and the one before it
        # in case a run was killed between its commit and releasing the older base
        recent = [b for b in backups if isinstance(b, Stored)][-2:]
        prev = self._base(backups, created) if keeps else None
        writer = self.target.begin(self.job.name, backup_id, journal)
        taken: set[str] = set()
        labels = [label_for(snap.volume, taken) for snap in snaps]
        with self.phases("extra", ""):  # each extra artifact is said
            artifacts, extras = self._export_extras(writer, qrecords, taken)
        volumes = []
        estimates = self._estimates(fmt, recent) if progress.enabled() and prev is None else {}
        with self.phases("export", ""):
            for i, snap in enumerate(snaps):
                base = prev.manifest.volume(snap.volume) if prev else None
                with steplog.step(f"export {snap.volume}"), driver.export(snap, fmt, base if base is not None and base.kept else None) as stream, \
                        progress.reading(stream, f"export {labels[i]}", estimates.get(snap.volume)) as counted:
                    art = writer.add_artifact(f"{i:02d}-{labels[i]}.{fmt}", counted)
                artifacts.append(art)
                parent = prev.id if prev and snap.info.get("parent_snapshot") else None
                if prev and parent is None:  # the driver found the base unusable (gone, replaced)
                    self.warnings.append(f"{snap.volume}: exported in full, not incrementally on {prev.id}: "
                                         f"{snap.info.get('full_reason', 'its base snapshot cannot be used')}")
                volumes.append(dict(volume=snap.volume, label=labels[i], snapshot=snap.handle, artifact=art.name,
                                    format=fmt, kept=keeps, info=snap.info, parent=parent, incremental=parent is not None))
                kind = f"incremental on {parent}" if parent else "full"
                self.say(f"exported {snap.volume} -> {art.name} ({kind}; {art.raw_size} bytes, stored {art.size})")
        manifest = self._manifest(backup_id, created, snap_name, freeze, volumes, qrecords, extras, artifacts, fmt)
        with self.phases("commit", f"commit to target {self.target.name!r}"), signals.shielded(raise_after=False):
            writer.commit(manifest)
        return BackupResult(manifest, self.warnings + self._after_commit(snaps, keeps, recent))

    def _base(self, backups: list[Stored | Damaged], created: datetime) -> Stored | None:
        """Return the backup to export incrementally from (None: a full); say why a full is
        taken, and keep a warning when it is a fallback (``chains.choose_base``)."""
        choice = chains.choose_base(self.config, self.job, backups, created)
        if choice.prev is not None:
            self.say(f"incremental on {choice.prev.id}")
        elif choice.warning:
            self.warnings.append(f"full backup instead of an incremental: {choice.why_full}")  # printed at the end
        else:
            self.say(f"full backup: {choice.why_full}")
        return choice.prev

    def _manifest(self, backup_id: str, created: datetime, snap_name: str, freeze: Freeze, volumes: list[dict],
                  qrecords: list[dict], extras: list[list[ExtraRecord]], artifacts: list, fmt: str) -> Manifest:
        quiescers = []
        for rec, ex in zip(qrecords, extras):
            files = [str(f) for f in rec.get("files", [rec.get("path")]) if f is not None]
            locs = {f: {"volume": self.locations[f][0], "relpath": self.locations[f][1]}
                    for f in files if f in self.locations}
            quiescers.append({**rec, "locations": locs, "artifacts": ex})
        try:
            return Manifest(
                id=backup_id, job=self.job.name, host=os.uname().nodename, created=created, completed=utcnow(),
                driver=self.driver.name, export_format=fmt, snapshot_name=snap_name,
                volumes=[Volume.model_validate(v) for v in volumes],
                quiescers=[QuiescerRecord.model_validate(q) for q in quiescers],
                freeze_window_ms=freeze.window_ms, max_freeze_ms=round(self.job.cfg.max_freeze * 1000),
                phases_ms=dict(self.phases.ms), freeze=freeze, artifacts=artifacts,
                versions={"snapagent": __version__, **self.driver.tool_versions()})
        except ValidationError as e:  # a plugin recorded something the manifest cannot hold
            raise OperationFailed(f"the manifest of {backup_id} would be invalid, nothing was stored: {e}") from None

    @staticmethod
    def _estimates(fmt: str, recent: list[Stored]) -> dict[str, int]:
        """Return {volume: raw bytes of its full export in the newest good backup (of ``recent``)
        in ``fmt``}: the progress bar's expected total of a full export (an estimate; none without
        such a backup)."""
        if not recent or recent[-1].manifest.export_format != fmt:
            return {}
        m = recent[-1].manifest
        return {v.volume: m.artifact(v.artifact).raw_size for v in m.volumes if not v.incremental}

    def _after_commit(self, snaps: list[Snapshot], keeps: bool, earlier: list[Stored]) -> list[str]:
        """Release (or keep) the snapshots, and the bases the ``earlier`` backups kept (the newest
        before this one, whether this backup continued its chain or started a new one, and the one
        before it); never raise. What fails stays open in the journal: the run's own undo retries
        it, then ``snapagent cleanup``. Return warnings about what is not in the journal (an
        earlier backup's base)."""
        warnings = []
        with self.phases("release", ""), signals.shielded(raise_after=False):
            steps: list[tuple[str, Callable[[], None]]] = []
            driver = self.driver
            for snap in snaps:
                steps.append((f"{'keep' if keeps else 'release'} snapshot {snap.handle}",
                              (lambda s=snap: driver.keep(s)) if keeps else (lambda s=snap: driver.release(s))))
            if isinstance(driver, IncrementalBase):
                for prev in earlier:
                    for v in prev.manifest.volumes:
                        if v.kept:
                            steps.append((f"release the base of {prev.id} ({v.snapshot})",
                                          lambda v=v: driver.release_base(v)))
            for i, (what, step) in enumerate(steps):
                try:
                    with signals.waiting(what), steplog.step(what):
                        step()
                except Exception as e:  # noqa: BLE001 - the backup is committed; this is a warning
                    if i < len(snaps):  # journaled: undone from the journal right after
                        log.info("could not %s (%s); retrying from the journal", what, e)
                    else:
                        warnings.append(f"could not {what}: {e}")
        return warnings

    def _export_extras(self, writer: Writer, qrecords: list[dict], taken: set[str]) -> tuple[list, list[list[ExtraRecord]]]:
        """Store each quiescer's extra artifacts (tar); return (artifacts, per-quiescer records)."""
        arts, extras = [], []
        for qi, (q, rec) in enumerate(zip(self.quiescers, qrecords)):
            mine = []
            for extra in q.artifacts():
                with extra.open() as stream:
                    art = writer.add_artifact(f"q{qi:02d}-{q.type}-{extra.name}.tar", stream)
                arts.append(art)
                mine.append(ExtraRecord(name=extra.name, artifact=art.name, format="tar",
                                        restore_dir=label_for(f"{q.type}-{extra.name}", taken)))
                self.say(f"stored {q.describe()} {extra.name} -> {art.name} ({art.raw_size} bytes)")
            extras.append(mine)
        return arts, extras

    def _freeze_and_snapshot(self, snap_name: str) -> tuple[list[Snapshot], list[dict], Freeze]:
        """Quiesce all, snapshot all, verify all, release all; return (snaps, records, Freeze).

        What the locks and the snapshot need besides themselves (checkpoints, helper processes:
        ``Quiescer.prepare``; journal records, directories, lookups, flushing the volumes:
        ``Driver.prepare_snapshot``) is done before the first lock, so the window holds only the
        locks, the snapshot commands, the verifications and the releases; each is timed into the
        returned Freeze. The window runs from the moment the first lock is held
        (``Quiescer.held_at``) to the last release and is bounded by max_freeze; taking the first
        lock has its own bound, max_lock_wait. A failed quiesce skips the snapshot; only quiescers
        that succeeded are released, in reverse. Raises FreezeOverrun when the window passes
        max_freeze (snapshots are then undone).
        """
        cfg = self.job.cfg
        max_freeze = cfg.max_freeze
        with self.phases("prepare", ""):  # quiescers first: a checkpoint writes what the driver then flushes
            for q in self.quiescers:
                with steplog.step(f"prepare {q.describe()}"):
                    q.prepare()
            with steplog.step(f"prepare {self.driver.name} snapshot"):
                self.driver.prepare_snapshot(list(cfg.volumes), snap_name)
        lock_deadline = time.monotonic() + (cfg.max_lock_wait or max_freeze)
        held: list[Quiescer] = []
        records: list[dict] = []
        snaps: list[Snapshot] = []
        steps: list[tuple[str, str, float, float, float | None]] = []  # phase, what, start, seconds, held_at
        first: float | None = None
        try:
            with self.phases("quiesce", ""):
                for q in self.quiescers:
                    called = time.monotonic()
                    q.quiesce(lock_deadline if first is None else min(lock_deadline, first + max_freeze))
                    held.append(q)
                    at = q.held_at or called
                    # unknown held_at (a command hook): the whole call is the lock, inside the window
                    took = (at if q.held_at else time.monotonic()) - called
                    steps.append(("lock", q.describe(), called, max(0.0, took), at))
                    first = first if first is not None else at
                    if time.monotonic() > first + max_freeze:
                        raise FreezeOverrun(f"quiescing took longer than max_freeze ({max_freeze:g}s)")
            first = first if first is not None else time.monotonic()
            with self.phases("snapshot", ""), self.runner.recording() as ran:
                began = time.monotonic()
                try:
                    snaps = self.driver.snapshot(list(cfg.volumes), snap_name, first + max_freeze)
                except SnapshotFailed as e:
                    if time.monotonic() >= first + max_freeze:
                        raise FreezeOverrun(f"the snapshot did not finish within max_freeze ({max_freeze:g}s): {e}") from None
                    raise
                finally:
                    steps += [("snapshot", r.line, r.start, r.seconds, None) for r in ran] or \
                        [("snapshot", f"{self.driver.name} snapshot (no command)", began, time.monotonic() - began, None)]
            for q in held:
                t = time.monotonic()
                try:
                    q.verify()
                finally:
                    steps.append(("verify", q.describe(), t, time.monotonic() - t, None))
        finally:
            stopped = None
            with self.phases("thaw", ""):
                for q in reversed(held):
                    t = time.monotonic()
                    try:
                        with signals.waiting(f"releasing {q.describe()}"):
                            records.append(q.release())
                    except BaseException as e:  # a signal cut this release short: release the others first
                        stopped = stopped or e
                        records.append({"type": q.type})
                    steps.append(("release", q.describe(), t, time.monotonic() - t, None))
                records.reverse()
            window = time.monotonic() - first if first is not None else 0.0
            if stopped is not None and sys.exception() is None:
                raise stopped
        for phase, what, _, secs, _ in steps:  # logged after the window: no write between lock and release
            steplog.done(f"{phase} {what}", secs)
        steplog.done("freeze window", window)
        if window > max_freeze:
            raise FreezeOverrun(f"freeze window {window * 1000:.0f} ms exceeded max_freeze {max_freeze * 1000:.0f} ms; "
                                "the snapshot was abandoned and everything released")
        if len(snaps) != len(cfg.volumes):
            raise SnapshotFailed(f"driver returned {len(snaps)} snapshots for {len(cfg.volumes)} volumes")
        return snaps, records, _freeze_record(window, first, steps)

    # -- dry run --------------------------------------------------------------------------------
    def plan(self) -> dict[str, Any]:
        """Dry run: run preflight and read-only commands, print what a real run would do (the
        mutating commands as pasteable lines); touch nothing. Return the plan."""
        assert self.runner.dry_run, "plan() needs a dry-run runner"
        backup_id = f"{self.job.name}-{utcnow():%Y%m%dT%H%M%SZ}"
        self._preflight_or_close()
        echo = self.runner.echo
        self._close_quiescers()
        for q in self.quiescers:
            death = ("released at once if the agent dies" if q.releases_on_death
                     else "outlives the agent's death: released by its watchdog/post or `snapagent cleanup`")
            echo(f"would quiesce: {q.describe()} (max_freeze {self.job.cfg.max_freeze:g}s; {death})")
        self.driver.snapshot(list(self.job.cfg.volumes), f"snapagent-{backup_id}", time.monotonic() + 3600)
        for q in reversed(self.quiescers):
            echo(f"would release: {q.describe()}")
        how = ""
        if self.job.cfg.mode == "incremental":
            choice = chains.choose_base(self.config, self.job, self.target.list(self.job.name), utcnow())
            how = f" incrementally on {choice.prev.id}" if choice.prev else f" in full ({choice.why_full})"
        echo(f"would export {len(self.job.cfg.volumes)} volume(s) as {self.job.export}{how} "
             f"to {self.target.describe()} as backup {backup_id}")
        echo("would release the snapshots")
        return {"dry_run": True, "id": backup_id, "job": self.job.name, "preflight": "ok",
                "volumes": list(self.job.cfg.volumes), "quiescers": [q.describe() for q in self.quiescers]}

"""The engine: runs one job as a consistency group.

preflight all → lock job → sweep leftovers → journal → quiesce all (fixed order) → snapshot all →
verify all → release all (reverse order; only those that quiesced) → export → target commit
(artifacts, then manifest) → release snapshots. Everything taken is journaled before it is taken
and undone from the journal on every exit path, including exceptions and SIGTERM/SIGINT.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, Callable, Iterator

from snapagent import __version__, cleanup
from .config import Config, Job
from snapagent.plugin.driver import Driver, Snapshot
from .errors import FreezeOverrun, Interrupted, PreflightFailed, SnapshotFailed
from snapagent.util.fs import is_within
from .joblock import JobLock
from .journal import Journal, read_open
from snapagent.plugin.quiescer import QuiesceContext, Quiescer
from snapagent.util.runner import Runner

log = logging.getLogger("snapagent.engine")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def iso(dt: datetime) -> str:
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def label_for(volume: str, taken: set[str]) -> str:
    """Return a filesystem-safe, unique label for ``volume`` (its last path component)."""
    base = re.sub(r"[^A-Za-z0-9._-]", "_", volume.rstrip("/").rsplit("/", 1)[-1] or "root").lstrip(".-") or "vol"
    label, n = base, 2
    while label in taken:
        label, n = f"{base}-{n}", n + 1
    taken.add(label)
    return label


@contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM/SIGINT/SIGHUP raise Interrupted so every ``finally`` releases."""
    def handler(signum, frame):
        raise Interrupted(f"interrupted by {signal.Signals(signum).name}; everything taken was released")

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class Phases:
    """Per-phase wall-clock durations in milliseconds."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t = time.monotonic()
        try:
            yield
        finally:
            self.ms[name] = round((time.monotonic() - t) * 1000, 1)


class BackupRun:
    """One run of one job. ``run()`` returns the manifest (or the plan, in dry-run mode)."""

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
        self.locations: dict[str, tuple[int, str]] = {}

    # -- preflight ------------------------------------------------------------------------------
    def preflight(self) -> None:
        """Check everything and take nothing; raise PreflightFailed naming what is wrong."""
        vols = self.job.cfg.volumes
        self.driver.preflight(vols)
        roots = [self.driver.volume_root(v) for v in vols]
        self.ctx.volume_roots = list(roots)
        self.ctx.atomic = bool(self.driver.atomic)
        for q in self.quiescers:
            for f in q.files():
                for i, root in enumerate(roots):
                    if is_within(f, root):
                        self.locations[str(f)] = (i, os.path.relpath(os.path.realpath(f), os.path.realpath(root)))
                        break
                else:
                    raise PreflightFailed(
                        f"{q.describe()}: {f} is not on any volume of job {self.job.name!r} "
                        f"({', '.join(map(str, roots))}); its snapshot would not hold it")
        for q in self.quiescers:
            q.preflight()
        self.target.preflight(self.job.name)
        if self.state_dir.exists() and not os.access(self.state_dir, os.W_OK):
            raise PreflightFailed(f"state_dir {self.state_dir} is not writable")

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        created = utcnow()
        backup_id = f"{self.job.name}-{created:%Y%m%dT%H%M%SZ}"
        try:
            with self.phases("preflight"):
                self.preflight()
        except BaseException:
            self._close_quiescers()
            raise
        if self.runner.dry_run:
            return self._dry_run(backup_id)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with signals_raise(), JobLock(self.state_dir, self.job.name):
            for msg in cleanup.sweep(self.state_dir, self.runner, self.job.name, holding=self.job.name):
                self.say(f"cleaned up after an earlier run: {msg}")
            while self.target.get(backup_id) is not None:  # two runs within one second
                time.sleep(1)
                created = utcnow()
                backup_id = f"{self.job.name}-{created:%Y%m%dT%H%M%SZ}"
            journal = Journal.start(self.state_dir, self.job.name, backup_id)
            self.driver.journal = journal
            self.ctx.journal = journal
            ok = False
            try:
                manifest = self._run(backup_id, created, journal)
                ok = True
                return manifest
            finally:
                self._close_quiescers()
                _, failed = cleanup.undo_records(read_open(journal.path), self.runner)
                if not failed:
                    journal.finish()
                elif ok:
                    log.error("some leftovers could not be released; `snapagent cleanup` will retry: %s", failed)

    def _close_quiescers(self) -> None:
        for q in reversed(self.quiescers):
            try:
                q.release()
            except Exception:  # noqa: BLE001 - release never raises by contract; be defensive
                log.exception("releasing %s", q.describe())

    def _run(self, backup_id: str, created: datetime, journal: Journal) -> dict[str, Any]:
        snap_name = f"snapagent-{backup_id}"
        snaps, qrecords, window = self._freeze_and_snapshot(snap_name)
        self.say(f"snapshot {snap_name}: {len(snaps)} volume(s), freeze window {window * 1000:.0f} ms")
        fmt = self.job.export
        keeps = self.driver.keeps_base(fmt)
        prev = self.target.list(self.job.name)[-1:] if keeps else []
        prev_items = {v["volume"]: {**v, "backup_id": prev[0]["id"]} for v in prev[0]["volumes"]} if prev else {}
        writer = self.target.begin(self.job.name, backup_id, journal)
        volumes, artifacts, taken = [], [], set()
        labels = [label_for(snap.volume, taken) for snap in snaps]
        with self.phases("extra"):
            artifacts += self._export_extras(writer, qrecords, taken)
        with self.phases("export"):
            for i, snap in enumerate(snaps):
                label = labels[i]
                art_name = f"{i:02d}-{label}.{fmt}"
                parent = prev_items.get(snap.volume)
                with self.driver.export(snap, fmt, parent if parent and parent.get("kept") else None) as stream:
                    info = writer.add_artifact(art_name, stream)
                self.driver.check([snap])
                artifacts.append(info.as_dict())
                item = {"volume": snap.volume, "label": label, "snapshot": snap.handle,
                        "artifact": info.name, "format": fmt, "kept": keeps, **snap.info}
                if snap.info.get("parent_snapshot"):
                    item["parent"] = parent["backup_id"]
                volumes.append(item)
                self.say(f"exported {snap.volume} -> {info.name} ({info.raw_size} bytes, stored {info.size})")
        for rec in qrecords:
            rec["locations"] = {f: {"volume": self.locations[f][0], "relpath": self.locations[f][1]}
                                for f in map(str, rec.get("files", [rec.get("path")])) if f in self.locations}
        manifest = {
            "format": 1, "id": backup_id, "job": self.job.name, "host": socket.gethostname(),
            "created": iso(created), "driver": self.driver.name, "export_format": fmt,
            "snapshot_name": snap_name, "volumes": volumes, "quiescers": qrecords,
            "freeze_window_ms": round(window * 1000, 3), "max_freeze_ms": round(self.job.cfg.max_freeze * 1000),
            "phases_ms": self.phases.ms, "artifacts": artifacts,
            "versions": {"snapagent": __version__, **self.driver.tool_versions()},
        }
        with self.phases("commit"):
            manifest["completed"] = iso(utcnow())
            manifest["phases_ms"] = dict(self.phases.ms)
            writer.commit(manifest)
        with self.phases("release"):
            for snap in snaps:
                (self.driver.keep if keeps else self.driver.release)(snap)
            for item in prev_items.values():
                if item.get("kept"):
                    self.driver.release_base(item)
        return manifest

    def _export_extras(self, writer, qrecords: list[dict], taken: set[str]) -> list[dict]:
        """Store each quiescer's extra artifacts (tar); note them in its record; return artifact infos."""
        out = []
        for qi, (q, rec) in enumerate(zip(self.quiescers, qrecords)):
            for extra in q.artifacts():
                name = f"q{qi:02d}-{q.type}-{extra.name}.tar"
                with extra.open() as stream:
                    info = writer.add_artifact(name, stream)
                out.append(info.as_dict())
                rec.setdefault("artifacts", []).append({
                    "name": extra.name, "artifact": info.name, "format": "tar",
                    "restore_dir": label_for(f"{q.type}-{extra.name}", taken)})
                self.say(f"stored {q.describe()} {extra.name} -> {info.name} ({info.raw_size} bytes)")
        return out

    def _freeze_and_snapshot(self, snap_name: str) -> tuple[list[Snapshot], list[dict], float]:
        """Quiesce all, snapshot all, verify all, release all; return (snaps, records, window s).

        A failed quiesce skips the snapshot; only quiescers that succeeded are released, in reverse.
        Raises FreezeOverrun when the window passes max_freeze (snapshots are then undone).
        """
        max_freeze = self.job.cfg.max_freeze
        held: list[Quiescer] = []
        records: list[dict] = []
        snaps: list[Snapshot] = []
        t0 = time.monotonic()
        deadline = t0 + max_freeze
        try:
            with self.phases("quiesce"):
                for q in self.quiescers:
                    q.quiesce(deadline)
                    held.append(q)
                    if time.monotonic() > deadline:
                        raise FreezeOverrun(f"quiescing took longer than max_freeze ({max_freeze:g}s)")
            with self.phases("snapshot"):
                snaps = self.driver.snapshot(list(self.job.cfg.volumes), snap_name, deadline)
            for q in held:
                q.verify()
        finally:
            with self.phases("thaw"):
                for q in reversed(held):
                    records.append(q.release())
                records.reverse()
            window = time.monotonic() - t0
        if window > max_freeze:
            raise FreezeOverrun(f"freeze window {window * 1000:.0f} ms exceeded max_freeze {max_freeze * 1000:.0f} ms; "
                                "the snapshot was abandoned and everything released")
        if len(snaps) != len(self.job.cfg.volumes):
            raise SnapshotFailed(f"driver returned {len(snaps)} snapshots for {len(self.job.cfg.volumes)} volumes")
        return snaps, records, window

    def _dry_run(self, backup_id: str) -> dict[str, Any]:
        """Print what a real run would do, running only read-only commands; touch nothing."""
        echo = self.runner.echo
        self._close_quiescers()
        for q in self.quiescers:
            echo(f"would quiesce: {q.describe()} (max_freeze {self.job.cfg.max_freeze:g}s)")
        self.driver.snapshot(list(self.job.cfg.volumes), f"snapagent-{backup_id}", time.monotonic() + 3600)
        for q in reversed(self.quiescers):
            echo(f"would release: {q.describe()}")
        echo(f"would export {len(self.job.cfg.volumes)} volume(s) as {self.job.export} "
             f"to {self.target.describe()} as backup {backup_id}")
        echo("would release the snapshots")
        return {"dry_run": True, "id": backup_id, "job": self.job.name, "preflight": "ok",
                "volumes": list(self.job.cfg.volumes), "quiescers": [q.describe() for q in self.quiescers]}

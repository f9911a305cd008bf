"""The restore lifecycle: check everything, then write.

1. Find the backup and the chain of every incrementally exported volume; check every artifact
   (size, sha256) and every tar member (``snapagent.verify``) before anything is written.
2. Prepare DEST: a new or empty directory (``--force`` moves old content aside to
   ``DEST.pre-restore-<time>``), or a new dataset (a DatasetRestore driver's send backup).
   Never through a symlink.
3. Restore each volume into ``DEST/<label>``, its chain in order, full first (a ChainRestore
   driver finishes the volume after its last link: btrfs keeps each received link until the
   next one is received, then leaves only the newest state); extract the quiescers' extra
   artifacts into ``DEST/<restore_dir>``; let each quiescer make its database start as it is.

Everything a restore takes — DEST itself, the moved-aside content, datasets — is journaled first
(``<state_dir>/journal/_restore``): a failed or interrupted restore removes what it wrote and moves
old content back; after a kill, ``snapagent cleanup`` does. Every name read from the manifest is
validated by ``snapagent.manifest``; every restored path a quiescer asks for is checked to stay
inside DEST with symlinks resolved.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from snapagent import catalog, cleanup, registry, restore_dest, restore_paths, restore_undo, signals, verify
from snapagent.chains import check_links
from snapagent.config import Config
from snapagent.errors import ConfigError, NotFound, OperationFailed, RestoreRefused, VerifyFailed
from snapagent.held import Held
from snapagent.journal import RESTORE_GROUP, Journal, read_open
from snapagent.manifest import Manifest, QuiescerRecord, Volume
from snapagent.plugin.driver import (
    ChainRestore,
    DatasetDest,
    DatasetRestore,
    DirectoryDest,
    Driver,
    PreparedDataset,
    RestoreDirectoryCheck,
)
from snapagent.plugin.quiescer import Handover, Locate, RestoreContext
from snapagent.plugin.target import Stored
from snapagent.util import fs, logfields, progress, tar
from snapagent.util.runner import Runner
from snapagent.util.tar import ScanReport

log = logging.getLogger("snapagent.restore")
Say = Callable[[str], None]


@dataclass
class Checked:
    """A backup whose every artifact (and those of the chains it needs) passed verification."""

    stored: Stored
    chains: dict[str, list[tuple[Stored, Volume]]]
    scans: dict[tuple[str, str], ScanReport]


@dataclass
class Restored:
    """What ``restore_into`` made: the user's summary, the locator, and each quiescer's record as
    its hooks see it (extra artifacts with their ``restored`` place)."""

    summary: dict[str, Any]
    locate: Locate
    records: list[dict[str, Any]] = field(default_factory=list)


def check(config: Config, runner: Runner, stored: Stored, allow_special: bool = False,
          say: Say = lambda s: None) -> Checked:
    """Verify every artifact a restore of ``stored`` reads (tar members as GNU tar reads them);
    raise VerifyFailed or RestoreRefused (nothing written) naming each problem."""
    m = stored.manifest
    results = verify.check(stored, scan=True, allow_special=allow_special, runner=runner)
    chains, more = check_links(config, stored, scan=True, allow_special=allow_special, runner=runner)
    results += more
    scans = {(r.link or stored.id, r.name): r.scan for r in results if r.scan is not None}
    bad = [r for r in results if not r.ok]
    if bad:
        cls = RestoreRefused if any(r.refused for r in bad) else VerifyFailed
        raise cls("restore refused, nothing was written: " + "; ".join(r.message for r in bad))
    say(f"verified {len(results)} artifact(s) of {m.id}")
    return Checked(stored, chains, scans)


def check_copies(config: Config, runner: Runner, backup_id: str, source: str | None = None,
                 allow_special: bool = False, say: Say = lambda s: None) -> Checked:
    """Find ``backup_id`` (only in target ``source`` if given) and ``check`` its first good copy;
    a copy that fails verification falls back to the next target's copy with a warning. Raise
    what ``catalog.copies`` and ``check`` raise (the last copy's failure)."""
    found = catalog.copies(config, backup_id, source)
    for i, stored in enumerate(found):
        try:
            return check(config, runner, stored, allow_special, say)
        except VerifyFailed as e:
            if i + 1 == len(found):
                raise
            log.warning("the copy of %s in target %r fails verification (%s); reading it from target %r instead",
                        stored.id, stored.target.name, e, found[i + 1].target.name)
    raise AssertionError("catalog.copies returns at least one copy")  # pragma: no cover


def driver_for(config: Config, m: Manifest, runner: Runner) -> Driver:
    """Return the driver that made ``m``, with its job's options when the job still exists with
    that driver (e.g. where a drill may receive), else the driver's defaults."""
    try:
        driver_cls = registry.get("driver", m.driver, "manifest.driver")
    except ConfigError:
        raise OperationFailed(f"backup {m.id} was made by driver {m.driver!r}, which is not installed "
                              "(see `snapagent plugins`)") from None
    job = config.jobs.get(m.job)
    return driver_cls(runner, job.options if job is not None and job.driver_cls is driver_cls else None)


def locator(m: Manifest, roots: dict[str, Path]) -> Locate:
    """Return the Locate of a restore whose volume ``label`` is at ``roots[label]``: the restored
    place of a live path a quiescer recorded, checked to stay inside its volume's restored tree
    with symlinks resolved (a restored tree is as untrusted as the manifest)."""
    def locate(live: str) -> Path:
        for q in m.quiescers:
            loc = q.locations.get(live)
            if loc is not None:
                root = roots[m.volumes[loc.volume].label]
                p = root if loc.relpath == "." else root / loc.relpath
                real, real_root = os.path.realpath(p), os.path.realpath(root)
                if real != real_root and not real.startswith(real_root.rstrip("/") + "/"):
                    raise RestoreRefused(f"{live} would be restored as {p}, which leads outside {root} "
                                         f"(through a symlink to {real})")
                return p
        raise NotFound(f"{live} is not recorded on any volume of backup {m.id}")

    return locate


class Scope:
    """The journal and the held things of one restore or drill."""

    def __init__(self, journal: Journal, runner: Runner):
        self.journal = journal
        self.runner = runner
        self.held = Held(journal, runner)

    @classmethod
    def start(cls, config: Config, runner: Runner, group: str, run_id: str) -> "Scope":
        state = config.agent.state_dir
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
        return cls(Journal.start(state, group, run_id), runner)

    def end(self, keep: Callable[[dict[str, Any]], bool] = lambda rec: False) -> list[str]:
        """Give back everything but what ``keep`` says is the result (that is closed as kept);
        return what could not be given back (left for ``snapagent cleanup``). Never raises."""
        with signals.shielded(raise_after=False):
            self.held.release_all(skip=keep)
            remaining = read_open(self.journal.path)
            for rec in remaining:
                if keep(rec):
                    self.journal.close(rec["kind"], rec["key"])
            _, failed = cleanup.undo_records([r for r in remaining if not keep(r)], self.runner)
            if failed:
                self.journal.close_file()
                log.warning("left for `snapagent cleanup`: %s", "; ".join(failed))  # the outcome is the run's own error line
            else:
                self.journal.finish()
        return failed


def restore(config: Config, runner: Runner, backup_id: str, dest: Path | str, force: bool = False,
            allow_special: bool = False, say: Say = lambda s: None, paths: Sequence[str] = (),
            source: str | None = None, space_check: bool = True) -> dict[str, Any]:
    """Check DEST, verify, then restore backup ``backup_id`` into ``dest``; return a summary for
    the user.

    ``dest`` is a directory, or the name of a new dataset for a DatasetRestore driver's backup;
    it is checked before any artifact is read (``restore_dest.precheck``; ``space_check``: its
    free space too). ``paths``: restore only these (``snapagent.restore_paths``; tar exports only).
    ``source``: read from this target only (default: the first with a good copy, ``check_copies``).
    Raises UsageError (a bad path), NotFound, BackupDamaged, VerifyFailed / RestoreRefused
    (nothing written), OperationFailed / Interrupted (what was written is removed again, and one
    line says so, or says what is left where for ``snapagent cleanup``).
    """
    stored = catalog.find(config, backup_id, source)
    logfields.bind(job=stored.manifest.job, backup_id=stored.id)
    selection = restore_paths.select(stored.manifest, paths) if paths else None
    found = restore_dest.precheck(config, driver_for(config, stored.manifest, runner), stored, dest, force,
                                  whole=selection is None, space=space_check)
    checked = check_copies(config, runner, stored.id, source, allow_special, say)
    stored = checked.stored
    if selection is not None:
        restore_paths.resolve(stored.manifest, selection, {v.label: checked.scans[(stored.id, v.artifact)]
                                                           for v in stored.manifest.volumes if v.label in selection})
    with signals.raising():
        scope = Scope.start(config, runner, RESTORE_GROUP, f"{checked.stored.id}.{os.getpid()}")
        done = False
        try:
            result = restore_into(config, runner, checked, dest, force, allow_special, scope, say, selection,
                                  flush=True)
            _durable(result)
            done = True
        except (OperationFailed, OSError) as e:
            if not restore_undo.out_of_space(e):
                raise
            raise restore_undo.ran_out_of_space(found, e) from None
        finally:
            taken = [] if done else read_open(scope.journal.path)
            failed = scope.end(keep=lambda rec: done)
            if not done:
                restore_undo.report(found.dest, taken, read_open(scope.journal.path) if failed else [])
    return result.summary


def restore_into(config: Config, runner: Runner, checked: Checked, dest: Path | str, force: bool,
                 allow_special: bool, scope: Scope, say: Say, selection: dict[str, list[str]] | None = None,
                 flush: bool = False) -> Restored:
    """Restore a checked backup into ``dest`` within ``scope`` (which journals what is taken);
    with ``selection`` ({label: paths}, tar only), only those paths of those volumes. ``flush``:
    a directory's filesystem is written back while the restore writes (``fs.flushing``; a
    drill's scratch copy needs no flush); raise OperationFailed when that fails."""
    m = checked.stored.manifest
    driver = driver_for(config, m, runner)
    driver.journal = scope.journal
    prepared = None
    if isinstance(driver, DatasetRestore) and selection is None:
        prepared = driver.prepare_dataset(str(dest), m, force)
    if prepared is not None:
        dest_shown, files_root, moved = prepared.name, prepared.files, prepared.moved_aside
    else:
        dest = Path(os.path.abspath(dest))
        if isinstance(driver, RestoreDirectoryCheck):
            for v in m.volumes:
                driver.check_restore_directory(dest / v.label, v.format)
        moved = _prepare_directory(dest, force, scope.held, m.driver)
        dest_shown, files_root = str(dest), dest
    if moved:
        say(f"moved the previous content of {dest_shown} to {moved}")
    try:
        with fs.flushing(files_root if flush and prepared is None else None):
            if selection is not None:
                return _restore_paths(runner, checked, Path(dest), moved, selection, allow_special, say)
            return _restore_all(config, runner, checked, driver, prepared, dest, dest_shown, files_root, moved,
                                allow_special, scope, say)
    except fs.FlushFailed as e:
        raise _flush_failed(e) from None


def _restore_all(config: Config, runner: Runner, checked: Checked, driver: Driver, prepared: PreparedDataset | None,
                 dest: Path | str, dest_shown: str, files_root: Path, moved: str | None, allow_special: bool,
                 scope: Scope, say: Say) -> Restored:
    """Restore every volume (its chain, full first) into its place below the prepared ``dest``,
    the quiescers' extras below ``files_root``, and let each quiescer prepare its database."""
    m = checked.stored.manifest
    out_vols, roots = [], {}
    for vol in m.volumes:
        vdest = DatasetDest(f"{prepared.name}/{vol.label}") if prepared else DirectoryDest(Path(dest) / vol.label)
        for link, item in checked.chains[vol.volume]:
            art = link.manifest.artifact(item.artifact)
            with link.target.open_artifact(link.id, art) as r:
                with progress.reading(r, f"restore {vol.label}", art.raw_size) as counted:
                    roots[vol.label] = driver.restore(counted, item.format, vdest, item,
                                                      checked.scans.get((link.id, item.artifact)), allow_special)
                r.finish()
        if isinstance(driver, ChainRestore):
            roots[vol.label] = driver.finish_chain(vdest, vol)
        shown = vdest.name if isinstance(vdest, DatasetDest) else str(vdest.path)
        out_vols.append({"volume": vol.volume, "path": str(roots[vol.label]),
                         **({"restored_as": shown} if prepared else {})})
        say(f"restored {vol.volume} -> {shown}" + (f" (mounted at {roots[vol.label]})" if prepared else ""))
    locate = locator(m, roots)
    ctx = RestoreContext(runner, config, scope.held, say, dest=Path(files_root))
    dbs, records = [], []
    for q in m.quiescers:
        rec = _restore_extras(checked, q, files_root, runner, allow_special, say)
        records.append(rec)
        plugin = registry.discover("quiescer").get(q.type)
        dbs.append(database_entry(q, locate, plugin.load().prepare_restore(rec, locate, ctx) if plugin else None))
        if q.locations:
            say(f"{q.type} database {dbs[-1]['live']} restored as {dbs[-1]['restored']}")
    summary = {"id": m.id, "dest": dest_shown, "moved_aside": moved, "volumes": out_vols, "databases": dbs}
    return Restored(summary, locate, records)


def database_entry(q: QuiescerRecord, locate: Locate, handed: Handover | dict[str, Any] | None) -> dict[str, Any]:
    """Return the summary's entry for one quiescer: its first recorded place (the database: PGDATA,
    the datadir, the SQLite file) ``live`` → ``restored``, every place it recorded (``locations``),
    and ``handover`` (None: this quiescer hands no database over, e.g. a command hook). A plain
    dict from an older plugin's ``prepare_restore`` is kept as ``notes``."""
    places = {live: str(locate(live)) for live in q.locations}
    live = next(iter(places), None)
    entry: dict[str, Any] = {"type": q.type, "live": live, "restored": places.get(live) if live else None,
                             "locations": places,
                             "handover": handed.as_dict() if isinstance(handed, Handover) else None}
    if isinstance(handed, dict):
        entry["notes"] = handed
    return entry


def _restore_paths(runner: Runner, checked: Checked, dest: Path, moved: str | None, selection: dict[str, list[str]],
                   allow_special: bool, say: Say) -> Restored:
    """Extract only the selected paths of the selected (tar) volumes into ``DEST/<label>``; skip
    the quiescers' extras and hand-over notes (they are about whole databases)."""
    stored, m = checked.stored, checked.stored.manifest
    out_vols, roots = [], {}
    for vol in m.volumes:
        if vol.label not in selection:
            continue
        vdest = dest / vol.label
        vdest.mkdir(mode=0o700)
        art = m.artifact(vol.artifact)
        with stored.target.open_artifact(stored.id, art) as r:
            with progress.reading(r, f"restore {vol.label}", art.raw_size) as counted:
                tar.extract(runner, counted, vdest, checked.scans[(stored.id, vol.artifact)], allow_special,
                            only=selection[vol.label])
            r.finish()
        roots[vol.label] = vdest
        out_vols.append({"volume": vol.volume, "path": str(vdest), "paths": selection[vol.label]})
        for p in selection[vol.label]:
            say(f"restored {vol.volume}: {p} -> {vdest / p}")
    if m.quiescers:
        say("path restore: the databases' extra artifacts and hand-over steps are skipped "
            "(restore the whole backup for a database to start as it was)")
    summary = {"id": m.id, "dest": str(dest), "moved_aside": moved, "volumes": out_vols, "databases": []}
    return Restored(summary, locator(m, roots))


def _durable(result: Restored) -> None:
    """Flush what the restore wrote (its volumes, its extra artifacts) to disk before it reports
    success, like ``tar -x …; sync`` (a drill's scratch copy needs no such flush); raise
    OperationFailed when a filesystem cannot."""
    # a received dataset (``restored_as``) is flushed where it is mounted; unmounted, its data is
    # the pool's, which ``zfs receive`` wrote
    paths = [Path(v["path"]) for v in result.summary["volumes"] if "restored_as" not in v or Path(v["path"]).is_dir()]
    paths += [Path(a["restored"]) for rec in result.records for a in rec.get("artifacts", [])]
    try:
        fs.syncfs(paths)
    except OSError as e:
        raise _flush_failed(e) from None


def _flush_failed(e: OSError) -> OperationFailed:
    return OperationFailed(f"cannot flush the restored files to disk ({e.strerror or e}): {e.filename}")


def _prepare_directory(dest: Path, force: bool, held: Held, driver: str) -> str | None:
    """Make ``dest`` an empty directory of this restore (journaled); return where old content
    was moved, if anywhere. Raise RestoreRefused (nothing written)."""
    if dest.is_symlink():
        raise RestoreRefused(f"{dest} is a symlink; restore refuses to follow it")
    if not dest.exists():  # never its parents: a failed restore removes what it made (restore_dest)
        held.directory(dest, driver=driver)
        return None
    if not dest.is_dir():
        raise RestoreRefused(f"{dest} exists and is not a directory")
    if not any(dest.iterdir()):
        held.directory(dest, keep_dir=True, driver=driver)
        return None
    if not force:
        raise RestoreRefused(f"{dest} is not empty; use --force to move its content aside ({dest}.pre-restore-…)")
    aside = dest.with_name(f"{dest.name}.pre-restore-{time.strftime('%Y%m%dT%H%M%S')}")
    held.move_aside(dest, aside)
    held.directory(dest, driver=driver)
    return str(aside)


def _restore_extras(checked: Checked, q: QuiescerRecord, files_root: Path, runner: Runner, allow_special: bool,
                    say: Say) -> dict[str, Any]:
    """Extract a quiescer's extra artifacts (checked before) into ``DEST/<restore_dir>``; return its
    record as its hooks see it, each extra with ``restored``: where it is."""
    rec = q.facts()
    stored = checked.stored
    for entry, extra in zip(rec["artifacts"], q.artifacts):
        adest = files_root / extra.restore_dir  # one safe component (validated by the manifest)
        adest.mkdir(mode=0o700)
        with stored.target.open_artifact(stored.id, stored.manifest.artifact(extra.artifact)) as r:
            tar.extract(runner, r, adest, checked.scans[(stored.id, extra.artifact)], allow_special)
            r.finish()
        entry["restored"] = str(adest)
        say(f"restored {q.type} {extra.name} -> {adest}")
    return rec

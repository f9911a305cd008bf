"""The driver interface: one plugin per filesystem or volume manager.

Every driver implements the core (``Driver``): preflight, snapshot, export, restore, release,
undo and tool versions. What only some backends can do is an optional capability — a separate
protocol below that a driver class implements and the engine detects with ``isinstance``:

- ``IncrementalBase``: keep a snapshot after a backup as the base of the next incremental export
  (``zfs send -i``, ``btrfs send -p``) when the job's ``mode = "incremental"``;
- ``ChainRestore``: finish a volume once every link of its chain was restored (btrfs: make the
  newest received state writable, remove the intermediate received subvolumes);
- ``DatasetRestore``: restore a backup into a new dataset instead of a directory (``zfs receive``);
- ``DatasetPrecheck``: check a dataset DEST (and the space there) before any artifact is read;
- ``RestoreDirectoryCheck``: refuse a restore directory before anything is written (a ``btrfs
  send`` stream needs a btrfs directory);
- ``CustomDiscard``: remove a restored copy in a way ``rm -r`` cannot (btrfs subvolumes);
- ``SnapshotPlaces``: name the directories its options put snapshots or their mounts in, so the
  core refuses one inside a volume or a database's data (``snapagent.places``).

Register a driver under the ``snapagent.drivers`` entry point group. Run every command through
``self.runner`` (argv lists; reads and mutations marked, so ``--dry-run`` works without code of
yours) and journal everything you take with ``self.journal.open(kind, key, owner)`` *before*
taking it, so ``undo`` can release it after a kill.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar, ContextManager, Protocol, runtime_checkable

from pydantic import BaseModel

from snapagent.util.runner import Runner

if TYPE_CHECKING:
    from snapagent.journal import Journal
    from snapagent.manifest import Manifest, Volume
    from snapagent.util.tar import ScanReport


@dataclass
class Snapshot:
    """One snapshot of one volume: ``handle`` is what the driver needs to find it again; ``info``
    holds the driver's facts, recorded in the manifest's volume record (``info``)."""

    volume: str
    handle: str
    name: str
    info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DirectoryDest:
    """Restore one volume into directory ``path``: it does not exist yet for a full export; for an
    incremental one it holds the restored chain so far."""

    path: Path


@dataclass(frozen=True)
class DatasetDest:
    """Restore one volume into dataset ``name`` (a DatasetRestore driver)."""

    name: str


VolumeDest = DirectoryDest | DatasetDest


@dataclass(frozen=True)
class PreparedDataset:
    """What ``DatasetRestore.prepare_dataset`` made: the new dataset ``name`` (volumes restore into
    ``name/<label>``), the directory where its files appear, and the name an existing dataset was
    moved aside to (or None)."""

    name: str
    files: Path
    moved_aside: str | None = None


class Driver:
    """Base class of snapshot drivers: set the class attributes, implement the methods."""

    name: ClassVar[str] = "?"
    #: True when several volumes are snapshotted at one instant (one call); the engine holds the
    #: quiescers across all snapshots either way.
    atomic: ClassVar[bool] = False
    #: Export formats, the default first.
    export_formats: ClassVar[tuple[str, ...]] = ("tar",)
    #: pydantic model of ``[jobs.X.options]`` (None: the driver takes no options).
    Options: ClassVar[type[BaseModel] | None] = None

    def __init__(self, runner: Runner, options: Any = None):
        self.runner = runner
        self.options = options if options is not None else (self.Options() if self.Options else None)
        #: The run's step journal, set by the engine before ``snapshot``/``restore`` (None in dry run).
        self.journal: Journal | None = None

    @classmethod
    def volume_refusal(cls, volume: str) -> str | None:
        """Config check, before anything runs: return why ``volume`` can never name one of this
        driver's volumes (e.g. a relative path where an absolute one is needed), or None."""
        return None

    def preflight(self, volumes: list[str]) -> list[Path]:
        """Check tools, that each volume exists and is of this driver's kind; take nothing.

        Return, per volume, the directory where its live files are visible (database files are
        placed on volumes by these). Raise PreflightFailed naming the volume and what is wrong.
        """
        raise NotImplementedError

    def before_quiesce(self, volumes: list[str]) -> None:
        """Take what the snapshots will need (journaled, like everything taken) before the first
        quiescer holds, so it does not count in the freeze window; called once per backup run
        after ``journal`` is set. Default: nothing."""

    def prepare_snapshot(self, volumes: list[str], name: str) -> None:
        """Before the freeze window (no lock held yet): do what ``snapshot(volumes, name, …)``
        needs besides the snapshot calls — journal records, directories, lookups — so the window
        holds only those calls. A journaled snapshot that is never taken is undone as "already
        gone". Default: nothing (``snapshot`` does it all). Raise SnapshotFailed."""

    def snapshot(self, volumes: list[str], name: str, deadline: float) -> list[Snapshot]:
        """Snapshot every volume (journaling each before it is made, unless ``prepare_snapshot``
        did); return them in order.

        ``deadline`` is a ``time.monotonic()`` value no command may run past. Raise SnapshotFailed.
        """
        raise NotImplementedError

    def export(self, snap: Snapshot, fmt: str, base: "Volume | None" = None) -> ContextManager[IO[bytes]]:
        """Return a context manager yielding a readable byte stream of ``snap`` in ``fmt``; on exit
        it waits for the stream, releases what export took (mounts), and raises ExportFailed — or
        SnapshotFailed when the snapshot became invalid meanwhile (a full LVM COW snapshot).

        ``base`` (IncrementalBase drivers only) is the previous backup's record of the same volume;
        a driver that exports incrementally from it sets ``snap.info["parent_snapshot"]``."""
        raise NotImplementedError

    def release(self, snap: Snapshot) -> None:
        """Destroy ``snap`` and close its journal entry. Idempotent."""
        raise NotImplementedError

    def restore(self, stream: IO[bytes], fmt: str, dest: VolumeDest, record: "Volume",
                scan: "ScanReport | None", allow_special: bool = False) -> Path:
        """Restore one exported volume (one link of its chain) from ``stream`` into ``dest``;
        return the directory holding the restored files. ``record`` is the manifest's volume
        record; ``scan`` is the checked member list of a tar stream (extract with
        ``snapagent.util.tar.extract``, which checks it again as it writes). Raise
        RestoreRefused / OperationFailed."""
        raise NotImplementedError

    @classmethod
    def undo(cls, record: dict[str, Any], runner: Runner) -> str:
        """Undo one open journal record of a killed run (a snapshot, a mount); return what was done."""
        raise NotImplementedError

    def tool_versions(self) -> dict[str, str]:
        """Return {tool: version} for the manifest."""
        return {}


@runtime_checkable
class IncrementalBase(Protocol):
    """Keeps each snapshot after a backup as the base of the next incremental export. The engine
    uses it only for jobs with ``mode = "incremental"``; with ``mode = "full"`` nothing is kept."""

    @classmethod
    def incremental_refusal(cls, fmt: str, options: Any) -> str | None:
        """Return why a job exporting ``fmt`` with ``options`` cannot run in incremental mode
        (config check refuses it), or None when it can."""

    def keeps_base(self, fmt: str) -> bool:
        """Return True when snapshots exported in ``fmt`` can be kept (``keep``) as the base of the
        next incremental export (the job's mode aside)."""

    def keep(self, snap: Snapshot) -> None:
        """Keep ``snap`` as the next base (e.g. ``zfs hold``) and close its journal entry."""

    def release_base(self, record: "Volume") -> None:
        """Release the base an earlier backup kept (its manifest volume record). Idempotent;
        never touches a snapshot that is not the one the record names."""


@runtime_checkable
class ChainRestore(Protocol):
    """Finishes a volume after every link of its chain (full first) went through ``restore``."""

    def finish_chain(self, dest: VolumeDest, record: "Volume") -> Path:
        """Finish the restore of one volume into ``dest`` whose newest link is ``record``: leave
        the newest state where ``dest`` says, remove what intermediate links left behind; return
        the directory holding the restored files. Raise OperationFailed."""


@runtime_checkable
class DatasetRestore(Protocol):
    """Restores (some of) its backups into a new dataset instead of a directory."""

    def prepare_dataset(self, dest: str, manifest: "Manifest", force: bool) -> PreparedDataset | None:
        """Return None when ``manifest``'s backup restores into a directory. Otherwise check that
        ``dest`` names a new dataset, move an existing one aside when ``force``, create it
        (journaled) and return it. Raise RestoreRefused (nothing written)."""

    def drill_dataset(self, manifest: "Manifest", unique: str) -> str | None:
        """Return the name of a scratch dataset for a drill of ``manifest`` (None: a scratch
        directory will do). The drill creates it with ``prepare_dataset`` and journals it."""


@dataclass(frozen=True)
class DatasetSpace:
    """What ``DatasetPrecheck.check_dataset`` found: the bytes available where the new dataset
    would be received (None: unknown) and where that is, in words (e.g. "zfs dataset tank")."""

    free: int | None
    where: str


@runtime_checkable
class DatasetPrecheck(Protocol):
    """Checks a dataset DEST before restore reads any artifact (restore's ``precheck``)."""

    def check_dataset(self, dest: str, manifest: "Manifest", force: bool) -> DatasetSpace | None:
        """Read only. Return None when ``manifest``'s backup restores into a directory; else raise
        RestoreRefused when ``dest`` cannot become the new dataset ``prepare_dataset`` would
        make (its name, its pool, an existing one without ``force``), or return the space there."""


@runtime_checkable
class RestoreDirectoryCheck(Protocol):
    """Can refuse a restore directory before anything is written."""

    def check_restore_directory(self, dest: Path, fmt: str) -> None:
        """Raise RestoreRefused when ``dest`` (which may not exist yet) cannot receive ``fmt``."""


@runtime_checkable
class CustomDiscard(Protocol):
    """Removes restored copies (drill scratch space) that ``rm -r`` cannot."""

    @classmethod
    def discard(cls, path: Path, runner: Runner) -> None:
        """Remove the restored tree at ``path``."""


@runtime_checkable
class SnapshotPlaces(Protocol):
    """Its options can put snapshots (or their mounts) at a directory of the user's choice."""

    @classmethod
    def configured_places(cls, options: Any) -> list[tuple[str, str]]:
        """Return (key under the job, path as configured) of each such directory ``options`` set,
        e.g. ``[("options.snapshot_dir", "/srv/.snaps")]``; [] when the defaults apply."""

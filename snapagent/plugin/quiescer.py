"""The quiescer interface: one plugin per database or freeze method.

Backup, per run: ``preflight()`` (takes no locks) → ``quiesce(deadline)`` (takes the lock on a
connection it keeps) → snapshot → ``verify()`` (still the same session?) → ``release()``
(idempotent, bounded, never raises; returns what goes into the manifest) → ``artifacts()`` (extra
data the backup needs). Restore: ``prepare_restore(record, locate, ctx)`` makes the restored
database start as it is; drill: ``drill(record, locate, ctx)`` checks a restored copy. ``undo``
releases what a killed run journaled. After prune, a quiescer whose backups draw on a directory
outside them (PostgreSQL's WAL archive) names it (``archive``) and removes from it what no kept
backup needs (``clean_archive``). Register under ``snapagent.quiescers``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Callable, ClassVar, ContextManager

from pydantic import BaseModel

from snapagent.util.runner import Runner

if TYPE_CHECKING:
    from snapagent.config import Config
    from snapagent.held import Held

#: Maps a live path a quiescer recorded to where it is in the restore (inside DEST, symlinks
#: resolved); raises NotFound for a path the backup does not hold, RestoreRefused for one that
#: would lead outside.
Locate = Callable[[str], Path]


@dataclass
class QuiesceContext:
    """What a quiescer knows of the run it is part of."""

    job: str
    runner: Runner
    volumes: list[str]
    dry_run: bool = False
    #: The run's step journal, set before ``quiesce()`` (None in dry-run). A quiescer whose lock
    #: does not die with the agent (fsfreeze) journals it with owner {"kind": "quiescer", "name": type}
    #: and implements ``undo``.
    journal: Any = None
    #: {what: path} of places the agent itself writes to (state dir, local targets): a freeze
    #: quiescer must refuse the filesystems holding them.
    protected: dict[str, Path] = field(default_factory=dict)
    #: Set by the engine's preflight before ``files()`` is called: the directory of each volume
    #: (``driver.volume_root``) and whether the driver snapshots all volumes at one instant.
    volume_roots: list[Path] = field(default_factory=list)
    atomic: bool = False


@dataclass
class ExtraArtifact:
    """Data a quiescer adds to the backup besides the volumes (e.g. archived WAL segments).

    ``name`` is short ([a-z0-9-]); ``open()`` returns a context manager yielding a tar stream.
    The engine stores it through the target, records it in the quiescer's manifest record under
    ``artifacts`` (with the ``restore_dir`` it will be extracted to) and restore extracts it there
    before ``prepare_restore`` runs.
    """

    name: str
    open: Callable[[], ContextManager[IO[bytes]]]


@dataclass(frozen=True)
class DrillScene:
    """Where a drill restored a backup: its id, its job's name, the scratch copy (``dest``) and
    each volume as (its name in the job's ``volumes``, where it was restored)."""

    backup_id: str
    job: str
    dest: Path
    volumes: list[tuple[str, Path]]


@dataclass
class RestoreContext:
    """What a quiescer's restore and drill hooks get: the runner (``agent.tools``, dry run), the
    configuration, ``held`` — take scratch directories, mounts, ACL entries and server processes
    only through it, so they are journaled and given back — and ``say`` for progress lines.

    In a drill also: ``drill`` (where the copy is) and ``settings``: this quiescer's entry in the
    *current* config of the backup's job (the validated plugin config at the same position of its
    ``quiesce`` list, when that is still of the same type; else None) — so a probe added to the
    config after a backup applies to that backup's drill."""

    runner: Runner
    config: "Config"
    held: "Held"
    say: Callable[[str], None] = lambda line: None
    drill: DrillScene | None = None
    settings: Any = None
    #: The restore's destination directory (DEST, or a restored dataset's mount point); None in
    #: a drill's probes. A hand-over puts its private run directory (socket, log) here.
    dest: Path | None = None


@dataclass(frozen=True)
class Archive:
    """A directory outside the backups that a quiescer's backups draw on (PostgreSQL's WAL
    archive): ``path`` as configured, ``prune`` whether prune may clean it, ``key`` the config key
    that says so (named in messages)."""

    path: Path
    prune: bool
    key: str


@dataclass(frozen=True)
class KeptRecord:
    """One quiescer record of a backup that prune keeps (in some target): whose it is and what it says."""

    backup: str
    job: str
    record: dict[str, Any]


@dataclass
class ArchiveCleanup:
    """What ``clean_archive`` removed (or, in a dry run, would remove) from one archive.

    ``remove``: the file names, oldest first; ``removed``: those actually removed; ``bytes``: their
    size; ``kept_from``: the oldest file every kept backup still needs, and ``needed_by`` the
    backup that needs it; ``kept``: how many archive files stay; ``reason``: why nothing was
    removed (no kept backup, opted out, …), or ""; ``failed``: one message per file that could
    not be removed."""

    quiescer: str
    archive: str
    remove: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    bytes: int = 0
    kept_from: str | None = None
    needed_by: str | None = None
    kept: int = 0
    reason: str = ""
    failed: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Return the ``prune --json`` record of this archive."""
        return {"quiescer": self.quiescer, "archive": self.archive, "remove": self.remove, "removed": self.removed,
                "bytes": self.bytes, "kept_from": self.kept_from, "needed_by": self.needed_by, "kept": self.kept,
                "reason": self.reason, "failed": self.failed}


@dataclass
class Handover:
    """How a restored database is taken over: the same shape for every database, printed by
    ``restore`` as a block per database and carried by ``restore --json`` under
    ``databases[].handover`` (``as_dict``). Commands are argv lists (shown shell-quoted, never run
    through a shell); empty when the database has none (SQLite has no server)."""

    kind: str                      # the quiescer type: "postgresql", "mysql", "sqlite"
    data_dir: str                  # the restored data directory (SQLite: the database file's directory)
    owner: str | None = None       # the user the database runs as; the data is owned by it
    port: int | None = None        # a TCP port free on 127.0.0.1 when the restore chose it
    socket: str | None = None      # the private socket (PostgreSQL: its directory)
    start: list[str] = field(default_factory=list)   # run as root: starts the copy
    check: list[str] = field(default_factory=list)   # a one-line check of the started copy (SQLite: of the file)
    stop: list[str] = field(default_factory=list)    # stops the started copy
    put_in_place: str = ""         # where the steps to replace the live data with the copy are documented
    files: list[str] = field(default_factory=list)   # the database's files (SQLite) or directories besides data_dir
    notes: list[str] = field(default_factory=list)   # what else the user must know, one line each
    details: dict[str, Any] = field(default_factory=dict)  # what the preparation did (relinked, removed …)

    def as_dict(self) -> dict[str, Any]:
        """Return the hand-over as JSON data (every key, always)."""
        return {"kind": self.kind, "data_dir": self.data_dir, "owner": self.owner, "port": self.port,
                "socket": self.socket, "start": list(self.start), "check": list(self.check), "stop": list(self.stop),
                "put_in_place": self.put_in_place, "files": list(self.files), "notes": list(self.notes),
                "details": dict(self.details)}


@dataclass
class ProbeResult:
    """Outcome of one drill probe: ``ok`` plus figures (row counts, check output) for the report."""

    name: str
    ok: bool
    details: dict[str, Any] = field(default_factory=dict)
    message: str = ""


class Quiescer:
    """Base class of quiescers."""

    type: ClassVar[str] = "?"
    Config: ClassVar[type[BaseModel] | None] = None
    #: True when the agent's death releases the lock by itself (session-held database locks);
    #: shown in ``backup --dry-run`` and ``config check``. A quiescer whose lock outlives the
    #: agent journals it (``ctx.journal``) and implements ``undo``.
    releases_on_death: ClassVar[bool] = True
    #: "application" (the database made its files consistent) or "crash" (a crash-consistent image).
    consistency: ClassVar[str] = "application"

    def __init__(self, cfg: Any, ctx: QuiesceContext):
        self.cfg = cfg
        self.ctx = ctx
        #: ``time.monotonic()`` when the lock took effect (writers from then on wait), set by
        #: ``quiesce`` when the quiescer can tell; the freeze window starts at the first one. When
        #: unset, the window counts from the moment ``quiesce`` was called (acquisition included).
        self.held_at: float | None = None

    @classmethod
    def lock_waits(cls, cfg: Any) -> dict[str, float]:
        """Config check: return the keys of ``cfg`` set explicitly that bound how long taking the
        lock may wait (seconds). The engine cuts every wait at the job's max_lock_wait (default
        max_freeze; for all but the first quiescer also max_freeze), so a longer one is refused."""
        return {}

    @classmethod
    def programs(cls, cfg: Any) -> dict[str, str]:
        """Config check: return the programs ``cfg`` names, by key (e.g. a command hook's argv[0]);
        ``config check`` refuses one that is not found (through ``agent.tools`` and PATH)."""
        return {}

    @classmethod
    def job_problems(cls, cfg: Any, volumes: list[str]) -> dict[str, str]:
        """Config check: return {key: problem} for what ``cfg`` gets wrong about its job, whose
        ``volumes`` are given (e.g. a probe placeholder naming no volume of the job)."""
        return {}

    def files(self) -> list[Path]:
        """Return the live files/directories that must lie on the job's volumes."""
        return []

    @classmethod
    def data_dirs(cls, cfg: Any) -> list[Path]:
        """Return the data directories ``cfg`` names itself (``config check`` keeps snapshot places
        out of them without connecting; the backup's preflight uses ``files()``)."""
        return []

    def describe(self) -> str:
        """Return a one-line description for logs and dry-run output."""
        return self.type

    def preflight(self) -> None:
        """Connect and check (privileges, modes); take no lock. Raise PreflightFailed."""

    def prepare(self) -> None:
        """Right before the freeze window (after preflight and the journal's start, before any
        quiescer's lock): do the slow part of ``quiesce`` that needs no lock — a checkpoint, a
        helper process — so the window holds only the lock itself. Bounded; may be skipped (a
        dry run, a failure before it): ``quiesce`` must then do it itself. Raise QuiesceFailed."""

    def quiesce(self, deadline: float) -> None:
        """Take the lock; never wait past ``deadline`` (a ``time.monotonic()`` value); set
        ``held_at`` when it is known. Raise QuiesceFailed."""
        raise NotImplementedError

    def verify(self) -> None:
        """After the snapshot: raise QuiesceFailed if the lock was lost (session changed)."""

    def release(self) -> dict[str, Any]:
        """Release the lock; idempotent, bounded, never raises. Return the manifest record."""
        raise NotImplementedError

    def artifacts(self) -> list[ExtraArtifact]:
        """After ``release()`` of a successful snapshot: return extra data the backup needs to be
        self-contained (stored as tar artifacts). Raise OperationFailed when it cannot be had."""
        return []

    @classmethod
    def archive(cls, cfg: Any) -> Archive | None:
        """Return the directory outside the backups that backups made with ``cfg`` draw on, or
        None (most quiescers: their backups hold everything)."""
        return None

    @classmethod
    def clean_archive(cls, cfg: Any, kept: list[KeptRecord], others: list[Path], dry_run: bool) -> ArchiveCleanup:
        """After prune: remove from ``archive(cfg)`` what none of the ``kept`` records (this
        quiescer type's records of every backup still kept, in every target, of every job sharing
        the archive) needs; ``others``: the archives other quiescers of this type are configured
        with. With no kept record that says what it needs, remove nothing and say why
        (``reason``). ``dry_run``: list, remove nothing. Never raises for a file it cannot remove
        (``failed``)."""
        raise NotImplementedError(f"quiescer {cls.type} keeps no archive")

    @classmethod
    def undo(cls, record: dict[str, Any], runner: Runner) -> str:
        """Undo a journal record this quiescer wrote (e.g. thaw a freeze) left by a killed run."""
        raise NotImplementedError(f"quiescer {cls.type} journals nothing to undo")

    @classmethod
    def prepare_restore(cls, record: dict[str, Any], locate: Locate, ctx: RestoreContext) -> Handover | None:
        """After files are restored: make the restored database startable as it is (e.g. write
        PostgreSQL's backup_label, recovery settings; ownership for the database's user; a private
        socket directory in ``ctx.dest``); return the ``Handover``, or None when this quiescer
        knows no database to hand over (restore says so). A plain dict (older plugins) is shown
        as notes.
        ``record`` is this quiescer's manifest record; each entry of ``record["artifacts"]`` then
        also holds ``restored``: where it was extracted."""
        return None

    @classmethod
    def probes(cls, cfg: Any) -> bool:
        """Config check: whether a drill of a backup taken with ``cfg`` checks something (the
        default: this quiescer has a ``drill`` of its own)."""
        return cls.drill.__func__ is not Quiescer.drill.__func__  # type: ignore[attr-defined]

    @classmethod
    def drill(cls, record: dict[str, Any], locate: Locate, ctx: RestoreContext) -> list[ProbeResult]:
        """Check the restored (and prepared) database described by ``record``; return the probe
        results (empty when this quiescer has no probe). Failed checks are results, not errors."""
        return []

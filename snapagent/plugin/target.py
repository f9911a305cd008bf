"""The target interface: where backups are stored, atomically, with a manifest and checksums.

Register a target under the ``snapagent.targets`` entry point group. A backup exists iff its
manifest exists. A target stores and returns bytes; the manifest is written and read only through
``snapagent.manifest`` (``dumps``/``loads``), and a manifest that cannot be trusted makes that one
backup ``Damaged`` — never the whole listing.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Callable, ClassVar

from pydantic import BaseModel

from snapagent.errors import TargetFailed
from snapagent.manifest import Artifact, Manifest
from snapagent.manifestcache import Summary
from snapagent.util.runner import Runner


class Stored:
    """A complete backup as found in a target: its manifest, the target, and where it lies there
    (runtime facts beside the manifest, never in it).

    A listing may hand out a lazy one (``Stored.lazy``): its ``summary`` (id, job, times, size,
    freeze window) comes from the manifest cache (``snapagent.manifestcache``), and ``manifest``
    is validated from the same bytes only when some code asks for it. ``id``, ``created`` and
    ``size`` never need the whole manifest."""

    __slots__ = ("id", "target", "location", "_manifest", "_summary", "_load")

    def __init__(self, manifest: Manifest, target: "Target", location: str):
        self.id = manifest.id
        self._manifest: Manifest | None = manifest
        self.target = target
        self.location = location
        self._summary: Summary | None = None
        self._load: Callable[[], Manifest] | None = None

    @classmethod
    def lazy(cls, summary: Summary, target: "Target", location: str, load: Callable[[], Manifest]) -> "Stored":
        """Return a backup known by its cached ``summary``; ``load()`` returns (validates) its
        Manifest when ``manifest`` is first read, and raises what ``manifest.loads`` raises."""
        s = cls.__new__(cls)
        s.id, s._manifest, s.target, s.location, s._summary, s._load = summary.id, None, target, location, summary, load
        return s

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = self._load()
            self._load = None
        return self._manifest

    @property
    def summary(self) -> Summary:
        if self._summary is None:
            self._summary = Summary.of(self.manifest)
        return self._summary

    @property
    def created(self) -> datetime:
        return self.summary.created

    @property
    def size(self) -> int:
        """Stored bytes of all artifacts."""
        return self.summary.size

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Stored):
            return NotImplemented
        return (self.target, self.location, self.id) == (other.target, other.location, other.id)

    def __hash__(self) -> int:
        return hash((id(self.target), self.location, self.id))

    def __repr__(self) -> str:
        return f"Stored({self.id!r}, target={self.target.name!r}, location={self.location!r})"


@dataclass(frozen=True)
class Damaged:
    """A backup whose manifest cannot be trusted: named by where it is stored, with the reason."""

    id: str
    job: str
    target: "Target"
    location: str
    reason: str


def listing_order(b: Stored | Damaged) -> tuple[str, str]:
    """Sort key of listings: creation time (for a damaged backup, the time in its id), then id."""
    if isinstance(b, Stored):
        return b.summary.order, b.id
    return b.id[-16:-1], b.id


class ArtifactReader:
    """Reads one artifact's bytes (decompressed); ``finish()`` reads what is left and raises
    VerifyFailed when the stored size or sha256 differ from the manifest."""

    def read(self, n: int = -1) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def readable(self) -> bool:
        return True

    def finish(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def __enter__(self) -> "ArtifactReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Writer:
    """A backup being written; nothing of it is visible until ``commit``."""

    def add_artifact(self, name: str, stream: IO[bytes]) -> Artifact:
        """Store ``stream`` as artifact ``name`` (checksummed, durable); return its record."""
        raise NotImplementedError

    def add_stored(self, art: Artifact, stream: IO[bytes]) -> Artifact:
        """Store ``stream``, the bytes of artifact ``art`` exactly as another target stored them
        (already compressed or encoded: a copy never re-encodes), under ``art.name``; return the
        record of what was written, whose size and sha256 the caller compares with ``art``.

        The default stores uncompressed artifacts through ``add_artifact``; a target that keeps
        encoded bytes as they are (the directory target) overrides it. Raise TargetFailed when
        this target cannot store ``art`` as it is."""
        if art.compression != "none":
            raise TargetFailed(f"this target cannot store the {art.compression}-compressed artifact {art.name} "
                               "as it is")
        return self.add_artifact(art.name, stream)

    def commit(self, manifest: Manifest) -> None:
        """Write the manifest last and make the backup visible atomically (and close the journal
        record of the temp place). What an uncommitted writer wrote is removed by ``undo``."""
        raise NotImplementedError


class Target:
    """Base class of targets. Subclasses set ``type`` and ``Config`` (a pydantic model of the
    ``[targets.NAME]`` table) and implement the methods."""

    type: ClassVar[str] = "?"
    Config: ClassVar[type[BaseModel] | None] = None
    # The age identities given with --identity (snapagent.util.age.Identities), set on every
    # instance by Config.target: only reading an encrypted artifact's content needs them.
    identities: Any = None
    #: the agent's state dir (set by ``Config.target``): where a target may keep its own locks
    state_dir: Path | None = None

    def __init__(self, name: str, cfg: Any):
        self.name = name
        self.cfg = cfg

    def describe(self) -> str:
        return f"{self.type} target {self.name!r}"

    def local_paths(self) -> list[Path]:
        """Return the local directories this target writes to (none for a remote target)."""
        return []

    def preflight(self, job: str) -> None:
        """Check the target is writable for ``job``; raise PreflightFailed."""

    def begin(self, job: str, backup_id: str, journal) -> Writer:
        """Start writing backup ``backup_id`` (its temp place journaled first); return its Writer."""
        raise NotImplementedError

    def list(self, job: str | None = None) -> list[Stored | Damaged]:
        """Return the committed backups (of ``job``), good or damaged, oldest first by id."""
        raise NotImplementedError

    def get(self, backup_id: str) -> Stored | Damaged | None:
        """Return backup ``backup_id``, or None when this target does not hold it."""
        raise NotImplementedError

    def open_artifact(self, backup_id: str, art: Artifact) -> ArtifactReader:
        """Return a reader of the artifact's decompressed bytes that checks size and sha256 at
        ``finish()``. Raise NotFound / VerifyFailed when it is missing or not a regular file. An
        encrypted artifact is decrypted with ``self.identities``; without them ``finish()`` still
        checks the stored bytes and ``read()`` raises UsageError."""
        raise NotImplementedError

    def open_stored(self, backup_id: str, art: Artifact) -> ArtifactReader:
        """Return a reader of the artifact's bytes as stored (not decompressed: what a copy
        streams into ``Writer.add_stored``) that checks size and sha256 at ``finish()``. The
        default serves uncompressed artifacts through ``open_artifact``. Raise NotFound /
        VerifyFailed, or TargetFailed when this target cannot hand out the stored bytes."""
        if art.compression != "none":
            raise TargetFailed(f"{self.describe()} cannot hand out the stored bytes of {art.name}")
        return self.open_artifact(backup_id, art)

    def delete(self, backup_id: str) -> None:
        """Remove a backup: it disappears from listings atomically first, then its artifacts go
        (retention's primitive). Prune journals a ``delete`` record keyed by the backup's
        ``Stored.location`` (owner: this target's type) before calling it: ``undo`` of that record
        must finish a delete that began and leave a backup it had not reached intact."""
        raise NotImplementedError

    @classmethod
    def undo(cls, record: dict, runner: Runner) -> str:
        """Undo a killed run's record — a temp place (``temp``) or a begun ``delete``; return what was done."""
        raise NotImplementedError

"""The driver interface: one plugin per filesystem / volume manager.

A driver creates snapshots of its volumes (atomically where the backend can), exports them as
streams, restores streams, releases snapshots, and undoes what a killed run left behind (from the
step journal). Register a driver under the ``snapagent.drivers`` entry-point group.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, Iterator

from pydantic import BaseModel

from ..journal import Journal
from ..runner import Runner


@dataclass
class Snapshot:
    """One snapshot of one volume: ``handle`` is what the driver needs to find it again."""

    volume: str
    handle: str
    name: str
    info: dict[str, Any] = field(default_factory=dict)


class Driver:
    """Base class of snapshot drivers. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str] = "?"
    #: True when several volumes are snapshotted at one instant (one call); the engine always holds
    #: the quiescers across all snapshots either way.
    atomic: ClassVar[bool] = False
    #: Export formats, the default first.
    export_formats: ClassVar[tuple[str, ...]] = ("tar",)
    #: pydantic model of ``[jobs.X.options]`` (None: the driver takes no options).
    Options: ClassVar[type[BaseModel] | None] = None

    def __init__(self, runner: Runner, options: Any = None, journal: Journal | None = None):
        self.runner = runner
        self.options = options if options is not None else (self.Options() if self.Options else None)
        self.journal = journal

    def preflight(self, volumes: list[str]) -> None:
        """Check tools, that each volume exists and is of this driver's kind; take nothing.

        Raises PreflightFailed naming the volume and what is wrong.
        """
        raise NotImplementedError

    def volume_root(self, volume: str) -> Path:
        """Return the directory where ``volume``'s live files are visible (to place database files)."""
        raise NotImplementedError

    def snapshot(self, volumes: list[str], name: str, deadline: float) -> list[Snapshot]:
        """Snapshot every volume (journaling each before it is made) and return the snapshots.

        ``deadline`` is a ``time.monotonic()`` value no command may run past. Raises SnapshotFailed.
        """
        raise NotImplementedError

    def check(self, snaps: list[Snapshot]) -> None:
        """Raise SnapshotFailed when a snapshot became invalid (e.g. a full LVM COW snapshot)."""

    @contextlib.contextmanager
    def export(self, snap: Snapshot, fmt: str, parent: dict | None = None) -> Iterator[IO[bytes]]:
        """Yield a readable byte stream of ``snap`` in ``fmt``; on exit wait for it and release
        what export took (mounts). Raises ExportFailed.

        ``parent`` (only when ``keeps_base``) is the previous backup's manifest volume record of
        the same volume, plus ``backup_id``; a driver that exports incrementally from it sets
        ``snap.info["parent_snapshot"]`` so the engine records the chain."""
        raise NotImplementedError
        yield  # pragma: no cover

    def release(self, snap: Snapshot) -> None:
        """Destroy ``snap`` and close its journal entry. Idempotent."""
        raise NotImplementedError

    def keeps_base(self, fmt: str) -> bool:
        """Return True when each snapshot is kept after the backup as the base of the next
        incremental export in ``fmt`` (the engine then calls ``keep`` instead of ``release``)."""
        return False

    def keep(self, snap: Snapshot) -> None:
        """Keep ``snap`` as an incremental base (e.g. ``zfs hold``) and close its journal entry."""
        if self.journal:
            self.journal.close("snapshot", snap.handle)

    def release_base(self, item: dict) -> None:
        """Release the base an earlier backup kept (its manifest volume item). Idempotent."""

    def check_restore_dest(self, dest: Path, fmt: str) -> None:
        """Raise RestoreRefused when ``dest`` (which may not exist yet) cannot receive ``fmt``;
        called before anything is written."""

    def discard(self, path: Path) -> None:
        """Remove a restored copy at ``path`` (drill scratch space)."""
        import shutil

        shutil.rmtree(path, ignore_errors=True)

    def restore(self, stream: IO[bytes], fmt: str, dest: Path, item: dict, allow_special: bool = False) -> Path:
        """Restore one exported volume from ``stream`` into ``dest`` (``dest`` does not exist yet
        for a full stream; for an incremental one — ``item["parent"]`` set — it holds the restored
        parent chain); return the directory holding the restored files. ``item`` is the manifest's
        volume record (for tar, ``item["_scan"]`` is the tario.ScanReport of the verified stream).
        Raises RestoreRefused / OperationFailed."""
        raise NotImplementedError

    @classmethod
    def undo(cls, record: dict, runner: Runner) -> str:
        """Undo one open journal record of a killed run (a snapshot, a mount); return what was done."""
        raise NotImplementedError

    def tool_versions(self) -> dict[str, str]:
        """Return {tool: version} for the manifest."""
        return {}

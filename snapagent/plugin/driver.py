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

from snapagent.errors import CommandFailed, ExportFailed
from snapagent.journal import Journal
from snapagent.util.runner import Runner


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

    @contextlib.contextmanager
    def stream_export(self, argv: list[str], snap: Snapshot) -> Iterator[IO[bytes]]:
        """Run the read-only export command ``argv`` and yield its stdout; on exit wait for it
        (CommandFailed becomes ExportFailed naming the volume) and never leave it running."""
        proc = self.runner.stream(argv, mutating=False)
        try:
            yield proc.stdout
            proc.wait()
        except CommandFailed as e:
            raise ExportFailed(f"export of {snap.volume!r} failed: {e}") from None
        finally:
            proc.kill()

    def first_lines(self, commands: dict[str, list[str]], timeout: float = 30) -> dict[str, str]:
        """Return {tool: first line of ``argv``'s output} ("?" when it fails) for ``tool_versions``."""
        out = {}
        for tool, argv in commands.items():
            try:
                out[tool] = self.runner.run(argv, mutating=False, timeout=timeout).stdout.splitlines()[0].strip()
            except (CommandFailed, IndexError):
                out[tool] = "?"
        return out

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

    def prepare_destination(self, dest: str, manifest: dict, force: bool) -> tuple[str, str | None, Path] | None:
        """Say what ``restore --to DEST`` means for a backup this driver made (``manifest``).

        Return None (the default) when DEST is a directory: the core prepares it and each volume
        restores into ``DEST/<label>``. A driver whose backups restore into something else (a new
        ZFS dataset) checks DEST, moves an existing one aside when ``force``, creates it and returns
        ``(name, moved_aside_or_None, directory)``; each volume then restores into
        ``"<name>/<label>"`` and quiescers' extra artifacts go below ``directory`` (where DEST's
        files appear). Called after verification; raises RestoreRefused (nothing written)."""
        return None

    def drill_destination(self, manifest: dict, unique: str) -> str | None:
        """Return where a drill of ``manifest`` restores when that is not a scratch directory (e.g.
        a scratch dataset named with ``unique``), or None (the default: a scratch directory). The
        drill removes it afterwards with ``discard(name)``."""
        return None

    def discard(self, path: Path | str) -> None:
        """Remove a restored copy at ``path`` (drill scratch space; a str is a name returned by
        ``drill_destination``)."""
        import shutil

        shutil.rmtree(path, ignore_errors=True)

    def restore(self, stream: IO[bytes], fmt: str, dest: Path | str, item: dict, allow_special: bool = False) -> Path:
        """Restore one exported volume from ``stream`` into ``dest`` (a str when
        ``prepare_destination`` named the destination; a directory Path otherwise, which does not exist yet
        for a full stream; for an incremental one — ``item["parent"]`` set — it holds the restored
        parent chain); return the directory holding the restored files. ``item`` is the manifest's
        volume record (for tar, ``item["_scan"]`` is the tar.ScanReport of the verified stream).
        Raises RestoreRefused / OperationFailed."""
        raise NotImplementedError

    @classmethod
    def undo(cls, record: dict, runner: Runner) -> str:
        """Undo one open journal record of a killed run (a snapshot, a mount); return what was done."""
        raise NotImplementedError

    def tool_versions(self) -> dict[str, str]:
        """Return {tool: version} for the manifest."""
        return {}

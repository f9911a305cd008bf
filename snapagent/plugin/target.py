"""The target interface: where backups are stored, atomically, with a manifest and checksums.

Register under ``snapagent.targets``. A backup exists iff its manifest exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar, Iterator

from pydantic import BaseModel

from snapagent.util.runner import Runner


@dataclass
class ArtifactInfo:
    """One stored artifact as recorded in the manifest."""

    name: str
    size: int
    sha256: str
    compression: str
    raw_size: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Writer:
    """An in-progress backup in a target; nothing is visible until ``commit``."""

    def add_artifact(self, name: str, stream: IO[bytes]) -> ArtifactInfo:
        raise NotImplementedError

    def commit(self, manifest: dict[str, Any]) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


class Target:
    """Base class of targets."""

    type: ClassVar[str] = "?"
    Config: ClassVar[type[BaseModel] | None] = None

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
        """Start writing backup ``backup_id`` (its temp place journaled); return its Writer."""
        raise NotImplementedError

    def list(self, job: str | None = None) -> list[dict[str, Any]]:
        """Return the manifests of the committed backups (of ``job``), oldest first."""
        raise NotImplementedError

    def get(self, backup_id: str) -> dict[str, Any] | None:
        """Return the manifest of ``backup_id`` or None."""
        raise NotImplementedError

    def open_artifact(self, backup_id: str, art: dict[str, Any]) -> "ArtifactReader":
        """Return a reader of the artifact's decompressed bytes that checks size and sha256 at EOF."""
        raise NotImplementedError

    def delete(self, backup_id: str) -> None:
        raise NotImplementedError

    @classmethod
    def undo(cls, record: dict, runner: Runner) -> str:
        """Remove a temp place a killed run left behind; return what was done."""
        raise NotImplementedError


class ArtifactReader:
    """Protocol-ish: ``read(n)``, ``close()``, and ``check()`` raising VerifyFailed after EOF."""

    def read(self, n: int = -1) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    def drain(self) -> Iterator[bytes]:  # pragma: no cover - interface
        raise NotImplementedError

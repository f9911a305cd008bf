"""The plugin interfaces — everything a driver, quiescer or target plugin implements or receives —
and helpers for plugin authors (``helpers``). Built-ins implement them exactly as third-party
plugins do."""

from .driver import (CustomDiscard, DatasetDest, DatasetRestore, DirectoryDest, Driver, IncrementalBase,
                     PreparedDataset, RestoreDirectoryCheck, Snapshot, VolumeDest)
from .quiescer import ExtraArtifact, Locate, ProbeResult, QuiesceContext, Quiescer, RestoreContext
from .target import ArtifactReader, Damaged, Stored, Target, Writer

__all__ = [
    "CustomDiscard", "DatasetDest", "DatasetRestore", "DirectoryDest", "Driver", "IncrementalBase",
    "PreparedDataset", "RestoreDirectoryCheck", "Snapshot", "VolumeDest",
    "ExtraArtifact", "Locate", "ProbeResult", "QuiesceContext", "Quiescer", "RestoreContext",
    "ArtifactReader", "Damaged", "Stored", "Target", "Writer",
]

"""The plugin interfaces — everything a driver, quiescer or target plugin implements or receives —
and helpers for plugin authors (``helpers``). Built-ins implement them exactly as third-party
plugins do."""

from snapagent.plugin.driver import (
                     CustomDiscard,
                     DatasetDest,
                     DatasetRestore,
                     DirectoryDest,
                     Driver,
                     IncrementalBase,
                     PreparedDataset,
                     RestoreDirectoryCheck,
                     Snapshot,
                     VolumeDest,
)
from snapagent.plugin.quiescer import ExtraArtifact, Locate, ProbeResult, QuiesceContext, Quiescer, RestoreContext
from snapagent.plugin.target import ArtifactReader, Damaged, Stored, Target, Writer

__all__ = [
    "CustomDiscard", "DatasetDest", "DatasetRestore", "DirectoryDest", "Driver", "IncrementalBase",
    "PreparedDataset", "RestoreDirectoryCheck", "Snapshot", "VolumeDest",
    "ExtraArtifact", "Locate", "ProbeResult", "QuiesceContext", "Quiescer", "RestoreContext",
    "ArtifactReader", "Damaged", "Stored", "Target", "Writer",
]

"""The restic target (``type = "restic"``): backups as snapshots in a restic repository."""

from snapagent.targets.restic.target import ResticTarget

__all__ = ["ResticTarget"]

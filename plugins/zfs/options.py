"""``[jobs.X.options]`` of the zfs driver."""

from __future__ import annotations

from pydantic import ByteSize, field_validator

from snapagent.config import Strict

from .names import dataset_problem


class ZfsOptions(Strict):
    #: ``zfs snapshot -r``: snapshot every descendant too (send exports then use ``zfs send -R``;
    #: tar export is refused because ``.zfs/snapshot`` of a parent does not show its children).
    recursive: bool = False
    #: Datasets of different pools cannot be snapshotted atomically. False (default): preflight
    #: refuses such a job. True: one ``zfs snapshot`` per pool, in sequence, while every quiescer
    #: still holds (each pool's group is atomic; across pools the instants differ by milliseconds).
    cross_pool: bool = False
    #: Deprecated: the job's ``mode = "incremental"`` decides (``zfs send -i`` from the previous
    #: backup's snapshot, kept with a ``zfs hold`` until the next backup replaces it). Accepted for
    #: old configs; ``false`` together with ``mode = "incremental"`` is refused.
    incremental: bool | None = None
    #: ``zfs send`` flags: -w (raw: encrypted datasets stay encrypted), -c (compressed), -L (large blocks).
    raw: bool = False
    compressed: bool = False
    large_blocks: bool = False
    #: Preflight refuses when a dataset has less space available than this ("64MiB", bytes).
    min_free: ByteSize = ByteSize(64 * 1024 * 1024)
    #: Where `snapagent drill` receives send backups (a scratch dataset below it is destroyed after
    #: the probes). Default: ``<pool of the first volume>/snapagent-drill``.
    drill_parent: str | None = None

    @field_validator("drill_parent")
    @classmethod
    def _dataset(cls, v: str | None) -> str | None:
        if v is not None and (why := dataset_problem(v)):
            raise ValueError(f"not a valid ZFS dataset name: {why}")
        return v

    def send_flags(self) -> list[str]:
        """Return the extra ``zfs send`` flags these options ask for."""
        return [f for on, f in ((self.raw, "-w"), (self.compressed, "-c"), (self.large_blocks, "-L")) if on]

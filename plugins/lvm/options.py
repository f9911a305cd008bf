"""``[jobs.X.options]`` of the LVM drivers (unknown keys are errors, like everywhere)."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import Field, field_validator

from snapagent.config import Duration, Strict

from .sizing import SizePolicy, parse_policy

_MOUNT_OPT = re.compile(r"^[A-Za-z0-9_.:/+=-]+$")


class LvmCommonOptions(Strict):
    #: where snapshots are mounted privately (``<mount_base>/<snapshot>/root``); default: $TMPDIR or /tmp
    mount_base: Path | None = None
    #: extra mount options after ``ro`` (and ``nouuid`` on XFS), e.g. ``["noload"]`` for ext4
    mount_options: list[str] = Field(default_factory=list)

    @field_validator("mount_base")
    @classmethod
    def _abs(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_absolute():
            raise ValueError("must be an absolute path")
        return v

    @field_validator("mount_options")
    @classmethod
    def _opts(cls, v: list[str]) -> list[str]:
        for o in v:
            if not _MOUNT_OPT.match(o):
                raise ValueError(f"mount option {o!r}: one option per item, no commas or spaces")
            if o in ("rw", "remount") or o.startswith("rw,"):
                raise ValueError(f"mount option {o!r}: snapshots are always mounted read-only")
        return v


class LvmOptions(LvmCommonOptions):
    """Classic (copy-on-write) snapshots."""

    #: COW space of each snapshot: a percentage of its origin ("20%") or a size ("256M", "2G")
    snapshot_size: str = "20%"
    #: how often Snap% is polled while a snapshot is exported
    poll_interval: Duration = 1.0

    @field_validator("snapshot_size")
    @classmethod
    def _size(cls, v: str) -> str:
        parse_policy(v)
        return v

    @field_validator("poll_interval")
    @classmethod
    def _interval(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be positive")
        return v

    @property
    def policy(self) -> SizePolicy:
        return parse_policy(self.snapshot_size)


class LvmThinOptions(LvmCommonOptions):
    """Thin snapshots: refuse to snapshot when the thin pool is fuller than these percentages."""

    max_data_percent: float = 80.0
    max_metadata_percent: float = 80.0

    @field_validator("max_data_percent", "max_metadata_percent")
    @classmethod
    def _pct(cls, v: float) -> float:
        if not 0 < v <= 100:
            raise ValueError("must be above 0 and at most 100")
        return v

"""The record of a job's last run: ``<state_dir>/runs/<job>.json`` (0600), written atomically after
every ``backup`` — success, failure or interruption — with the facts of the last success carried
over, so ``check``, ``status`` and the metrics know how the job is doing without a target scan."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from snapagent.util.fs import write_atomic

if TYPE_CHECKING:
    from snapagent.manifest import Manifest

log = logging.getLogger("snapagent.monitor")

Result = Literal["success", "failure", "interrupted"]


class Success(BaseModel):
    """The facts of one successful run (carried over by the runs that fail after it)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    started: datetime
    ended: datetime
    duration_seconds: float
    backup_id: str
    size_bytes: int
    freeze_window_seconds: float
    #: How that window split: {lock, snapshot, verify, release: seconds} (empty for backups
    #: taken before manifests recorded it).
    freeze_phase_seconds: dict[str, float] = {}


class RunRecord(BaseModel):
    """One run of a job: when, how long, how it ended, and the last success known at its end."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    job: str
    started: datetime
    ended: datetime
    duration_seconds: float
    result: Result
    error: str | None = None
    backup_id: str | None = None
    size_bytes: int | None = None
    freeze_window_seconds: float | None = None
    last_success: Success | None = None
    warnings: list[str] = []  # a successful run's warnings, e.g. a copy to a copy_to target that failed
    copy_failed: list[str] = []  # the copy_to targets that did not get this run's backup


def freeze_phases(m: "Manifest") -> dict[str, float]:
    """Return {phase: seconds} of ``m``'s freeze window (empty when the manifest predates it)."""
    return {k: round(v / 1000, 6) for k, v in m.freeze.phase_ms().items()} if m.freeze is not None else {}


def path(state_dir: Path, job: str) -> Path:
    """Return where the run record of ``job`` lives."""
    return state_dir / "runs" / f"{job}.json"


def load(state_dir: Path, job: str, strict: bool = False) -> RunRecord | None:
    """Return the last run record of ``job``, or None when there is none or it is damaged
    (logged: a damaged record must not stop a backup or a check). A record that cannot be read
    (permissions, I/O) is logged too, or with ``strict`` raises OSError: a check run as the wrong
    user must not report a failed run as fine."""
    p = path(state_dir, job)
    try:
        return RunRecord.model_validate(json.loads(p.read_bytes()))
    except FileNotFoundError:
        return None
    except OSError as e:
        if strict:
            raise
        log.warning("ignoring the unreadable run record %s: %s", p, e.strerror or e)
        return None
    except (ValueError, ValidationError) as e:
        log.warning("ignoring the unreadable run record %s: %s", p, str(e).splitlines()[0])
        return None


def save(state_dir: Path, record: RunRecord) -> Path:
    """Write ``record`` atomically (0600, directory 0700); return its path. Raises OSError."""
    p = path(state_dir, record.job)
    p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(p, (record.model_dump_json(indent=2) + "\n").encode())
    return p

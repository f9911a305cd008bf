"""Valid manifests for unit tests, built through the real model."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from snapagent.manifest import Manifest, Volume

SHA = "0" * 64


def volume(volume: str = "/srv/app", label: str = "app", fmt: str = "tar", **kw: Any) -> Volume:
    """Return a Volume record (artifact ``00-<label>.<fmt>``)."""
    return Volume(volume=volume, label=label, snapshot=kw.pop("snapshot", f"{volume}@snapagent-x"),
                  artifact=kw.pop("artifact", f"00-{label}.{fmt}"), format=fmt, **kw)


def manifest(job: str = "app", volumes: list[Volume] | None = None, export_format: str = "tar",
             quiescers: list[dict] | None = None, **kw: Any) -> Manifest:
    """Return a valid Manifest of ``job`` holding ``volumes`` (one tar volume by default)."""
    volumes = volumes or [volume(fmt=export_format)]
    created = datetime(2026, 12, 2, 5, 0, 0, tzinfo=timezone.utc)
    arts = [{"name": v.artifact, "size": 1, "sha256": SHA, "compression": "none", "raw_size": 1} for v in volumes]
    arts += [{"name": e["artifact"], "size": 1, "sha256": SHA, "compression": "none", "raw_size": 1}
             for q in quiescers or [] for e in q.get("artifacts", [])]
    data = dict(id=f"{job}-20261202T050000Z", job=job, host="h", created=created, completed=created, driver="btrfs",
                export_format=export_format, snapshot_name="snapagent-x", volumes=volumes, quiescers=quiescers or [],
                freeze_window_ms=1.0, max_freeze_ms=10000, artifacts=arts)
    data.update(kw)
    return Manifest.model_validate(data)

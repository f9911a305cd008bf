"""Fake plugins for the engine's unit tests: a driver and a quiescer that log what they do in
``EVENTS``, and ``backup_run`` — a BackupRun of job ``app`` (volumes /v1, /v2) with them, the real
directory target and a FakeRunner."""

from __future__ import annotations

import contextlib
import io
import time
from pathlib import Path

from snapagent.config import Config, Job, JobConfig, RawConfig, TargetEntry
from snapagent.engine import BackupRun
from snapagent.errors import QuiesceFailed, SnapshotFailed
from snapagent.plugin.driver import Driver, Snapshot
from snapagent.plugin.quiescer import Quiescer
from snapagent.targets.directory import DirectoryConfig, DirectoryTarget
from tests.helpers.fakerunner import FakeRunner

EVENTS: list = []


class FakeDriver(Driver):
    name = "fake"
    fail_snapshot = False

    def preflight(self, volumes):
        EVENTS.append("preflight")
        return [Path(v) for v in volumes]

    def snapshot(self, volumes, name, deadline):
        out = []
        for v in volumes:
            if self.journal:
                self.journal.open("snapshot", f"{v}@{name}", {"kind": "driver", "name": "fake"})
            if self.fail_snapshot:
                raise SnapshotFailed("boom")
            EVENTS.append(f"snapshot {v}")
            out.append(Snapshot(v, f"{v}@{name}", name))
        return out

    @contextlib.contextmanager
    def export(self, snap, fmt, base=None):
        yield io.BytesIO(b"data of " + snap.volume.encode())

    def release(self, snap):
        EVENTS.append(f"release {snap.volume}")
        self.journal.close("snapshot", snap.handle)


class FakeQ(Quiescer):
    type = "fakeq"

    def quiesce(self, deadline):
        if self.cfg.get("sleep"):
            time.sleep(self.cfg["sleep"])
        if self.cfg.get("fail"):
            raise QuiesceFailed(f"{self.cfg['n']} failed")
        EVENTS.append(f"quiesce {self.cfg['n']}")
        self.held = True

    def release(self):  # idempotent, as the interface requires
        if getattr(self, "held", False):
            EVENTS.append(f"release {self.cfg['n']}")
            self.held = False
        return {"type": "fakeq", "n": self.cfg["n"]}



def backup_run(tmp_path: Path, quiescers: list[dict], max_freeze: float = 10.0,
               fail_snapshot: bool = False) -> tuple[BackupRun, Config]:
    """Return a BackupRun of job ``app`` with FakeDriver and one FakeQ per entry of ``quiescers``."""
    jc = JobConfig(driver="fake", volumes=["/v1", "/v2"], target="local", max_freeze=f"{max_freeze}s")
    FakeDriver.fail_snapshot = fail_snapshot
    job = Job("app", jc, FakeDriver, None, [(FakeQ, q) for q in quiescers], "local")
    raw = RawConfig(agent={"state_dir": str(tmp_path / "state")},
                    targets={"local": TargetEntry(type="directory")}, jobs={"app": jc})
    cfg = Config(tmp_path / "c.toml", raw, {"local": (DirectoryTarget, DirectoryConfig(path=tmp_path / "b"))},
                 {"app": job})
    return BackupRun(cfg, job, FakeRunner()), cfg

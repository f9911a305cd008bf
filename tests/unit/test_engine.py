"""Engine ordering rules with fake plugins and the real directory target: post only where pre
succeeded, always in reverse; a failed quiesce skips the snapshot; overruns are abandoned; every
path releases what it took."""

import contextlib
import io
import time
from pathlib import Path

import pytest

from snapagent.config import Config, Job, JobConfig, RawConfig, TargetEntry
from snapagent.plugin.driver import Driver, Snapshot
from snapagent.engine import BackupRun
from snapagent.errors import FreezeOverrun, QuiesceFailed, SnapshotFailed
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


@pytest.fixture
def make_run(tmp_path, monkeypatch):
    EVENTS.clear()
    import snapagent.cleanup as cl

    undone = []
    monkeypatch.setattr(cl, "undo_records", lambda recs, runner: (undone.extend(recs) or [], []))

    def make(quiescers, max_freeze=10.0, fail_snapshot=False):
        jc = JobConfig(driver="fake", volumes=["/v1", "/v2"], target="local", max_freeze=max_freeze)
        FakeDriver.fail_snapshot = fail_snapshot
        job = Job("app", jc, FakeDriver, None, [(FakeQ, q) for q in quiescers], "local")
        raw = RawConfig(agent={"state_dir": str(tmp_path / "state")},
                        targets={"local": TargetEntry(type="directory")}, jobs={"app": jc})
        cfg = Config(tmp_path / "c.toml", raw, {"local": (DirectoryTarget, DirectoryConfig(path=tmp_path / "b"))}, {"app": job})
        return BackupRun(cfg, job, FakeRunner()), cfg, undone

    return make


def test_happy_path_order_and_manifest(make_run):
    run, cfg, _ = make_run([{"n": "a"}, {"n": "b"}])
    m = run.run().manifest
    assert EVENTS == ["preflight", "quiesce a", "quiesce b", "snapshot /v1", "snapshot /v2",
                      "release b", "release a", "release /v1", "release /v2"]
    assert [q.facts()["n"] for q in m.quiescers] == ["a", "b"]
    assert m.freeze_window_ms < 10000 and set(m.phases_ms) >= {"preflight", "quiesce", "snapshot", "thaw", "export"}
    assert [b.id for b in cfg.target("local").list("app")] == [m.id]


def test_failed_quiesce_skips_snapshot_and_releases_only_succeeded(make_run):
    run, cfg, _ = make_run([{"n": "a"}, {"n": "b", "fail": True}, {"n": "c"}])
    with pytest.raises(QuiesceFailed):
        run.run()
    assert "snapshot /v1" not in EVENTS
    assert EVENTS[:3] == ["preflight", "quiesce a", "release a"]
    assert "quiesce c" not in EVENTS
    assert cfg.target("local").list() == []


def test_overrun_abandons_snapshot(make_run):
    run, cfg, undone = make_run([{"n": "a", "sleep": 0.05}], max_freeze=0.01)
    with pytest.raises(FreezeOverrun, match="max_freeze"):
        run.run()
    assert "release a" in EVENTS
    assert cfg.target("local").list() == []


def test_snapshot_failure_undoes_journaled_snapshot(make_run):
    run, cfg, undone = make_run([{"n": "a"}], fail_snapshot=True)
    with pytest.raises(SnapshotFailed):
        run.run()
    assert "release a" in EVENTS
    assert [r["key"] for r in undone] == ["/v1@snapagent-" + undone[0]["key"].split("@snapagent-")[1]]
    assert cfg.target("local").list() == []


def test_dry_run_touches_nothing(make_run, tmp_path):
    run, cfg, _ = make_run([{"n": "a"}])
    run.runner.dry_run = True
    plan = run.plan()
    assert plan["dry_run"] and "quiesce a" not in EVENTS
    assert not (tmp_path / "state").exists() and not (tmp_path / "b").exists()
    assert any(line.startswith("would quiesce") for line in run.runner.echoed)

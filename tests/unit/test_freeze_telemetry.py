"""Freeze telemetry: the engine records how the window split (each lock with its wait and the
moment it was held, each snapshot command, each verify and release) in the manifest's optional
``freeze`` field; manifests without it still read and dump as they were; ``show`` prints it and
the metrics file carries the last window's split per job."""

from __future__ import annotations

import json
from datetime import timedelta
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from snapagent import manifest as M
from snapagent.manifest import ManifestDamaged
from snapagent.monitor import metrics, runs
from snapagent.monitor.facts import JobFacts, TargetFacts
from snapagent.monitor.runs import RunRecord, Success
from tests.helpers.fakeplugins import EVENTS, FakeDriver
from tests.helpers.manifests import manifest

T0 = manifest().created
FREEZE = {"window_ms": 6.5, "steps": [
    {"phase": "lock", "what": "sqlite /srv/app/app.db", "start_ms": -3.0, "ms": 3.0, "held_at_ms": 0.0},
    {"phase": "snapshot", "what": "btrfs subvolume snapshot -r /srv/app /srv/app/s", "start_ms": 0.2, "ms": 5.9},
    {"phase": "verify", "what": "sqlite /srv/app/app.db", "start_ms": 6.1, "ms": 0.01},
    {"phase": "release", "what": "sqlite /srv/app/app.db", "start_ms": 6.2, "ms": 0.3}]}


def test_engine_records_each_step_of_the_window(make_run, monkeypatch):
    def snapshot(self, volumes, name, deadline):
        EVENTS.append("snapshot")
        for v in volumes:  # a real driver's command, through the run's runner
            self.runner.run(["btrfs", "subvolume", "snapshot", "-r", v, f"{v}/{name}"], mutating=True, timeout=5)
        return [SimpleNamespace(volume=v, handle=f"{v}@{name}", name=name, info={}) for v in volumes]

    prepared = []
    monkeypatch.setattr(FakeDriver, "prepare_snapshot", lambda self, vols, name: prepared.append(list(EVENTS)))
    monkeypatch.setattr(FakeDriver, "snapshot", snapshot)
    run, _, _ = make_run([{"n": "a"}, {"n": "b"}])
    f = run.run().manifest.freeze
    assert prepared == [["preflight"]], "the driver prepares before the first lock"
    assert [(s.phase, s.what) for s in f.steps] == [
        ("lock", "fakeq"), ("lock", "fakeq"),
        ("snapshot", "btrfs subvolume snapshot -r /v1 /v1/" + run.runner.calls[0].argv[-1].rsplit("/", 1)[1]),
        ("snapshot", "btrfs subvolume snapshot -r /v2 /v2/" + run.runner.calls[1].argv[-1].rsplit("/", 1)[1]),
        ("verify", "fakeq"), ("verify", "fakeq"), ("release", "fakeq"), ("release", "fakeq")]
    assert f.steps[0].held_at_ms == 0.0 and f.steps[1].held_at_ms >= 0 and f.steps[0].start_ms <= 0
    starts = [s.start_ms for s in f.steps]
    assert starts == sorted(starts) and all(s.ms >= 0 for s in f.steps)
    assert f.steps[-1].start_ms + f.steps[-1].ms <= f.window_ms + 0.01


def test_the_field_is_validated_and_older_manifests_still_read():
    m = manifest(freeze=FREEZE)
    back = M.loads(M.dumps(m))
    assert back.freeze == m.freeze and back.freeze.phase_ms()["snapshot"] == 5.9
    assert "held_at_ms" not in json.loads(M.dumps(m))["freeze"]["steps"][1]
    old = json.loads(M.dumps(manifest()))
    assert "freeze" not in old  # a manifest without the field dumps as it was written
    assert M.loads(json.dumps(old).encode()).freeze is None
    for bad in ({**FREEZE, "window_ms": -1}, {"window_ms": 1, "steps": [{**FREEZE["steps"][1], "phase": "nap"}]},
                {"window_ms": 1, "steps": [{**FREEZE["steps"][1], "ms": -2}]},
                {"window_ms": 1, "steps": [{**FREEZE["steps"][1], "what": "a\nb"}]}, {**FREEZE, "extra": 1}):
        data = {**old, "freeze": bad}
        data["checksum"] = M.checksum({k: v for k, v in data.items() if k != "checksum"})
        with pytest.raises(ManifestDamaged, match="freeze"):
            M.loads(json.dumps(data).encode())


def _samples(text: str) -> dict:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_carry_the_last_window_and_its_split():
    m = manifest(freeze=FREEZE)
    ok = Success(started=T0, ended=T0 + timedelta(seconds=2), duration_seconds=2, backup_id=m.id, size_bytes=1,
                 freeze_window_seconds=0.0065, freeze_phase_seconds=runs.freeze_phases(m))
    rec = RunRecord(job="app", started=T0, ended=T0, duration_seconds=2, result="success", last_success=ok)
    facts = JobFacts(SimpleNamespace(name="app", target_name="local"), {"local": TargetFacts("local")}, rec)
    got = _samples(metrics.render([facts]).decode())
    assert got[("snapagent_last_freeze_window_seconds", (("backup_job", "app"),))] == 0.0065
    phase = {k[1][1][1]: v for k, v in got.items() if k[0] == "snapagent_last_freeze_phase_seconds"}
    assert phase == {"lock": 0.003, "snapshot": 0.0059, "verify": 0.00001, "release": 0.0003}
    # a run record written before the split was recorded: the window only
    older = RunRecord.model_validate_json(rec.model_dump_json(exclude={"last_success": {"freeze_phase_seconds"}}))
    got = _samples(metrics.render([JobFacts(facts.job, facts.targets, older)]).decode())
    assert not any(k[0] == "snapagent_last_freeze_phase_seconds" for k in got)
    assert got[("snapagent_last_freeze_window_seconds", (("backup_job", "app"),))] == 0.0065


def test_a_driver_that_runs_no_command_and_a_quiescer_that_cannot_tell_when_it_held(make_run):
    run, _, _ = make_run([{"n": "a", "sleep": 0.02}])
    f = run.run().manifest.freeze
    lock, snap = f.steps[0], f.steps[1]
    # no held_at: the window counts from the call, and the whole call is the lock's time
    assert lock.phase == "lock" and lock.start_ms == lock.held_at_ms == 0 and lock.ms >= 20
    assert (snap.phase, snap.what) == ("snapshot", "fake snapshot (no command)")
    assert f.window_ms >= lock.ms + snap.ms

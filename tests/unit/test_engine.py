"""Engine ordering rules with fake plugins and the real directory target: post only where pre
succeeded, always in reverse; a failed quiesce skips the snapshot; overruns are abandoned; every
path releases what it took."""

import pytest

from snapagent.errors import FreezeOverrun, QuiesceFailed, SnapshotFailed
from tests.helpers.fakeplugins import EVENTS


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

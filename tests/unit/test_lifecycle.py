"""The backup lifecycle's exits, with fake plugins, the real journal, cleanup and directory target:
a SIGTERM cannot be swallowed by a catch-all while a lock is held; a second signal does not abort
the undo; a failure after the commit is a warning that ``cleanup`` retries; ``cleanup`` never
undoes what a live run holds."""

from __future__ import annotations

import os
import signal
import time

import pytest

from snapagent import cleanup
from snapagent.errors import Interrupted, OperationFailed
from snapagent.journal import Journal, holder, read_open
from tests.helpers.fakeplugins import EVENTS, FakeDriver, FakeQ

UNDONE: list[str] = []


class UndoDriver(FakeDriver):
    """FakeDriver whose journal records are undone for real (by ``cleanup.undo_records``)."""

    fail_release = False
    fail_undo = False
    signal_in_undo = False

    def release(self, snap):
        if self.fail_release:
            raise OperationFailed(f"cannot release {snap.handle}")
        super().release(snap)

    @classmethod
    def undo(cls, record, runner):
        if cls.fail_undo:
            raise OperationFailed(f"cannot undo {record['key']}")
        if cls.signal_in_undo and not UNDONE:
            os.kill(os.getpid(), signal.SIGTERM)  # a second signal while the first one's undo runs
            time.sleep(0.2)
        UNDONE.append(record["key"])
        return f"undid {record['key']}"


class CatchAllQ(FakeQ):
    """Holds its lock, then meets a SIGTERM inside code with an ``except Exception`` catch-all."""

    def verify(self):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(2)
        except Exception:  # noqa: BLE001 - the kind of catch-all the engine must survive
            EVENTS.append("swallowed")
        EVENTS.append("carried on")


@pytest.fixture
def lifecycle(make_run, monkeypatch):
    """make_run with the real undo, UndoDriver as the driver and its owner in the journal."""
    monkeypatch.setattr(cleanup, "undo_records", _real_undo_records)
    monkeypatch.setattr(cleanup, "_undoer", lambda owner: UndoDriver)
    UNDONE.clear()
    UndoDriver.fail_release = UndoDriver.fail_undo = UndoDriver.signal_in_undo = False

    def make(quiescer_cls=FakeQ):
        run, cfg, _ = make_run([{"n": "a"}])
        run.driver = UndoDriver(run.runner)
        run.quiescers = [quiescer_cls({"n": "a"}, run.ctx)]
        return run, cfg

    return make


_real_undo_records = cleanup.undo_records


def journals(cfg):
    return list((cfg.agent.state_dir / "journal").rglob("*.jsonl"))


def test_interrupted_is_not_an_exception():
    assert not issubclass(Interrupted, Exception) and issubclass(Interrupted, BaseException)


def test_sigterm_inside_a_catch_all_while_locked_stops_the_run(lifecycle):
    run, cfg = lifecycle(CatchAllQ)
    t0 = time.monotonic()
    with pytest.raises(Interrupted, match="SIGTERM"):
        run.run()
    assert time.monotonic() - t0 < 1.5, "the catch-all's sleep ran to its end"
    assert "swallowed" not in EVENTS and "carried on" not in EVENTS
    assert "release a" in EVENTS
    assert [k.split("@")[0] for k in UNDONE] == ["/v2", "/v1"]  # both snapshots undone, newest first
    assert cfg.target("local").list() == [] and journals(cfg) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone with the run


def test_a_second_signal_does_not_abort_the_undo(lifecycle, caplog):
    run, cfg = lifecycle(CatchAllQ)
    UndoDriver.signal_in_undo = True
    with pytest.raises(Interrupted, match="SIGTERM"):
        run.run()
    assert [k.split("@")[0] for k in UNDONE] == ["/v2", "/v1"], "the undo stopped at the second signal"
    assert "received while stopping: finishing the release first" in caplog.text
    assert journals(cfg) == []


def test_failure_after_commit_is_a_warning_cleanup_retries(lifecycle):
    run, cfg = lifecycle()
    UndoDriver.fail_release = UndoDriver.fail_undo = True
    result = run.run()
    assert [b.id for b in cfg.target("local").list()] == [result.manifest.id]
    assert len(result.warnings) == 2 and all("`snapagent cleanup` will retry" in w for w in result.warnings)
    # the run's own undo tried once more; its records stay open for the next try
    (journal,) = journals(cfg)
    assert [r["kind"] for r in read_open(journal)] == ["snapshot", "snapshot"] and holder(journal) is None
    UndoDriver.fail_undo = False
    done = cleanup.sweep(cfg.agent.state_dir, run.runner)
    assert len(done) == 2 and [k.split("@")[0] for k in UNDONE] == ["/v2", "/v1"] and journals(cfg) == []


def test_a_release_that_works_on_the_retry_is_no_warning(lifecycle):
    run, cfg = lifecycle()
    UndoDriver.fail_release = True
    result = run.run()
    assert result.warnings == [] and [k.split("@")[0] for k in UNDONE] == ["/v2", "/v1"] and journals(cfg) == []


def test_cleanup_never_undoes_what_a_live_run_holds(tmp_path, monkeypatch):
    monkeypatch.setattr(cleanup, "_undoer", lambda owner: UndoDriver)
    UNDONE.clear()
    j = Journal.start(tmp_path, "app", "run1")
    j.open("snapshot", "/v1@s", {"kind": "driver", "name": "fake"})
    from tests.helpers.fakerunner import FakeRunner

    assert holder(j.path) == str(os.getpid())
    done = cleanup.sweep(tmp_path, FakeRunner())
    assert done == [f"skipped app/run1.jsonl: its run is still going (pid {os.getpid()})"] and UNDONE == []
    j.close_file()  # the run died: its lock went with it
    assert cleanup.sweep(tmp_path, FakeRunner()) == ["undid /v1@s"] and not j.path.exists()


def test_a_journal_naming_a_missing_plugin_says_the_way_out(tmp_path):
    from tests.helpers.fakerunner import FakeRunner

    j = Journal.start(tmp_path, "app", "run2")
    j.open("snapshot", "vg/snap", {"kind": "driver", "name": "no-such-driver"})
    j.open("garbage", "x", {"kind": "nonsense"})
    j._f.write("{not json\n")  # a torn last line, as after a crash mid-write
    j.close_file()
    with pytest.raises(OperationFailed) as e:
        cleanup.sweep(tmp_path, FakeRunner())
    msg = str(e.value)
    assert "driver plugin 'no-such-driver' is not installed" in msg and "names no plugin" in msg
    assert str(j.path) in msg and "delete its journal file" in msg
    assert j.path.exists()  # kept for the next try

"""Fixtures of the unit tests (helpers they import live in ``tests.helpers``)."""

import pytest

from tests.helpers.fakeplugins import EVENTS, backup_run


@pytest.fixture
def make_run(tmp_path, monkeypatch):
    """Factory ``make(quiescers, max_freeze=10.0, fail_snapshot=False) -> (run, cfg, undone)``: a
    BackupRun with fake plugins whose journal undo only records what it would undo (``undone``)."""
    EVENTS.clear()
    import snapagent.cleanup as cl

    undone = []
    monkeypatch.setattr(cl, "undo_records", lambda recs, runner: (undone.extend(recs) or [], []))

    def make(quiescers, max_freeze=10.0, fail_snapshot=False):
        run, cfg = backup_run(tmp_path, quiescers, max_freeze, fail_snapshot)
        return run, cfg, undone

    return make

"""The pieces of stderr output without a terminal: journal detection, the formats, the progress
interface that does nothing when disabled, and ``--path`` syntax."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
from datetime import datetime

import pytest

from snapagent import restore_paths
from snapagent.cli import output
from snapagent.errors import UsageError
from snapagent.util import logfields, progress, sqllog, steps


def test_journal_is_recognised_by_device_and_inode(tmp_path):
    with open(tmp_path / "f", "w") as f, open(tmp_path / "g", "w") as g:
        st = os.fstat(f.fileno())
        env = {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        assert output.is_journal(f, env)
        assert not output.is_journal(g, env)
        assert not output.is_journal(f, {}) and not output.is_journal(f, {"JOURNAL_STREAM": "x:y"})
    assert not output.is_journal(io.StringIO(), env)


def _record(level, msg, name="snapagent.engine", **extra):
    r = logging.LogRecord(name, level, __file__, 1, msg, None, None)
    r.__dict__.update(extra)
    return r


STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"


def test_text_and_journal_formats():
    plain, journal = output.TextFormatter(), output.TextFormatter(journal=True)
    logfields.clear()
    assert re.fullmatch(STAMP + r" snapagent: info: exported x",
                        plain.format(_record(logging.INFO, "exported x", "snapagent.say")))
    assert re.fullmatch(STAMP + r" snapagent: error: bad", plain.format(_record(logging.ERROR, "bad", tag="error")))
    assert re.fullmatch(STAMP + r" snapagent: debug: run: ls", plain.format(_record(logging.DEBUG, "run: ls")))
    # the journal stamps lines itself: the priority first, no time
    assert journal.format(_record(logging.WARNING, "w", tag="warning")) == "<4>snapagent: warning: w"
    assert journal.format(_record(logging.INFO, "a\nb", "snapagent.say")) == "<6>snapagent: info: a\n<6>b"
    assert journal.format(_record(logging.ERROR, "e", tag="internal error")) == "<3>snapagent: internal error: e"
    assert journal.format(_record(logging.DEBUG, "d")).startswith("<7>")
    # the job, then the backup id once known, on every line (error lines included)
    logfields.bind(job="my app")
    assert re.fullmatch(STAMP + r" \[my app\] snapagent: error: bad", plain.format(_record(logging.ERROR, "bad", tag="error")))
    logfields.bind(backup_id="my app-20261202T155550Z")
    assert journal.format(_record(logging.ERROR, "e", tag="error")) == \
        "<3>[my app my app-20261202T155550Z] snapagent: error: e"
    logfields.clear()


def test_the_time_is_local_with_its_offset(monkeypatch):
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # +05:30: an offset no UTC-only formatter writes
    time.tzset()
    try:
        logfields.clear()
        line = output.TextFormatter().format(_record(logging.WARNING, "w", tag="warning"))
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    stamp = line.split(" ", 1)[0]
    assert stamp.endswith("+05:30"), line
    assert abs(datetime.fromisoformat(stamp).timestamp() - time.time()) < 60


def test_library_internals_are_silenced_whatever_the_verbosity():
    err = io.StringIO()
    try:
        output.setup(verbose=2, stream=err, environ={})
        for name in ("sh.command", "psycopg", "pymysql.connections", "urllib3.connectionpool"):
            logging.getLogger(name).info("internal chatter")
            logging.getLogger(name).debug("internal chatter")
        logging.getLogger("sh.command").warning("a library's own warning")
        logging.getLogger("snapagent.runner").debug("run: true -> rc=0")
    finally:
        output.setup(stream=io.StringIO(), environ={})
    text = err.getvalue()
    assert "internal chatter" not in text, text
    assert "a library's own warning" in text and "run: true -> rc=0" in text, text


def test_verbosity_levels_pick_steps_and_commands():
    def shown(verbose):
        err = io.StringIO()
        try:
            output.setup(verbose=verbose, stream=err, environ={})
            steps.done("export /srv/app", 0.0123)
            sqllog.statement("sqlite", "BEGIN   IMMEDIATE\n")
        finally:
            output.setup(stream=io.StringIO(), environ={})
        return err.getvalue()

    assert shown(0) == ""
    assert "step export /srv/app: 12.3 ms" in shown(1) and "BEGIN" not in shown(1)
    assert "sql sqlite: BEGIN IMMEDIATE\n" in shown(2)


def test_json_format_carries_the_run_facts():
    logfields.clear()
    logfields.bind(job="app", backup_id=None)
    o = json.loads(output.JsonFormatter().format(_record(logging.WARNING, "careful", tag="warning")))
    assert o["level"] == "warning" and o["message"] == "careful" and o["job"] == "app" and "backup_id" not in o
    assert o["logger"] == "snapagent.engine" and o["time"].endswith("+00:00")
    logfields.clear()


def test_progress_disabled_is_the_stream_itself():
    progress.install(None)
    s = io.BytesIO(b"abc")
    with progress.reading(s, "x", 3) as r:
        assert r is s and not progress.enabled()


def test_progress_counts_into_the_sink():
    seen = []

    class Task:
        def update(self, n):
            seen.append(n)

        def close(self):
            seen.append("closed")

    progress.install(lambda label, total: seen.append((label, total)) or Task())
    try:
        with progress.reading(io.BytesIO(b"x" * 10), "export v", 10) as r:
            while r.read(4):
                pass
    finally:
        progress.install(None)
    assert seen == [("export v", 10), 4, 4, 2, "closed"]


@pytest.mark.parametrize("rel,norm", [("a", "a"), ("./a//b/", "a/b"), ("-x y", "-x y"), ("a/./b", "a/b")])
def test_path_syntax_normalised(rel, norm):
    assert restore_paths.normalise(rel) == norm


@pytest.mark.parametrize("rel,words", [("/etc", "absolute"), ("a/../b", "'..'"), ("..", "'..'"), ("./", "whole"),
                                       ("", "whole"), ("a\0b", "NUL")])
def test_path_syntax_refused_naming_it(rel, words):
    with pytest.raises(UsageError, match=words) as ei:
        restore_paths.normalise(rel)
    assert f"--path {rel!r}" in str(ei.value)


def test_progress_as_log_lines_where_no_bar_can_be_drawn(caplog):
    now = [100.0]
    task = output.LogTask("export v", 4 << 20, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="snapagent.say"):
        task.update(1 << 20)  # within the minute: nothing
        now[0] += 61
        task.update(1 << 20)
        now[0] += 1
        task.update(1 << 20)  # a line a minute at most
        now[0] += 61
        task.update(2 << 20)  # past the estimate: no percentage, no ETA
        task.close()
    assert [r.getMessage() for r in caplog.records] == [
        "export v: 2.0 MiB of 4.0 MiB (50%), ETA 1m01s, 33.6 KiB/s",
        "export v: 5.0 MiB, 41.6 KiB/s",
        "export v: 5.0 MiB in 2m03s (41.6 KiB/s)",
    ]


def test_bar_drops_an_estimate_that_proves_too_small():
    screen = io.StringIO()
    task = output._TqdmTask("export v", 1000, screen)
    task.update(600)
    task.update(600)  # past the estimate: bytes and rate only from now on
    task.close()
    last = screen.getvalue().split("\r")[-1]
    assert "1.17kiB [" in last and "%" not in last and "iB/s" in last, repr(screen.getvalue())

"""The pieces of stderr output without a terminal: journal detection, the formats, the progress
interface that does nothing when disabled, and ``--path`` syntax."""

from __future__ import annotations

import io
import json
import logging
import os

import pytest

from snapagent import restore_paths
from snapagent.cli import output
from snapagent.errors import UsageError
from snapagent.util import logfields, progress


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


def test_text_and_journal_formats():
    plain, journal = output.TextFormatter(), output.TextFormatter(journal=True)
    assert plain.format(_record(logging.INFO, "exported x", "snapagent.say")) == "exported x"
    assert plain.format(_record(logging.ERROR, "bad", tag="error")) == "snapagent: error: bad"
    assert plain.format(_record(logging.DEBUG, "run: ls")) == "snapagent: DEBUG: run: ls"
    assert journal.format(_record(logging.WARNING, "w", tag="warning")) == "<4>snapagent: warning: w"
    assert journal.format(_record(logging.INFO, "a\nb", "snapagent.say")) == "<6>a\n<6>b"
    assert journal.format(_record(logging.ERROR, "e", tag="internal error")) == "<3>snapagent: internal error: e"
    assert journal.format(_record(logging.DEBUG, "d")).startswith("<7>")


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

"""Monitoring units: the check's verdict in every state at a fixed clock, where the max age comes
from, the plugin output's shape, the metrics exposition (parsed by prometheus_client's own
parser), ping URLs and redaction, the stderr tail, and the run hook on every exit path."""

from __future__ import annotations

import io
import logging
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest

from snapagent import config
from snapagent.config import JobConfig
from snapagent.errors import ConfigError, Interrupted, JobLocked, OperationFailed
from snapagent.monitor import check, logtail, metrics, ping, runs, watch
from snapagent.monitor.facts import JobFacts, TargetFacts
from snapagent.monitor.runs import RunRecord
from snapagent.plugin.target import Stored
from tests.helpers.manifests import manifest

T0 = datetime(2026, 12, 2, 5, 0, 0, tzinfo=timezone.utc)  # the helper manifests' creation time


def job(**kw):
    return SimpleNamespace(name="app", target_name="local",
                           cfg=JobConfig(driver="btrfs", volumes=["/srv/app"], target="local", **kw))


def facts(n_backups: int = 1, run: RunRecord | None = None, **kw) -> JobFacts:
    target = SimpleNamespace(name="local")
    backups = [Stored(manifest(created=T0 - timedelta(hours=i), id=f"app-20261202T0{5 - i}0000Z"), target, "x")
               for i in reversed(range(n_backups))]
    return JobFacts(job(**kw), {"local": TargetFacts("local", backups)}, run)


def failed_run(ended: datetime, error: str = "export failed | badly") -> RunRecord:
    return RunRecord(job="app", started=ended - timedelta(seconds=5), ended=ended, duration_seconds=5,
                     result="failure", error=error)


@pytest.mark.parametrize("kw, expected", [
    ({}, 25 * 3600), ({"check_max_age": "2h"}, 7200), ({"schedule": "hourly"}, 7200),
    ({"schedule": "daily"}, 2 * 86400), ({"schedule": "daily", "check_max_age": "30h"}, 30 * 3600),
    ({"schedule": "Mon *-*-* 02:00"}, 2 * 7 * 86400),  # weekly: twice the longest gap
    ({"schedule": "Mon..Fri 02:30"}, 2 * 3 * 86400),  # the weekend is the longest gap
])
def test_max_age_sources(kw, expected):
    assert check.max_age_for(job(**kw), None) == expected
    assert check.max_age_for(job(**kw), 60) == 60  # --max-age wins


def test_verdicts_at_a_fixed_clock():
    day = 86400
    c = check.check_job(facts(0), T0, day, None)
    assert (c.state, c.message) == (check.CRITICAL, "no backup") and c.perfdata[0] == "'app_age'=U"
    c = check.check_job(facts(0, failed_run(T0)), T0, day, None)
    assert c.state == check.CRITICAL and c.message.startswith("no backup (last run failure at 2026-12-02 05:00:00Z")
    c = check.check_job(facts(3), T0 + timedelta(minutes=5), day, 3600)
    assert c.state == check.OK and c.message == "newest backup app-20261202T050000Z is 5m00s old, 3 backup(s)"
    assert c.perfdata == ["'app_age'=300s;3600;86400;0", "'app_size'=1B;;;0", "'app_freeze_window'=0.001s;;;0",
                          "'app_backups'=3;;;0"]
    c = check.check_job(facts(), T0 + timedelta(hours=2), day, 3600)
    assert (c.state, c.message) == (check.WARNING, "newest backup app-20261202T050000Z is 2h00m old (warn 1h00m)")
    c = check.check_job(facts(), T0 + timedelta(days=1, seconds=1), day, 3600)
    assert (c.state, c.message) == (check.CRITICAL, "newest backup app-20261202T050000Z is 1d00h old (max 1d00h)")
    # the last run failed after the newest backup: WARNING; before it (a later run succeeded): OK
    c = check.check_job(facts(1, failed_run(T0 + timedelta(minutes=1))), T0 + timedelta(minutes=2), day, None)
    assert c.state == check.WARNING and c.message.startswith("last run failure at 2026-12-02 05:01:00Z: export failed / badly;")
    assert check.check_job(facts(1, failed_run(T0 - timedelta(minutes=1))), T0, day, None).state == check.OK
    long = "export of '/srv/app' failed: command failed (exit 1): tar " + "--x " * 100 + "\n  tar: stderr line\n  disk full"
    c = check.check_job(facts(1, failed_run(T0, long)), T0, day, None)
    assert "\n" not in c.message and "--x -… … disk full; newest backup" in c.message
    assert len(c.message) < 400
    f = facts(2)
    f.targets["local"].damaged = 1  # said, but the contract's states stand: the good ones are usable
    c = check.check_job(f, T0, day, None)
    assert c.state == check.OK and c.message.endswith("2 backup(s), 1 DAMAGED (see `snapagent list`)")
    # a backup dated in the future (clock skew) is not negative-aged
    assert check.check_job(facts(), T0 - timedelta(hours=1), day, 60).perfdata[0].startswith("'app_age'=0s;")


def test_report_shape():
    ok = check.JobCheck("a", check.OK, "fine", ["'a_age'=1s"])
    warn = check.JobCheck("b", check.WARNING, "old", ["'b_age'=9s"])
    code, text = check.report([ok])
    assert (code, text) == (0, "SNAPAGENT OK - a: fine | 'a_age'=1s")
    code, text = check.report([ok, warn])
    assert code == 1 and text.splitlines() == ["SNAPAGENT WARNING - 2 jobs: 1 warning, 1 ok; b: old | 'a_age'=1s 'b_age'=9s",
                                               "a: OK - fine", "b: WARNING - old"]
    assert check.report([ok, ok])[1].startswith("SNAPAGENT OK - 2 jobs: 2 ok | ")
    assert check.unknown("cannot read\n  jobs.x: bad | y") == (3, "SNAPAGENT UNKNOWN - cannot read jobs.x: bad / y")


def test_human_age():
    assert [check.human_age(s) for s in (-5, 59, 61, 3599, 3600, 90000)] == ["0s", "59s", "1m01s", "59m59s",
                                                                             "1h00m", "1d01h"]


def test_metrics_exposition():
    from prometheus_client.parser import text_string_to_metric_families

    ran = RunRecord(job="app", started=T0, ended=T0 + timedelta(seconds=7), duration_seconds=7, result="failure",
                    error="x")
    never = JobFacts(SimpleNamespace(name="db", target_name="local"), {"local": TargetFacts("local")}, None)
    text = metrics.render([facts(2, ran), never]).decode()
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value
           for fam in text_string_to_metric_families(text) for s in fam.samples}
    app, db = (("backup_job", "app"),), (("backup_job", "db"),)
    assert got[("snapagent_last_run_success", app)] == 0
    assert got[("snapagent_last_run_timestamp_seconds", app)] == (T0 + timedelta(seconds=7)).timestamp()
    assert got[("snapagent_last_duration_seconds", app)] == 7
    # no success in the record: the newest backup's manifest says when
    assert got[("snapagent_last_success_timestamp_seconds", app)] == T0.timestamp()
    assert got[("snapagent_last_size_bytes", app)] == 1
    assert got[("snapagent_backups", (("backup_job", "app"), ("target", "local")))] == 2
    assert got[("snapagent_last_success_timestamp_seconds", db)] == 0
    assert got[("snapagent_backups", (("backup_job", "db"), ("target", "local")))] == 0
    assert ("snapagent_last_run_success", db) not in got and ("snapagent_last_size_bytes", db) not in got
    assert not re.search(r'[{,]job="', text) and "instance=" not in text


def test_ping_urls_and_redaction():
    assert ping.event_url("https://hc.example/abc", "start") == "https://hc.example/abc/start"
    assert ping.event_url("https://hc.example/abc/", "fail") == "https://hc.example/abc/fail"
    assert ping.event_url("https://hc.example/abc?create=1", "fail") == "https://hc.example/abc/fail?create=1"
    assert ping.event_url("https://hc.example/abc", "success") == "https://hc.example/abc"
    assert ping.host_of("https://user:pw@hc.example:8443/abc") == "hc.example"
    assert "abc" not in ping._redact("cannot reach https://hc.example/abc (path /abc)", "https://hc.example/abc")


def test_ping_refused_is_a_warning_naming_only_the_host():
    msg = ping.send("http://127.0.0.1:1/0c6f3a52-token", "start", timeout=5)
    assert msg.startswith("ping start to 127.0.0.1 failed: ConnectionRefusedError") and "token" not in msg


def test_logtail_keeps_the_last_lines_and_writes_through(capsys):
    log = logging.getLogger("snapagent.test")
    handler = logging.StreamHandler(sys.stderr)
    logging.getLogger().addHandler(handler)
    try:
        with logtail.capture(lines=3) as tail:
            for i in range(5):
                print(f"line {i}", file=sys.stderr)
            log.warning("logged")
            sys.stderr.write("partial")
    finally:
        logging.getLogger().removeHandler(handler)
    assert tail.text() == "line 3\nline 4\nwarning: logged\npartial"
    assert "line 0\n" in capsys.readouterr().err


def test_logtail_keeps_progress_lines_that_stderr_does_not_show(capsys):
    """Off a terminal (cron) stderr shows only warnings; the failure ping's tail has it all."""
    from snapagent.cli import output
    output.setup(0, False, "text", stream=sys.stderr, environ={})
    try:
        with logtail.capture(lines=10) as tail:
            output.Output(False, False).say("exported /srv/app")
            output.Output(False, False).warn("something odd")
    finally:
        output.setup(0, False, "text", stream=io.StringIO(), environ={})
    assert tail.text() == "exported /srv/app\nwarning: something odd"
    err = capsys.readouterr().err
    assert "something odd" in err and "exported /srv/app" not in err


def test_config_validation_never_echoes_the_ping_url(tmp_path):
    data = {"targets": {"t": {"type": "directory", "path": str(tmp_path)}},
            "jobs": {"app": {"driver": "btrfs", "volumes": ["/srv"], "target": "t", "ping_url": "ftp://h/s3cr3t"}}}
    with pytest.raises(ConfigError) as ei:
        config.parse(data, Path("x.toml"))
    assert "jobs.app.ping_url: must be an http:// or https:// URL" in str(ei.value) and "s3cr3t" not in str(ei.value)
    data["jobs"]["app"]["ping_url"] = "https://hc-ping.com/s3cr3t"
    assert config.parse(data, Path("x.toml")).job("app").cfg.ping_timeout == 10


def run_watch(tmp_path, exc: BaseException | None, metrics_file: Path | None = None):
    cfg = SimpleNamespace(agent=SimpleNamespace(state_dir=tmp_path / "state", metrics_file=metrics_file), jobs={})
    j = job()
    warnings: list[str] = []
    m = manifest()
    try:
        with watch.watch(cfg, j, warnings.append) as w:
            if exc is not None:
                raise exc
            w.success(m)
    except BaseException as e:  # noqa: BLE001 - the test re-checks what propagated
        assert e is exc
    return runs.load(tmp_path / "state", "app"), warnings


def test_watch_records_every_exit(tmp_path):
    rec, warnings = run_watch(tmp_path, None)
    assert rec.result == "success" and rec.backup_id == "app-20261202T050000Z" and rec.size_bytes == 1
    assert rec.last_success.backup_id == rec.backup_id and warnings == []
    first = rec.last_success
    rec, _ = run_watch(tmp_path, OperationFailed("export failed"))
    assert (rec.result, rec.error, rec.backup_id, rec.last_success) == ("failure", "export failed", None, first)
    rec, _ = run_watch(tmp_path, Interrupted("interrupted by SIGTERM"))
    assert rec.result == "interrupted" and rec.last_success == first
    before = runs.path(tmp_path / "state", "app").read_bytes()
    run_watch(tmp_path, JobLocked("job 'app' is already running"))  # did not run: records nothing
    assert runs.path(tmp_path / "state", "app").read_bytes() == before


def test_watch_problems_are_warnings(tmp_path):
    (tmp_path / "state").write_text("not a directory")
    rec, warnings = run_watch(tmp_path, None, metrics_file=tmp_path / "gone" / "x.prom")
    assert rec is None
    assert warnings[0].startswith("run record of job 'app' not written")
    assert warnings[1].startswith(f"metrics file {tmp_path / 'gone' / 'x.prom'} not written")


def test_run_record_unreadable_or_damaged(tmp_path, caplog):
    p = runs.path(tmp_path, "app")
    p.parent.mkdir()
    p.write_text("{not json")
    assert runs.load(tmp_path, "app") is None and runs.load(tmp_path, "app", strict=True) is None
    assert "ignoring the unreadable run record" in caplog.text
    p.unlink()
    p.mkdir()  # stands for a record this user cannot read
    assert runs.load(tmp_path, "app") is None
    with pytest.raises(IsADirectoryError):
        runs.load(tmp_path, "app", strict=True)


CONTRACT = {"snapagent_last_run_timestamp_seconds", "snapagent_last_run_success",
            "snapagent_last_success_timestamp_seconds", "snapagent_last_duration_seconds",
            "snapagent_last_size_bytes", "snapagent_last_freeze_window_seconds",
            "snapagent_last_freeze_phase_seconds", "snapagent_backups"}


def test_metric_names_are_the_contract_and_the_docs_use_only_them():
    ok = runs.Success(started=T0, ended=T0, duration_seconds=1, backup_id="app-20261202T050000Z", size_bytes=1,
                      freeze_window_seconds=0.005, freeze_phase_seconds={"lock": 0.001, "snapshot": 0.004})
    text = metrics.render([facts(1, RunRecord(job="app", started=T0, ended=T0, duration_seconds=1,
                                              result="success", last_success=ok))]).decode()
    emitted = set(re.findall(r"^(snapagent_\w+)\{", text, re.M))
    assert emitted == CONTRACT
    from tests.helpers.cli import ROOT

    for doc in ("docs/runbook.md", "README.md", "docs/offsite.md", "etc/prometheus/snapagent.rules.yml"):
        used = set(re.findall(r"(?<![$\w])snapagent_[a-z_]+[a-z]\b", (ROOT / doc).read_text()))  # not $macros$
        assert used <= CONTRACT, f"{doc} names metrics that do not exist: {used - CONTRACT}"
    rules = (ROOT / "etc/prometheus/snapagent.rules.yml").read_text()  # proved by tests/system/test_prometheus_rules.py
    assert "snapagent_last_success_timestamp_seconds" in rules and "node_textfile_scrape_error" in rules

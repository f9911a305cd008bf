"""etc/prometheus/snapagent.rules.yml: ``promtool check rules`` accepts it, ``promtool test rules``
(tests/prometheus/snapagent.rules.test.yml) proves each alert fires on the series that should trip it
and stays quiet on healthy ones, and the rules name only series snapagent really writes. promtool
comes from Debian's prometheus package (scripts/setup-offsite.sh)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from snapagent.monitor.metrics import render
from tests.helpers.caps import need
from tests.helpers.cli import ROOT

RULES = ROOT / "etc" / "prometheus" / "snapagent.rules.yml"
UNIT = ROOT / "tests" / "prometheus" / "snapagent.rules.test.yml"


@pytest.fixture(scope="module")
def promtool() -> str:
    exe = shutil.which("promtool")
    need(exe is not None, "needs promtool from the prometheus package (run scripts/setup-offsite.sh)")
    return exe


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120)


def alerts() -> list[str]:
    return re.findall(r"^\s*- alert: (\w+)\s*$", RULES.read_text(), re.M)


def test_check_rules(promtool):
    p = _run(promtool, "check", "rules", str(RULES))
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in p.stdout


def test_unit_tests_pass(promtool):
    p = _run(promtool, "test", "rules", str(UNIT))
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUCCESS" in p.stdout


def test_every_alert_is_proved_to_fire_and_to_stay_quiet():
    unit = UNIT.read_text()
    # one test case: "alertname: X" then "exp_alerts: []" (quiet) or "exp_alerts:" + a list (fires)
    cases = re.findall(r"alertname: (\w+)\n\s+exp_alerts:( \[\])?", unit)
    fires = {name for name, empty in cases if not empty}
    quiet = {name for name, empty in cases if empty}
    assert alerts() and set(alerts()) == fires == quiet


def test_the_unit_tests_can_fail(promtool, tmp_path):
    """A rules file with a broken threshold fails the unit tests: they are not vacuous."""
    (tmp_path / "etc" / "prometheus").mkdir(parents=True)
    (tmp_path / "tests" / "prometheus").mkdir(parents=True)
    broken = RULES.read_text().replace("snapagent_last_freeze_window_seconds > 30",
                                       "snapagent_last_freeze_window_seconds > 300")
    assert broken != RULES.read_text()
    (tmp_path / "etc" / "prometheus" / RULES.name).write_text(broken)
    (tmp_path / "tests" / "prometheus" / UNIT.name).write_text(UNIT.read_text())
    p = _run(promtool, "test", "rules", str(tmp_path / "tests" / "prometheus" / UNIT.name))
    assert p.returncode != 0
    assert "SnapagentFreezeWindowHigh" in p.stdout + p.stderr


def test_rules_name_only_series_snapagent_writes():
    written = set(re.findall(r"^# TYPE (snapagent_\w+) gauge$", render([]).decode(), re.M))
    used = set(re.findall(r"\b(snapagent_\w+)\b", RULES.read_text()))
    assert used and used <= written, used - written
    assert "backup_job" in RULES.read_text() and "{{ $labels.job }}" not in RULES.read_text()


def test_runbook_explains_every_alert():
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    assert "etc/prometheus/snapagent.rules.yml" in runbook
    for name in alerts():
        assert f"| `{name}` (" in runbook, f"docs/runbook.md 'Monitor and alert' does not explain {name}"


def test_fleet_prometheus_config_of_offsite_md_is_valid(promtool, tmp_path):
    """The prometheus.yml of docs/offsite.md's "Fleet", with the rules file where it says, passes
    ``promtool check config`` (which checks the rule files it names too)."""
    text = (ROOT / "docs" / "offsite.md").read_text()
    block = re.search(r"(?ms)^```yaml\n(# prometheus\.yml\n.*?)^```", text).group(1)
    assert "/etc/prometheus/snapagent.rules.yml" in block
    (tmp_path / "snapagent.rules.yml").write_text(RULES.read_text())
    conf = tmp_path / "prometheus.yml"
    conf.write_text(block.replace("/etc/prometheus/snapagent.rules.yml", str(tmp_path / "snapagent.rules.yml")))
    p = _run(promtool, "check", "config", str(conf))
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in p.stdout

"""What `schedule install` writes, as text: cron translation (and its refusals), ExecStart quoting,
the timer's OnCalendar; the samples in etc/ are exactly what the generator writes."""

import pytest

from snapagent.schedule import units
from tests.helpers.cli import ROOT

SAMPLE_EXE = "/usr/local/bin/snapagent"


@pytest.mark.parametrize("expr, cron", [
    ("hourly", "0 * * * *"),
    ("daily", "0 0 * * *"),
    ("weekly", "0 0 * * 1"),
    ("monthly", "0 0 1 * *"),
    ("quarterly", "0 0 1 1,4,7,10 *"),
    ("Mon..Fri 02:30", "30 2 * * 1,2,3,4,5"),
    ("Sat,Sun 03:15", "15 3 * * 6,0"),
    ("*:0/15", "0-59/15 * * * *"),
    ("*-*-* 01..05:00,30", "0,30 1-5 * * *"),
    ("*-*-* 00..23/6:10", "10 0-18/6 * * *"),
    ("*-*-1,15 04:00", "0 4 1,15 * *"),
])
def test_cron_translation(expr, cron):
    assert units.cron_schedule(expr) == cron


@pytest.mark.parametrize("expr, why", [
    ("*-*-* 02:30:15", "seconds"),
    ("2027-*-* 02:30", "year"),
    ("*-*~1 02:30", "end of the month"),
    ("daily UTC", "time zone"),
    ("Mon *-*-01 02:30", "OR"),
])
def test_cron_refuses_what_it_cannot_express(expr, why):
    with pytest.raises(ValueError, match=why):
        units.cron_schedule(expr)
    with pytest.raises(ValueError, match=r"jobs\.db-1\.schedule"):
        units.cron_file({"db-1": expr}, SAMPLE_EXE, None)


def test_exec_start_quotes_paths_and_escapes_specifiers():
    text = units.service_unit("/opt/snap agent/bin/snapagent", "/etc/snap$agent/100%.toml")
    assert 'ExecStart="/opt/snap agent/bin/snapagent" -c /etc/snap$$agent/100%%.toml -q backup %i' in text
    with pytest.raises(ValueError, match="control"):
        units.service_unit("/usr/bin/snapagent", "/etc/a\nb.toml")


def test_cron_lines_have_the_user_field_and_quote_paths():
    text = units.cron_file({"app": "hourly", "db_2.x": "Mon 01:00"}, SAMPLE_EXE, "/etc/my conf.toml")
    jobs = [line.split() for line in text.splitlines() if line and not line.startswith("#") and "=" not in line]
    assert [j[5] for j in jobs] == ["root", "root"]
    assert "0 * * * * root /usr/local/bin/snapagent -c '/etc/my conf.toml' -q backup app >/dev/null" in text
    with pytest.raises(ValueError, match="%"):
        units.cron_file({"app": "hourly"}, SAMPLE_EXE, "/etc/100%.toml")


def test_samples_in_etc_are_what_the_generator_writes():
    d = ROOT / "etc"
    for name, text in units.templates(SAMPLE_EXE, None).items():  # the backup service, the drill's two
        assert (d / "systemd" / name).read_text() == text, name
    assert (d / "systemd" / "snapagent@app.timer").read_text() == units.timer_unit("app", "hourly")
    assert (d / "cron.d-snapagent").read_text() == units.cron_file({"app": "hourly"}, SAMPLE_EXE, None)

"""The OnCalendar parser: normalized forms, refusals with a reason, next elapses (DST nights in
Europe/Berlin included) and periods. The same corpus is checked against the real systemd in
tests/system/test_schedule_systemd.py."""

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest

from snapagent.schedule import calendar

UTC = timezone.utc
BERLIN = ZoneInfo("Europe/Berlin")


@pytest.mark.parametrize("expr, norm", [
    ("hourly", "*-*-* *:00:00"),
    ("Daily", "*-*-* 00:00:00"),
    ("weekly", "Mon *-*-* 00:00:00"),
    ("quarterly", "*-01,04,07,10-01 00:00:00"),
    ("semiannually", "*-01,07-01 00:00:00"),
    ("annually", "*-01-01 00:00:00"),
    ("mon,tue,wed,fri,sat,sun 3:4", "Mon..Wed,Fri..Sun *-*-* 03:04:00"),
    ("Sat,Sun", "Sat,Sun *-*-* 00:00:00"),
    ("*:30,15,15", "*-*-* *:15,30:00"),
    ("*:0..10/5", "*-*-* *:00..10/5:00"),
    ("*:0..11/5", "*-*-* *:00..10/5:00"),
    ("*-02~03", "*-02~03 00:00:00"),
    ("Fri *-*~7/1", "Fri *-*~07/1 00:00:00"),
    ("2027-1-1", "2027-01-01 00:00:00"),
    ("*-*-* *:*:*", "*-*-* *:*:*"),
    ("daily utc", "*-*-* 00:00:00 UTC"),
    ("*-*-* 02:30 Europe/Berlin", "*-*-* 02:30:00 Europe/Berlin"),
])
def test_normalized_form(expr, norm):
    assert calendar.validate(expr) == norm


@pytest.mark.parametrize("expr, why", [
    ("", "empty"),
    ("Sat..Mon", "wrap"),
    ("*:60", "out of range"),
    ("8..3:00", "ends before it starts"),
    ("*:5/0", "must not be 0"),
    ("*-*~29", "out of range (1..28"),
    ("*-*~18,26", "out of range (1..25"),
    ("27-1-1", "four digits"),
    ("00:00:00.5", "fractional"),
    ("12:00 CET", "abbreviation"),
    ("12:00 Mars/Olympus", "unknown time zone"),
    ("@1234", "@EPOCH"),
    ("daily\nUTC", "control characters"),
    ("2200-01-01", "out of range"),
])
def test_refused_with_reason(expr, why):
    with pytest.raises(ValueError) as ei:
        calendar.validate(expr)
    assert why in str(ei.value)


def _elapses(expr, after, n=3, tz=UTC):
    out = []
    for _ in range(n):
        after = calendar.next_elapse(expr, after)
        out.append(after.astimezone(tz).isoformat())
    return out


def test_next_elapse_is_strictly_after_and_in_afters_zone():
    after = datetime(2026, 12, 2, 1, 0, tzinfo=UTC)
    n = calendar.next_elapse("hourly UTC", after)
    assert n == datetime(2026, 12, 2, 2, 0, tzinfo=UTC) and n.tzinfo is UTC


def test_spring_forward_night_skips_a_local_0230_timer(monkeypatch):
    """systemd: 02:30 does not exist on 2027-03-28 in Berlin, so the timer does not fire that day."""
    monkeypatch.setenv("TZ", "Europe/Berlin")
    got = _elapses("*-*-* 02:30", datetime(2027, 3, 26, 12, tzinfo=UTC), tz=BERLIN)
    assert got == ["2027-03-27T02:30:00+01:00", "2027-03-29T02:30:00+02:00", "2027-03-30T02:30:00+02:00"]


def test_fall_back_night_fires_once(monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Berlin")
    got = _elapses("*-*-* 02:30", datetime(2027, 10, 30, 12, tzinfo=UTC), tz=BERLIN)
    assert got == ["2027-10-31T02:30:00+02:00", "2027-11-01T02:30:00+01:00", "2027-11-02T02:30:00+01:00"]
    # an hourly :30 timer does not repeat the doubled hour either (as systemd computes it)
    got = _elapses("*:30", datetime(2027, 10, 31, 0, 0, tzinfo=UTC), tz=UTC)
    assert got == ["2027-10-31T00:30:00+00:00", "2027-10-31T02:30:00+00:00", "2027-10-31T03:30:00+00:00"]


def test_the_expressions_zone_wins_over_the_local_one(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    n = calendar.next_elapse("*-*-* 02:30 Europe/Berlin", datetime(2027, 1, 1, tzinfo=UTC))
    assert n == datetime(2027, 1, 1, 1, 30, tzinfo=UTC)


def test_never_again_and_impossible_dates():
    assert calendar.next_elapse("2020-01-01", datetime(2026, 1, 1, tzinfo=UTC)) is None
    assert calendar.next_elapse("*-02-30", datetime(2026, 1, 1, tzinfo=UTC)) is None
    assert calendar.period("*-02-30") is None


def test_last_days_of_the_month(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    assert _elapses("*-*~01 12:00", datetime(2028, 1, 31, 13, tzinfo=UTC), 2) == [
        "2028-02-29T12:00:00+00:00", "2028-03-31T12:00:00+00:00"]
    # ~7 alone is the 7th-last day (a Friday only now and then); ~7/1 the last seven days
    assert _elapses("Fri *-*~7", datetime(2026, 12, 1, tzinfo=UTC), 2) == [
        "2026-12-25T00:00:00+00:00", "2027-09-24T00:00:00+00:00"]
    assert _elapses("Fri *-*~7/1", datetime(2026, 12, 1, tzinfo=UTC), 2) == [
        "2026-12-25T00:00:00+00:00", "2027-01-29T00:00:00+00:00"]


def test_period():
    assert calendar.period("hourly") == 3600
    assert calendar.period("*:0/15") == 900
    assert calendar.period("daily") == 86400
    assert calendar.period("Mon..Fri 02:00") == 3 * 86400  # the weekend is the longest gap
    assert calendar.period("monthly") == 31 * 86400

"""The retention policy (restic 0.14's ``forget``) on a fake clock over more than a year, in
Europe/Berlin: ISO year boundary, both DST nights, future-dated backups, unlimited counts, each rule
alone and combined, keep_within on the calendar; chains kept. Exact kept sets every time."""

from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from snapagent.config import RetentionConfig
from snapagent.retention.policy import Backup, apply
from snapagent.retention.span import Span, parse_span

BERLIN = ZoneInfo("Europe/Berlin")
UTC = timezone.utc
NOW = datetime(2028, 1, 1, tzinfo=UTC)


def local(s: str) -> datetime:
    """'2026-12-28 12:00' on Berlin's wall clock (first occurrence), as an aware datetime."""
    return datetime.fromisoformat(s).replace(tzinfo=BERLIN)


def utc(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC)


def backups(times: list[datetime]) -> list[Backup]:
    """One backup per time, named by its UTC instant (``20261228T110000``)."""
    return [Backup(name(t), t) for t in times]


def name(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y%m%dT%H%M%S")


def kept(times: list[datetime], now: datetime = NOW, tz=BERLIN, **rules) -> set[str]:
    d = apply(backups(times), RetentionConfig(**rules), now=now, tz=tz)
    assert set(d.keep) | set(d.remove) == {name(t) for t in times} and not set(d.keep) & set(d.remove)
    return set(d.keep)


def names(*times: datetime) -> set[str]:
    return {name(t) for t in times}


# -- a year and more of daily backups at 12:00 local -------------------------------------------------
YEAR = [local("2026-01-01 12:00") + timedelta(days=i) for i in range(0, 400)]  # 2026-01-01 .. 2027-02-04


def day(s: str) -> datetime:
    return local(f"{s} 12:00")


def test_each_rule_alone_over_more_than_a_year():
    assert kept(YEAR, keep_last=3) == names(day("2027-02-04"), day("2027-02-03"), day("2027-02-02"))
    assert kept(YEAR, keep_daily=2) == names(day("2027-02-04"), day("2027-02-03"))
    assert kept(YEAR, keep_hourly=2) == names(day("2027-02-04"), day("2027-02-03"))
    # weekly: newest of each ISO week; 2027-02-04 is a Thursday of 2027-W05
    assert kept(YEAR, keep_weekly=3) == names(day("2027-02-04"), day("2027-01-31"), day("2027-01-24"))
    assert kept(YEAR, keep_monthly=3) == names(day("2027-02-04"), day("2027-01-31"), day("2026-12-31"))
    assert kept(YEAR, keep_yearly=5) == names(day("2027-02-04"), day("2026-12-31"))
    assert len(kept(YEAR, keep_monthly=-1)) == 14  # unlimited: every month of 2026, January and February 2027


def test_iso_year_boundary():
    # 2026 has 53 ISO weeks: 2026-12-28 (Mon) .. 2027-01-03 (Sun) is 2026-W53; 2027-01-04 starts 2027-W01
    days = [day(f"2026-12-{d}") for d in range(24, 32)] + [day(f"2027-01-0{d}") for d in range(1, 7)]
    assert kept(days, keep_weekly=3) == names(day("2027-01-06"), day("2027-01-03"), day("2026-12-27"))
    assert kept(days, keep_weekly=-1) == names(day("2027-01-06"), day("2027-01-03"), day("2026-12-27"))
    assert kept(days, keep_yearly=-1) == names(day("2027-01-06"), day("2026-12-31"))
    assert kept(days, keep_monthly=1) == names(day("2027-01-06"))
    # calendar year and ISO year differ: the newest of 2026-W53 is in 2027, and 2026-12-31 is no weekly
    assert name(day("2026-12-31")) not in kept(days, keep_weekly=2)


def test_fall_back_night_merges_the_two_local_2_oclock_hours():
    # 2026-10-25 03:00 CEST -> 02:00 CET: 00:00Z..01:59Z are all 02:xx on the wall clock
    times = [utc("2026-10-24 23:00") + timedelta(minutes=30 * i) for i in range(9)]  # 01:00 CEST .. 04:00 CET
    assert kept(times, keep_hourly=-1) == names(utc("2026-10-25 03:00"), utc("2026-10-25 02:30"),
                                                utc("2026-10-25 01:30"), utc("2026-10-24 23:30"))
    assert kept(times, tz=UTC, keep_hourly=-1) == names(*(utc(f"2026-10-25 0{h}:30") for h in range(3)),
                                                       utc("2026-10-25 03:00"), utc("2026-10-24 23:30"))
    assert kept(times, keep_hourly=2) == names(utc("2026-10-25 03:00"), utc("2026-10-25 02:30"))


def test_spring_forward_night():
    # 2026-03-29 02:00 CET -> 03:00 CEST: local 01:00, 01:30, 03:00, 03:30, 04:00, 04:30
    times = [utc("2026-03-29 00:00") + timedelta(minutes=30 * i) for i in range(6)]
    assert kept(times, keep_hourly=-1) == names(utc("2026-03-29 02:30"), utc("2026-03-29 01:30"),
                                                utc("2026-03-29 00:30"))
    # the local day: 23:30Z on the 28th is 00:30 on the 29th in Berlin, still the 28th in UTC
    late = [utc("2026-03-28 22:30"), utc("2026-03-28 23:30"), *times]
    assert kept(late, keep_daily=-1) == names(utc("2026-03-29 02:30"), utc("2026-03-28 22:30"))
    assert kept(late, tz=UTC, keep_daily=-1) == names(utc("2026-03-29 02:30"), utc("2026-03-28 23:30"))


def test_keep_within_subtracts_days_on_the_calendar_across_dst():
    # newest 2026-03-30 12:00 CEST = 10:00Z; 2d before on the wall clock is 2026-03-28 12:00 CET = 11:00Z
    times = [utc("2026-03-30 10:00"), utc("2026-03-28 11:30"), utc("2026-03-28 11:00"), utc("2026-03-28 10:30")]
    assert kept(times, keep_within="2d") == names(utc("2026-03-30 10:00"), utc("2026-03-28 11:30"))
    assert kept(times, keep_within="48h") == names(*times)  # elapsed hours: the cutoff is 10:00Z
    assert kept(times, tz=UTC, keep_within="2d") == names(*times)


def test_keep_within_resolves_a_repeated_or_skipped_wall_time_like_go():
    # 2d before 2026-10-27 02:30 CET is 2026-10-25 02:30, which happens twice: Go takes the second (01:30Z)
    times = [utc("2026-10-27 01:30"), utc("2026-10-25 01:45"), utc("2026-10-25 01:00"), utc("2026-10-25 00:45")]
    assert kept(times, keep_within="2d") == names(utc("2026-10-27 01:30"), utc("2026-10-25 01:45"))
    # 2d before 2026-03-31 02:30 CEST is 2026-03-29 02:30, which never happens: Go counts it as CET (01:30Z)
    times = [utc("2026-03-31 00:30"), utc("2026-03-29 01:45"), utc("2026-03-29 01:30"), utc("2026-03-29 00:45")]
    assert kept(times, keep_within="2d") == names(utc("2026-03-31 00:30"), utc("2026-03-29 01:45"))


def test_keep_within_months_and_years():
    assert kept(YEAR, keep_within="1m") == {name(t) for t in YEAR if t > day("2027-01-04")}
    assert kept(YEAR, keep_within="1y") == {name(t) for t in YEAR if t > day("2026-02-04")}
    assert kept(YEAR, keep_within="1y1m1d") == {name(t) for t in YEAR if t > day("2026-01-03")}
    # month overflow normalised like Go: 2026-03-31 minus 1 month is "2026-02-31" = 2026-03-03
    assert Span(months=1).before(day("2026-03-31"), BERLIN) == day("2026-03-03").astimezone(UTC)


def test_future_dated_backup_counts_but_does_not_anchor_keep_within():
    now = utc("2027-01-10 00:00")
    times = [local("2027-01-05 11:00"), local("2027-01-06 12:00"), local("2030-01-01 00:00")]
    assert kept(times, now=now, keep_within="1d") == names(local("2027-01-06 12:00"), local("2030-01-01 00:00"))
    assert kept(times, now=now, keep_last=1) == names(local("2030-01-01 00:00"))
    assert kept(times, now=now, keep_daily=2) == names(local("2030-01-01 00:00"), local("2027-01-06 12:00"))
    assert kept(times, now=utc("2026-01-01 00:00"), keep_within="1d") == names(*times)  # all in the future


def test_unlimited_counts_and_combined_rules_count_each_backup_against_each_rule():
    times = [local(f"2026-05-0{d} {h}:00") for d in range(1, 6) for h in (10, 20)]
    assert kept(times, keep_daily=-1) == {name(local(f"2026-05-0{d} 20:00")) for d in range(1, 6)}
    assert kept(times, keep_last=-1) == names(*times)
    d = apply(backups(times), RetentionConfig(keep_last=2, keep_daily=3), now=NOW, tz=BERLIN)
    assert set(d.keep) == names(local("2026-05-05 20:00"), local("2026-05-05 10:00"),
                                local("2026-05-04 20:00"), local("2026-05-03 20:00"))
    assert d.reasons[name(local("2026-05-05 20:00"))] == ["last", "daily"]
    assert d.reasons[name(local("2026-05-05 10:00"))] == ["last"]
    assert d.keep == sorted(d.keep, reverse=True) and d.remove == sorted(d.remove, reverse=True)
    combined = kept(YEAR, keep_daily=7, keep_weekly=4, keep_monthly=12, keep_yearly=3, keep_within="2d")
    expect = {name(day(f"2027-02-0{i}")) for i in range(1, 5)} | {name(day(f"2027-01-{i}")) for i in (29, 30, 31)}
    expect |= names(day("2027-01-24"), day("2027-01-17"))  # weekly: W05 and W04 are in the dailies already
    expect |= {name(day(s)) for s in ("2026-12-31", "2026-11-30", "2026-10-31", "2026-09-30", "2026-08-31",
                                      "2026-07-31", "2026-06-30", "2026-05-31", "2026-04-30", "2026-03-31")}
    assert combined == expect  # 12 monthly: Feb and Jan 2027 from the dailies, then 10 month ends of 2026


def test_restic_0_14_does_not_keep_the_oldest_to_fill_the_counts():
    times = [local("2026-03-01 10:00"), local("2026-03-01 11:00"), local("2026-03-01 12:00")]
    assert kept(times, keep_daily=5) == names(local("2026-03-01 12:00"))


def test_no_rule_removes_nothing():
    for rules in ({}, {"keep_last": 0, "keep_daily": 0}, {"keep_within": "0d"}):
        d = apply(backups(YEAR[:5]), RetentionConfig(**rules), now=NOW, tz=BERLIN)
        assert d.remove == [] and len(d.keep) == 5
    assert apply(backups(YEAR[:2]), None).remove == []


def test_chains_are_kept_with_their_reason():
    t = [day(f"2026-06-0{i}") for i in range(1, 8)]
    bs = [Backup("a1", t[0]), Backup("a2", t[1], ("a1",)), Backup("a3", t[2], ("a2",)), Backup("b1", t[3]),
          Backup("b2", t[4], ("b1",)), Backup("c1", t[5]), Backup("c2", t[6], ("c1", "gone"))]
    d = apply(bs, RetentionConfig(keep_last=2), now=NOW, tz=BERLIN)
    assert (d.keep, d.remove) == (["c2", "c1"], ["b2", "b1", "a3", "a2", "a1"])
    d = apply(bs, RetentionConfig(keep_daily=1, keep_monthly=2), now=NOW, tz=BERLIN)  # keeps c2 (June), nothing else
    assert d.keep == ["c2", "c1"] and d.reasons["c1"] == ["chain"]
    d = apply(bs[:3] + [Backup("d1", t[6])], RetentionConfig(keep_last=2), now=NOW, tz=BERLIN)
    assert d.keep == ["d1", "a3", "a2", "a1"] and d.reasons["a2"] == ["chain"] and d.reasons["a1"] == ["chain"]
    assert d.remove == []


def test_a_chain_parent_the_rules_keep_anyway_lists_both_reasons():
    t = [day("2026-06-01"), day("2026-06-02")]
    d = apply([Backup("p", t[0]), Backup("c", t[1], ("p",))], RetentionConfig(keep_last=2), now=NOW, tz=BERLIN)
    assert d.reasons == {"c": ["last"], "p": ["last", "chain"]}


@pytest.mark.parametrize("text, span", [("2d", Span(days=2)), ("1y6m", Span(1, 6)), ("2d12h", Span(days=2, hours=12)),
                                        ("36h", Span(hours=36)), ("1d1d", Span(days=2))])
def test_keep_within_syntax(text, span):
    assert parse_span(text) == span


@pytest.mark.parametrize("bad", ["", "2", "5min", "1w", "-1d", "1.5d", "d", 3600])
def test_keep_within_refuses_what_restic_refuses(bad):
    with pytest.raises(ValueError, match="keep_within"):
        parse_span(bad)

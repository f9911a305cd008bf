"""Differential test of snapagent's OnCalendar parser against the real ``systemd-analyze calendar``
(scripts/setup-systemd-tools.sh): what ``validate`` accepts, systemd accepts with the same
normalized form and the same next elapses (TZ=Europe/Berlin around both DST nights, and UTC, from
fixed ``--base-time``s); the garbage systemd refuses, ``validate`` refuses too."""

from __future__ import annotations

import os
import random
import re
import shutil
import subprocess
from datetime import datetime, timezone

import pytest

from snapagent.schedule import calendar
from tests.helpers.caps import need

ACCEPTED = [
    "minutely", "hourly", "daily", "weekly", "monthly", "quarterly", "semiannually", "yearly", "annually",
    "Daily", "hourly Europe/Berlin", "daily UTC", "monthly America/New_York", "semi-annually", "bi-annually",
    "Mon..Fri 02:30", "mon,tue,wed,fri,sat,sun 3:4", "Sat,Sun 03:15", "Monday 00:00",
    "*-*-* 02:30", "*-*-* 02:30:00", "*:30", "*:0/15", "*:0..10/5", "*:30,15,15", "*-*-* 02:00/20:00",
    "*-*-* 02/1:00:00", "*-*-* 01..03:00,30", "Mon,Wed,Fri *-*-* 01..03:00,30", "*-*-* *:*:*",
    "*-*-* *:*:0/7", "*-02~03", "Fri *-*~7/1", "*-*~1", "*-02~1..3", "*-*-1,5..7 3:4",
    "*-02-30", "*-*-31 23:59:59", "2027..2030-*-* 02:30", "2028-02-29 12:00", "*-1/2-* 04:00",
    "*-*-* 02:30 Europe/Berlin", "*-*-* 02:30 America/New_York", "12:00 UTC", "2020-01-01",
]

REFUSED = [
    "", "never", "*", "Sat..Mon", "*-05~1/2", "*:5/0", "*:60", "8..3:00", "25:00", "*-13-01", "*-*-32",
    "2027-01-01 4", "Mon-", "Mon,,Tue", "1969-01-01", "2200-01-01", "12:00 Mars/Olympus", "12:00:00:00",
    "*-*-* 12", "hourly daily", "Funday", "*-*-0", "*:*:61", "00:00/0", "*-*~29", "; rm -rf /",
    "--help", "12:00\n", "*:1..", "*:..5", "*:/5", "*-*-* 1-2:00", " daily", "daily ", "12:00  UTC",
    "hourly  UTC", "12:00  Europe/Berlin", "daily\tUTC",
]

BASES = ["2027-03-27 12:00:00 UTC", "2027-03-28 00:30:00 UTC", "2027-10-30 12:00:00 UTC",
         "2027-10-31 00:45:00 UTC", "2027-10-31 01:10:00 UTC", "2026-12-31 23:59:59 UTC"]
N = 6


@pytest.fixture(scope="module")
def analyze():
    exe = shutil.which("systemd-analyze")
    need(exe is not None, "systemd-analyze missing (scripts/setup-systemd-tools.sh)")
    r = subprocess.run([exe, "calendar", "--base-time=2027-01-01 00:00:00 UTC", "daily"], capture_output=True, text=True)
    need(r.returncode == 0, f"systemd-analyze calendar --base-time does not work: {r.stderr.strip()}")
    return exe


def systemd(exe: str, expr: str, tz: str, base: str | None = None) -> tuple[str | None, list[str]]:
    """(normalized form or None when refused, the next N elapses in UTC as 'YYYY-MM-DD HH:MM:SS')."""
    argv = [exe, "calendar", f"--iterations={N}"] + ([f"--base-time={base}"] if base else []) + ["--", expr]
    r = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, "TZ": tz, "LC_ALL": "C"})
    if r.returncode != 0:
        return None, []
    norm = re.search(r"Normalized form: (.*)", r.stdout)[1]
    if "(in UTC)" in r.stdout:
        times = re.findall(r"\(in UTC\): \w+ (\S+ \S+) UTC", r.stdout)
    else:
        times = re.findall(r"(?:Next elapse|Iter\. #\d+): \w+ (\S+ \S+) UTC", r.stdout)
    return norm, times


def ours(expr: str, base: str) -> list[str]:
    t = datetime.strptime(base, "%Y-%m-%d %H:%M:%S UTC").replace(tzinfo=timezone.utc)
    out = []
    for _ in range(N):
        t = calendar.next_elapse(expr, t)
        if t is None:
            break
        out.append(t.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"))
    return out


@pytest.mark.parametrize("tz", ["Europe/Berlin", "UTC"])
@pytest.mark.parametrize("expr", ACCEPTED)
def test_accepted_like_systemd(analyze, expr, tz, monkeypatch):
    monkeypatch.setenv("TZ", tz)
    mine = calendar.validate(expr)
    for base in BASES:
        norm, times = systemd(analyze, expr, tz, base)
        assert norm is not None, f"systemd refuses {expr!r}, which validate accepts"
        assert mine == norm
        assert ours(expr, base) == times, f"{expr!r} from {base} in {tz}"


@pytest.mark.parametrize("expr", REFUSED)
def test_refused_like_systemd(analyze, expr):
    norm, _ = systemd(analyze, expr, "UTC")
    assert norm is None, f"systemd accepts {expr!r}; move it to ACCEPTED"
    with pytest.raises(ValueError):
        calendar.validate(expr)


def test_corpus_sizes():
    assert len(ACCEPTED) >= 40 and len(REFUSED) >= 30


def _random_expr(rnd: random.Random) -> str:
    """A random expression over the accepted grammar (lists, ranges, repetitions, '~', zones)."""
    def item(lo: int, hi: int) -> str:
        a, r = rnd.randint(lo, hi), rnd.random()
        if r < 0.4:
            return str(a)
        if r < 0.6:
            return f"{a}..{rnd.randint(a, hi)}"
        if r < 0.8:
            return f"{a}/{rnd.randint(1, max(1, (hi - lo) // 2))}"
        return f"{a}..{rnd.randint(a, hi)}/{rnd.randint(1, 5)}"

    def field(lo: int, hi: int) -> str:
        return "*" if rnd.random() < 0.4 else ",".join(item(lo, hi) for _ in range(rnd.randint(1, 3)))

    parts = []
    if rnd.random() < 0.3:
        days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
        a = rnd.randint(0, 6)
        parts.append(days[a] if rnd.random() < 0.5 else f"{days[a]}..{days[rnd.randint(a, 6)]}")
    if rnd.random() < 0.6:
        sep = "~" if rnd.random() < 0.15 else "-"
        year = "*" if rnd.random() < 0.8 else field(2026, 2030)
        parts.append(f"{year}-{field(1, 12)}{sep}{field(1, 28 if sep == '~' else 31)}")
    if rnd.random() < 0.8:
        parts.append(f"{field(0, 23)}:{field(0, 59)}" + (f":{field(0, 59)}" if rnd.random() < 0.5 else ""))
    if rnd.random() < 0.2:
        parts.append(rnd.choice(["UTC", "Europe/Berlin", "America/New_York"]))
    return " ".join(parts) or "daily"


@pytest.mark.parametrize("seed", range(4))
def test_random_expressions_like_systemd(analyze, seed, monkeypatch):
    """60 random expressions per seed: whatever validate accepts, systemd accepts, normalizes the
    same way and elapses at the same times (validate may refuse more: that is allowed)."""
    rnd = random.Random(seed)
    accepted = 0
    for _ in range(60):
        expr, tz, base = _random_expr(rnd), rnd.choice(["Europe/Berlin", "UTC"]), rnd.choice(BASES)
        monkeypatch.setenv("TZ", tz)
        try:
            mine = calendar.validate(expr)
        except ValueError:
            continue
        accepted += 1
        norm, times = systemd(analyze, expr, tz, base)
        assert norm == mine, f"{expr!r}: systemd {norm!r}, ours {mine!r}"
        assert ours(expr, base) == times, f"{expr!r} from {base} in {tz}"
    assert accepted >= 20

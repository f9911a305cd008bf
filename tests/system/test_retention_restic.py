"""Differential test: snapagent's retention policy against the real ``restic forget --dry-run
--json`` (Debian 12's restic 0.14, ``scripts/setup-restic.sh``). One local repository holds
snapshots made with ``restic backup --time`` at local times in Europe/Berlin (an ISO year boundary,
both DST nights, a day boundary, a year of monthly backups, a future-dated one); for each policy the
kept and removed sets must be the same. Each snapshot's instant is read back from restic, so the
ambiguous fall-back hour is whatever restic made of it.

-1 (unlimited) is not compared: restic 0.14 does not know it and keeps nothing for such a rule
(restic 0.16 added it — later spelled ``unlimited`` — with the meaning snapagent has) — see
``test_restic_0_14_has_no_unlimited``.
"""

import json
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from snapagent.config import RetentionConfig
from snapagent.retention.policy import Backup, apply
from tests.helpers.caps import need

TZ = "Europe/Berlin"


def _times() -> list[str]:
    t = [f"{date(2025, 12, 20) + timedelta(days=i)} 12:00:00" for i in range(20)]  # 2025-12-29 is 2026-W01
    t += [f"2026-10-25 0{h}:{m}:00" for h in range(5) for m in ("00", "30")]  # fall back: 02:xx twice
    t += ["2026-10-24 23:30:00", "2026-03-28 23:30:00", "2026-03-29 00:30:00", "2026-03-29 01:30:00",
          "2026-03-29 03:00:00", "2026-03-29 03:30:00", "2026-03-30 12:00:00", "2026-03-30 13:00:00",
          "2026-06-01 23:59:59", "2026-06-02 00:00:00", "2026-06-02 00:00:01", "2030-01-01 00:00:00",
          "2026-11-25 02:30:00"]  # the newest past: 1m before it is the repeated 02:30 of 2026-10-25
    t += [f"2025-{m:02d}-15 08:00:00" for m in range(1, 13)] + [f"2026-{m:02d}-15 08:00:00" for m in range(1, 12)]
    return t


POLICIES = [
    {"keep_last": 5},
    {"keep_hourly": 12},
    {"keep_daily": 14},
    {"keep_weekly": 8},
    {"keep_monthly": 6},
    {"keep_yearly": 3},
    {"keep_within": "5d"},
    {"keep_within": "1m"},
    {"keep_within": "1y2m3d"},
    {"keep_within": "36h"},
    {"keep_daily": 7, "keep_weekly": 4, "keep_monthly": 12, "keep_yearly": 3},
    {"keep_last": 2, "keep_within": "10d"},
    {"keep_hourly": 48, "keep_monthly": 3},
    {"keep_weekly": 30, "keep_within": "2d"},
]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    need(shutil.which("restic") is not None, "restic is not installed (scripts/setup-restic.sh)")
    d = tmp_path_factory.mktemp("restic")
    pw = d / "password"
    pw.write_text("not-a-secret-test-repository\n")
    pw.chmod(0o600)
    (d / "data").write_text("x\n")
    env = {**os.environ, "TZ": TZ, "RESTIC_PASSWORD_FILE": str(pw), "RESTIC_REPOSITORY": str(d / "repo"),
           "RESTIC_CACHE_DIR": str(d / "cache")}

    def restic(*args: str) -> str:
        r = subprocess.run(["restic", "-q", *args], env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, f"restic {args}: {r.stderr}"
        return r.stdout

    restic("init")
    with ThreadPoolExecutor(4) as pool:  # backups take a shared lock: they may run side by side
        list(pool.map(lambda t: restic("backup", "--host", "h", "--time", t, str(d / "data")), _times()))
    snaps = json.loads(restic("snapshots", "--json"))
    assert len(snaps) == len(_times())
    backups = [Backup(s["id"], datetime.fromisoformat(s["time"])) for s in snaps]
    return restic, backups


def _flags(policy: dict) -> list[str]:
    return [a for k, v in policy.items() for a in (f"--{k.replace('_', '-')}", str(v))]


def _forget(restic, policy: dict) -> tuple[set[str], set[str], dict[str, list[str]]]:
    """Return restic's (keep, remove, reasons as snapagent's rule names)."""
    groups = json.loads(restic("forget", "--no-lock", "--dry-run", "--json", *_flags(policy)))
    assert len(groups) == 1
    g = groups[0]
    rule = {"last snapshot": "last", "hourly snapshot": "hourly", "daily snapshot": "daily",
            "weekly snapshot": "weekly", "monthly snapshot": "monthly", "yearly snapshot": "yearly"}
    keep = g["keep"] or []
    assert len(g["reasons"] or []) == len(keep)  # in keep's order (0.14 leaves the id out of them)
    reasons = {s["id"]: sorted(rule.get(m, "within" if m.startswith("within ") else m) for m in r["matches"])
               for s, r in zip(keep, g["reasons"] or [])}
    return {s["id"] for s in keep}, {s["id"] for s in g["remove"] or []}, reasons


def test_same_keep_and_remove_as_restic_forget(repo):
    restic, backups = repo
    with ThreadPoolExecutor(4) as pool:
        theirs = list(pool.map(lambda p: _forget(restic, p), POLICIES))
    berlin = ZoneInfo(TZ)
    for policy, (keep, remove, reasons) in zip(POLICIES, theirs):
        ours = apply(backups, RetentionConfig(**policy), tz=berlin)
        assert (set(ours.keep), set(ours.remove)) == (keep, remove), f"policy {policy}"
        assert {i: sorted(r) for i, r in ours.reasons.items()} == reasons, f"policy {policy}: the rules that kept each"
        assert 0 < len(keep) < len(backups), f"policy {policy} does not discriminate"


def test_restic_0_14_has_no_unlimited(repo):
    restic, backups = repo
    keep, remove, _ = _forget(restic, {"keep_daily": -1})
    ours = apply(backups, RetentionConfig(keep_daily=-1), tz=ZoneInfo(TZ))
    assert len(set(ours.keep)) == len({b.created.astimezone(ZoneInfo(TZ)).date() for b in backups})
    if keep:  # a newer restic: -1 is unlimited there, as here
        assert (set(ours.keep), set(ours.remove)) == (keep, remove)
    else:
        assert remove == {b.id for b in backups}

"""WAL archive hygiene without a server: which archive files a kept backup-API backup no longer
needs (names, timelines, compression, symlinks), when nothing is removed and why, and the prune
side — retention first, the kept backups of every job sharing the archive, opt-out, a running
sharing job. The real thing (a server, several backups, pg_archivecleanup as oracle, a drill of
the oldest kept backup) is tests/system/test_postgresql_archive.py."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from snapagent import config as configmod
from snapagent import manifest as M
from snapagent.joblock import JobLock
from snapagent.plugin.quiescer import KeptRecord
from snapagent.quiesce.postgresql import archive
from snapagent.retention import archives
from snapagent.retention.prune import prune
from snapagent.util.runner import Runner
from tests.helpers.cli import snapagent, write_config
from tests.helpers.manifests import manifest, volume

SEG = 16 << 20


def seg(tli: int, n: int) -> str:
    return f"{tli:08X}{0:08X}{n:08X}"


def rec(start: str | None, mode: str = "backup-api", **kw) -> dict:
    r = {"type": "postgresql", "mode": mode, **kw}
    if start is not None:
        r["oldest_needed_walfile"] = start
    return r


def kept(*records: dict) -> list[KeptRecord]:
    return [KeptRecord(f"db-{i}", "db", r) for i, r in enumerate(records)]


@pytest.mark.parametrize("name, want", [
    ("000000010000000000000003", (1, "0000000000000003", "segment")),
    ("000000010000000A000000FF.partial", (1, "0000000A000000FF", "partial")),
    ("000000020000000000000003.00000028.backup", (2, "0000000000000003", "backup")),
    ("000000010000000000000003.gz", (1, "0000000000000003", "segment")),
    ("000000010000000000000003.partial.zst", (1, "0000000000000003", "partial")),
    ("000000010000000000000003.00000028.backup.lz4", (1, "0000000000000003", "backup")),
    ("00000002.history", None), ("00000002.history.gz", None),
    ("0000000100000000000000ab", None), (".000000010000000000000003.tmp", None),
    ("000000010000000000000003.tmp", None), ("00000001000000000000000", None),
    ("0000000100000000000000033", None), ("000000010000000000000003.gz.gz", None),
    ("000000010000000000000003/", None), ("-00000010000000000000003", None),
])
def test_classify_knows_only_the_names_postgresql_archives(name, want):
    assert archive.classify(name) == want


LOWER = "00000001000000000000000a"


@pytest.fixture
def arch(tmp_path):
    a = tmp_path / "wal archive"
    a.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / seg(1, 1)).write_bytes(b"precious")
    for n in range(1, 11):
        (a / seg(1, n)).write_bytes(b"w" * 100)
    (a / f"{seg(1, 2)}.00000028.backup").write_text("old backup")
    (a / f"{seg(1, 6)}.00000060.backup").write_text("kept backup")
    (a / f"{seg(1, 3)}.partial").write_bytes(b"p")
    (a / f"{seg(1, 4)}.gz").write_bytes(b"g")
    (a / "00000002.history").write_text("1\t0/5000000\tno recovery target specified\n")
    (a / seg(2, 1)).write_bytes(b"newer timeline")  # on a timeline no kept backup knows
    (a / f".{seg(1, 1)}.tmp").write_bytes(b"t")  # archive_command's temp file
    (a / LOWER).write_bytes(b"l")  # not PostgreSQL's spelling
    os.symlink(outside / seg(1, 1), a / seg(1, 0))  # a symlink named like an old segment
    (a / f"{seg(1, 0)}.partial").mkdir()  # a directory named like one
    return a, outside


def test_clean_removes_only_what_no_kept_backup_needs_oldest_first(arch):
    a, outside = arch
    ks = kept(rec(seg(1, 8)), rec(seg(1, 6)), rec(None, mode="checkpoint"))
    dry = archive.clean("postgresql", a, ks, [], dry_run=True)
    want = [seg(1, 1), f"{seg(1, 2)}.00000028.backup", seg(1, 2), seg(1, 3), f"{seg(1, 3)}.partial",
            seg(1, 4), f"{seg(1, 4)}.gz", seg(1, 5)]
    assert dry.reason == "" and dry.kept_from == seg(1, 6) and dry.needed_by == "db-1"
    assert sorted(dry.remove) == sorted(want) and dry.removed == []
    assert [n[8:24] for n in dry.remove] == sorted(n[8:24] for n in dry.remove)  # oldest first
    assert dry.bytes == 5 * 100 + len("old backup") + 2
    before = set(os.listdir(a))
    assert (a / seg(1, 1)).exists() and set(os.listdir(a)) == before  # a dry run removes nothing

    done = archive.clean("postgresql", a, ks, [], dry_run=False)
    assert done.removed == dry.remove and done.bytes == dry.bytes and not done.failed
    left = set(os.listdir(a))
    assert left == before - set(want)
    assert done.kept == len(left)
    # what stays: every segment from the oldest needed on, the kept backup's .backup file, the
    # timeline history, the newer timeline, temp and foreign names, the symlink (and its target)
    for n in [seg(1, n) for n in range(6, 11)] + [f"{seg(1, 6)}.00000060.backup", "00000002.history", seg(2, 1),
                                                   f".{seg(1, 1)}.tmp", LOWER, seg(1, 0)]:
        assert n in left, n
    assert (outside / seg(1, 1)).read_bytes() == b"precious"
    assert archive.clean("postgresql", a, ks, [], dry_run=False).remove == []  # idempotent


def test_timeline_rules_follow_the_newest_kept_backup(tmp_path):
    a = tmp_path / "a"
    a.mkdir()
    for t, n in [(1, 3), (1, 4), (2, 2), (2, 4), (3, 1), (2, 5)]:
        (a / seg(t, n)).write_bytes(b"x")
    # a backup on timeline 2 needs from segment 4 on; timeline 3 is newer than any kept backup
    r = archive.clean("postgresql", a, kept(rec(seg(2, 4))), [], dry_run=True)
    assert sorted(r.remove) == sorted([seg(1, 3), seg(2, 2)])


@pytest.mark.parametrize("records, why", [
    ([], "no kept backup-API backup draws on it"),
    ([rec(None, mode="checkpoint")], "no kept backup-API backup draws on it"),
    ([rec("../../etc/passwd")], "records no valid oldest segment"),
    ([rec(None)], "records no valid oldest segment (None)"),
    ([rec(seg(1, 40))], "holds no segment at or after 000000010000000000000028"),
])
def test_nothing_is_removed_when_the_cut_off_cannot_be_trusted(arch, records, why):
    a, _ = arch
    before = set(os.listdir(a))
    r = archive.clean("postgresql", a, kept(*records), [], dry_run=False)
    assert why in r.reason and r.removed == [] and set(os.listdir(a)) == before


def test_a_record_counts_for_its_archive_an_unnamed_one_or_one_no_longer_configured(tmp_path):
    mine, other, gone = tmp_path / "mine", tmp_path / "other", tmp_path / "gone"
    ks = kept(rec(seg(1, 9), wal_archive=str(mine)), rec(seg(1, 8), wal_archive=str(other)),
              rec(seg(1, 7)), rec(seg(1, 6), wal_archive=str(gone)))
    got = archive.counted(ks, mine, [mine, other])
    assert [k.backup for k in got] == ["db-0", "db-2", "db-3"]
    assert archive.needed(got)[0] == seg(1, 6)
    # a manifest written before oldest_needed_walfile: its start_walfile is the same segment
    older = [KeptRecord("db-old", "db", {"type": "postgresql", "mode": "backup-api", "start_walfile": seg(1, 3)})]
    assert archive.needed(archive.counted(older + got, mine, [mine]))[:1] == (seg(1, 3),)


# -- prune: retention first, then the archive ------------------------------------------------------
T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


def pg_job(name: str, archive_dir: Path, keep: int | None = 2, wal_prune: bool = True) -> str:
    ret = f"[jobs.{name}.retention]\nkeep_last = {keep}\n" if keep else ""
    return (f'[jobs.{name}]\ndriver = "btrfs"\nvolumes = ["/srv/{name}"]\ntarget = "local"\n{ret}'
            f'[[jobs.{name}.quiesce]]\ntype = "postgresql"\ndsn = "host=/run/postgresql user=postgres"\n'
            f'wal_archive = "{archive_dir}"\n' + ("" if wal_prune else "wal_prune = false\n"))


@pytest.fixture
def pgsetup(tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    a = tmp_path / "archive"
    a.mkdir()
    for n in range(1, 21):
        (a / seg(1, n)).write_bytes(b"w" * 10)

    def store(job: str, day: int, start: int) -> str:
        created = T0 + timedelta(days=day)
        bid = f"{job}-{created:%Y%m%dT%H%M%SZ}"
        q = {"type": "postgresql", "mode": "backup-api", "start_walfile": seg(1, start),
             "oldest_needed_walfile": seg(1, start), "wal_archive": str(a)}
        m = manifest(job=job, id=bid, created=created, completed=created, quiescers=[q],
                     volumes=[volume(volume=f"/srv/{job}", snapshot=f"/srv/{job}/.s-{bid}")])
        d = tmp_path / "backups" / job / bid
        d.mkdir(parents=True)
        (d / "00-app.tar").write_bytes(b"x")
        (d / "manifest.json").write_bytes(M.dumps(m))
        return bid

    return tmp_path, a, store


def run_prune(cfg, job: str, dry_run: bool = False):
    runner = Runner(dry_run=dry_run)
    done = prune(cfg, cfg.job(job), runner)
    return done, archives.clean(cfg, cfg.job(job), done, dry_run)


def test_prune_then_clean_keeps_what_the_kept_backups_and_a_sharing_job_need(pgsetup):
    tmp, a, store = pgsetup
    cfg = configmod.load(write_config(tmp, pg_job("db", a) + pg_job("db2", a, keep=None)))
    ids = [store("db", d, s) for d, s in ((1, 3), (2, 9), (3, 12), (4, 15))]
    done, cleaned = run_prune(cfg, "db", dry_run=True)
    assert sorted(done[0].remove) == ids[:2] and len(os.listdir(a)) == 20  # dry run: nothing gone
    assert cleaned[0].kept_from == seg(1, 12) and cleaned[0].remove == [seg(1, n) for n in range(1, 12)]

    store("db2", 0, 10)  # another job on the same archive, keeping everything
    done, cleaned = run_prune(cfg, "db")
    assert sorted(done[0].removed) == ids[:2]
    c = cleaned[0]
    assert c.kept_from == seg(1, 10) and c.needed_by.startswith("db2-")
    assert c.removed == [seg(1, n) for n in range(1, 10)] and c.bytes == 90
    assert sorted(os.listdir(a)) == [seg(1, n) for n in range(10, 21)]

    # the sharing job runs: its backup may be waiting for segments — nothing is touched
    with JobLock(tmp / "state", "db2"):
        (a / seg(1, 1)).write_bytes(b"w")
        r = archives.clean(cfg, cfg.job("db"), [], dry_run=False)[0]
    assert "job 'db2' draws on it too and is running (pid" in r.reason and (a / seg(1, 1)).exists()


def test_opt_out_no_rules_and_cli_output(pgsetup):
    tmp, a, store = pgsetup
    path = write_config(tmp, pg_job("db", a, wal_prune=False) + pg_job("db3", a, keep=None))
    for d, s in ((1, 3), (2, 9), (3, 12)):
        store("db", d, s)
    r = snapagent("prune", "db", config=path, check=True)
    assert "nothing removed: jobs.db.quiesce[0].wal_prune = false: left as it is" in r.stdout
    r = snapagent("prune", "db3", config=path, check=True)
    assert "nothing removed: the job has no retention rules" in r.stdout
    assert len(os.listdir(a)) == 20

    path = write_config(tmp, pg_job("db", a))
    r = snapagent("prune", "db", "--dry-run", config=path, check=True)
    assert "job db, archive" in r.stdout and f"keep from {seg(1, 9)} on" in r.stdout, r.stdout
    assert "would remove 8 file(s), 80 B:" in r.stdout and f"  {seg(1, 8)}" in r.stdout
    r = snapagent("--json", "prune", "db", config=path, check=True)
    import json

    rec0 = json.loads(r.stdout)[0]
    assert rec0["archives"][0]["removed"] == [seg(1, n) for n in range(1, 9)] and rec0["archives"][0]["bytes"] == 80
    assert sorted(os.listdir(a)) == [seg(1, n) for n in range(9, 21)]

"""Pruning a directory target with forged-but-valid manifests: what is removed and in which order,
kept snapshots released first, damaged backups untouched, and every kill point of a removal left
in a state ``cleanup`` settles (the backup gone for good, or intact)."""

from __future__ import annotations

import shutil
from datetime import datetime, timedelta, timezone

import pytest

from snapagent import cleanup
from snapagent import config as configmod
from snapagent import manifest as M
from snapagent.errors import JobLocked
from snapagent.joblock import JobLock
from snapagent.journal import journals, read_open
from snapagent.plugin.target import Stored
from snapagent.retention.prune import describe, prune
from snapagent.util.runner import Runner
from tests.helpers.cli import write_config
from tests.helpers.manifests import manifest, volume

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


class BaseDriver:
    """A driver that keeps bases: records what it released, or fails to."""

    name = "fakebase"
    released: list[str] = []
    fail = False

    def __init__(self, runner, options):
        pass

    @classmethod
    def incremental_refusal(cls, fmt, options):
        return None

    def keeps_base(self, fmt):
        return True

    def keep(self, snap):
        pass

    def release_base(self, record):
        if BaseDriver.fail:
            raise RuntimeError("device busy")
        BaseDriver.released.append(record.snapshot)


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    BaseDriver.released, BaseDriver.fail = [], False
    path = write_config(tmp_path, '[jobs.app]\ndriver = "btrfs"\nvolumes = ["/srv/app"]\ntarget = "local"\n'
                                  '[jobs.app.retention]\nkeep_last = 2\n')
    cfg = configmod.load(path)
    target = cfg.target("local")

    def store(days: int, parent: str | None = None, kept: bool = False) -> str:
        created = T0 + timedelta(days=days)
        bid = f"app-{created:%Y%m%dT%H%M%SZ}"
        m = manifest(id=bid, created=created, completed=created,
                     volumes=[volume(snapshot=f"/srv/app/.snap-{bid}", parent=parent, kept=kept)])
        d = tmp_path / "backups" / "app" / bid
        d.mkdir(parents=True)
        (d / "00-app.tar").write_bytes(b"x")
        (d / "manifest.json").write_bytes(M.dumps(m))
        return bid

    return cfg, target, store, tmp_path


def ids(target) -> list[str]:
    return [b.id for b in target.list("app") if isinstance(b, Stored)]


def test_prune_removes_what_the_rules_drop_and_releases_kept_snapshots(setup):
    cfg, target, store, _ = setup
    made = [store(i, kept=True) for i in range(4)]
    job = cfg.job("app")
    job.driver_cls = BaseDriver
    dry = prune(cfg, job, Runner(dry_run=True))
    assert dry[0].remove == [made[1], made[0]] and ids(target) == made and BaseDriver.released == []
    [r] = prune(cfg, job, Runner())
    assert (r.keep, r.remove, r.removed, r.failed) == (made[:1:-1], made[1::-1], made[1::-1], [])
    assert r.reasons == {made[3]: ["last"], made[2]: ["last"]}
    assert ids(target) == made[2:]
    assert BaseDriver.released == [f"/srv/app/.snap-{made[1]}", f"/srv/app/.snap-{made[0]}"]
    assert sorted(p.name for p in (target.cfg.path / "app").iterdir()) == made[2:]
    assert list(journals(cfg.agent.state_dir)) == []  # nothing left open


def test_a_chain_is_kept_and_its_parent_with_it(setup):
    cfg, target, store, _ = setup
    full = store(0)
    inc1 = store(1, parent=full)
    inc2 = store(2, parent=inc1)
    [r] = prune(cfg, cfg.job("app"), Runner())
    assert r.remove == [] and ids(target) == [full, inc1, inc2]
    assert r.reasons[full] == ["chain"] and r.reasons[inc1] == ["last", "chain"]


def test_a_snapshot_that_cannot_be_released_keeps_its_backup(setup):
    cfg, target, store, _ = setup
    made = [store(i, kept=True) for i in range(3)]
    job = cfg.job("app")
    job.driver_cls = BaseDriver
    BaseDriver.fail = True
    [r] = prune(cfg, job, Runner())
    assert r.removed == [] and "device busy" in r.failed[0] and ids(target) == made
    assert list(journals(cfg.agent.state_dir)) == []


def test_damaged_backups_are_reported_never_touched(setup):
    cfg, target, store, tmp = setup
    made = [store(i) for i in range(4)]
    bad = tmp / "backups" / "app" / made[0] / "manifest.json"
    bad.write_bytes(bad.read_bytes().replace(b'"host": "h"', b'"host": "x"'))
    [r] = prune(cfg, cfg.job("app"), Runner())
    assert r.damaged == [made[0]] and r.removed == [made[1]]
    assert bad.exists()


def test_prune_waits_for_no_one_a_running_job_refuses_it(setup):
    cfg, _, store, _ = setup
    store(0)
    with JobLock(cfg.agent.state_dir, "app"):
        with pytest.raises(JobLocked, match="already running"):
            prune(cfg, cfg.job("app"), Runner())


def test_a_removal_killed_after_the_rename_is_finished_by_cleanup(setup, monkeypatch):
    cfg, target, store, _ = setup
    made = [store(i) for i in range(3)]

    def killed(path, *a, **kw):
        raise KeyboardInterrupt  # stands for SIGKILL: nothing after this point runs
    monkeypatch.setattr(shutil, "rmtree", killed)
    monkeypatch.setattr(cleanup, "undo_records", lambda recs, runner: ([], []))  # the run's own undo died too
    monkeypatch.setattr("snapagent.journal.Journal.finish", lambda self: self.close_file())
    with pytest.raises(KeyboardInterrupt):
        prune(cfg, cfg.job("app"), Runner())
    monkeypatch.undo()
    assert ids(target) == made[1:]  # the backup stopped existing in one step
    [j] = journals(cfg.agent.state_dir, "app")
    assert [r["kind"] for r in read_open(j)] == ["delete"]
    done = cleanup.sweep(cfg.agent.state_dir, Runner())
    assert done == [f"finished removing backup {target.cfg.path / 'app' / made[0]}"]
    assert sorted(p.name for p in (target.cfg.path / "app").iterdir()) == made[1:]


def test_a_removal_killed_before_the_rename_leaves_the_backup_intact(setup, monkeypatch):
    cfg, target, store, _ = setup
    made = [store(i) for i in range(3)]

    def killed(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr("os.rename", killed)
    monkeypatch.setattr(cleanup, "undo_records", lambda recs, runner: ([], []))
    monkeypatch.setattr("snapagent.journal.Journal.finish", lambda self: self.close_file())
    with pytest.raises(KeyboardInterrupt):
        prune(cfg, cfg.job("app"), Runner())
    monkeypatch.undo()
    assert ids(target) == made
    assert cleanup.sweep(cfg.agent.state_dir, Runner())[0].endswith("was not being removed yet: left intact")
    assert ids(target) == made and list(journals(cfg.agent.state_dir)) == []


def test_describe_reads_like_restic():
    assert describe(None) == "no retention rules: nothing is removed"
    r = configmod.RetentionConfig(keep_last=3, keep_daily=-1, keep_within="2d")
    assert describe(r) == "keep 3 last, all daily, all within 2d of the newest"


def test_prune_of_every_job_goes_on_past_a_locked_one(tmp_path):
    from tests.helpers.cli import snapagent

    path = write_config(tmp_path, "".join(f'[jobs.{j}]\ndriver = "btrfs"\nvolumes = ["/srv/{j}"]\ntarget = "local"\n'
                                          f'[jobs.{j}.retention]\nkeep_last = 1\n' for j in ("a", "b")))
    with JobLock(tmp_path / "state", "a"):
        r = snapagent("prune", config=path, in_process=True)
    assert r.returncode == 1 and "prune: job 'a': job 'a' is already running" in r.stderr
    assert "job b, target local: keep 1 last" in r.stdout

"""The zfs driver through the real engine, directory target and restore code, with a fake zfs:
full then incremental send with held bases, and a restore whose DEST names a new dataset
(the Driver.prepare_destination hook). Real OpenZFS: tests/vm/test_zfs.py."""

from __future__ import annotations

import json
import time
import tomllib

import pytest

from snapagent import catalog
from snapagent.config import parse
from snapagent.engine import BackupRun
from snapagent.errors import RestoreRefused
from snapagent.restore import restore
from snapagent.restore_dest import needed_bytes
from tests.helpers.fakezfs import FakeZfs, zfs_runner
from tests.helpers.manifests import manifest

DS = "tank/app db"


def config(tmp_path, options: str = "", job: str = 'mode = "incremental"'):
    text = (f'[agent]\nstate_dir = {json.dumps(str(tmp_path / "state"))}\n'
            f'[targets.local]\ntype = "directory"\npath = {json.dumps(str(tmp_path / "backups"))}\n'
            f'[jobs.db]\ndriver = "zfs"\nvolumes = [{json.dumps(DS)}]\ntarget = "local"\n{job}\n'
            f'[jobs.db.options]\n{options}\n')
    return parse(tomllib.loads(text), tmp_path / "c.toml")


def test_full_incremental_chain_and_dataset_restore(tmp_path):
    cfg = config(tmp_path)
    fake = FakeZfs()
    fake.add("tank")
    fake.add(DS, mountpoint=str(tmp_path / "live"))
    runner = zfs_runner(fake)
    m1 = BackupRun(cfg, cfg.job("db"), runner).run().manifest
    v1 = m1.volumes[0]
    assert v1.kept and v1.parent is None and fake.snapshots[v1.snapshot]["holds"] == {"snapagent"}
    time.sleep(1.05)  # backup ids have one-second resolution
    m2 = BackupRun(cfg, cfg.job("db"), runner).run().manifest
    v2 = m2.volumes[0]
    assert v2.parent == m1.id and v2.info["parent_snapshot"] == v1.snapshot
    assert list(fake.snapshots) == [v2.snapshot]  # the old base was released and destroyed
    assert not list((tmp_path / "state" / "journal" / "db").glob("*.jsonl"))  # nothing left open

    received = []
    runner.fake.on_receive = lambda argv: (received.append(argv), argv[-1] in fake.datasets or fake.add(argv[-1]))
    # the space a restore needs is the whole chain's: checked before any artifact is read
    need = m1.artifact(v1.artifact).raw_size + m2.artifact(v2.artifact).raw_size
    assert needed_bytes(cfg, catalog.find(cfg, m2.id)) == need
    fake.datasets["tank"]["available"] = str(need - 1)
    with pytest.raises(RestoreRefused, match="--to tank/restored: the restore needs .* zfs dataset tank has"):
        restore(cfg, runner, m2.id, "tank/restored")
    assert received == [] and "tank/restored" not in fake.datasets
    fake.datasets["tank"]["available"] = str(need)
    summary = restore(cfg, runner, m2.id, "tank/restored")
    assert summary["dest"] == "tank/restored"
    assert received == [["zfs", "receive", "-x", "mountpoint", "--", "tank/restored/app_db"],
                        ["zfs", "receive", "-x", "mountpoint", "-F", "--", "tank/restored/app_db"]]
    assert [s.received for s in runner.procs if s.argv[1] == "receive"] == [
        f"STREAM zfs send -- {v1.snapshot}".encode(),
        f"STREAM zfs send -i {v1.snapshot} -- {v2.snapshot}".encode()]
    assert summary["volumes"] == [{"volume": DS, "path": "/mnt/tank/restored/app_db", "restored_as": "tank/restored/app_db"}]


def test_tar_backup_restores_into_a_directory(tmp_path):
    cfg = config(tmp_path)
    fake = FakeZfs()
    fake.add(DS, mountpoint=str(tmp_path / "live"))
    (tmp_path / "live" / ".zfs" / "snapshot").mkdir(parents=True)
    runner = zfs_runner(fake)
    job = cfg.job("db")
    assert job.driver_cls(runner, job.options).prepare_dataset(str(tmp_path / "out"), manifest("db"), False) is None


def _backup(cfg, runner):
    time.sleep(1.05)  # backup ids have one-second resolution
    return BackupRun(cfg, cfg.job("db"), runner).run()


def test_mode_full_keeps_nothing_and_sends_in_full(tmp_path):
    cfg = config(tmp_path, job="")
    fake = FakeZfs()
    fake.add(DS, mountpoint=str(tmp_path / "live"))
    runner = zfs_runner(fake)
    for _ in range(2):
        m = _backup(cfg, runner).manifest
        assert not m.volumes[0].kept and m.volumes[0].parent is None and not m.volumes[0].incremental
        assert fake.snapshots == {}
    assert not any("-i" in c.argv for c in runner.calls if c.argv[1] == "send")


def test_full_every_count_restarts_the_chain_and_releases_the_old_base(tmp_path):
    cfg = config(tmp_path, job='mode = "incremental"\nfull_every = 1')
    fake = FakeZfs()
    fake.add(DS, mountpoint=str(tmp_path / "live"))
    runner = zfs_runner(fake)
    said = []
    ms = []
    for _ in range(3):
        ms.append(BackupRun(cfg, cfg.job("db"), runner, say=said.append).run().manifest)
        time.sleep(1.05)
    assert [(m.volumes[0].incremental, m.volumes[0].parent) for m in ms] == [
        (False, None), (True, ms[0].id), (False, None)]
    assert list(fake.snapshots) == [ms[2].volumes[0].snapshot]  # only the newest base is held
    assert f"full backup: full_every = 1: the chain of {ms[1].id} holds 1 incremental(s)" in said


def test_a_base_gone_falls_back_to_a_full_with_a_warning(tmp_path):
    cfg = config(tmp_path)
    fake = FakeZfs()
    fake.add(DS, mountpoint=str(tmp_path / "live"))
    runner = zfs_runner(fake)
    m1 = BackupRun(cfg, cfg.job("db"), runner).run().manifest
    del fake.snapshots[m1.volumes[0].snapshot]  # someone destroyed the held base
    r2 = _backup(cfg, runner)
    v2 = r2.manifest.volumes[0]
    assert v2.parent is None and not v2.incremental and v2.kept
    assert r2.warnings == [f"{DS}: exported in full, not incrementally on {m1.id}: its base "
                           f"{m1.volumes[0].snapshot} cannot be used: it no longer exists"]


def test_dry_run_says_whether_the_next_backup_is_incremental(tmp_path):
    cfg = config(tmp_path, job='mode = "incremental"\nfull_every = 1')
    fake = FakeZfs()
    fake.add(DS, mountpoint=str(tmp_path / "live"))

    def plan() -> str:
        dry = zfs_runner(fake, dry_run=True)
        BackupRun(cfg, cfg.job("db"), dry).plan()
        return next(line for line in dry.echoed if line.startswith("would export"))

    assert "as send in full (the job has no backup yet)" in plan()
    m1 = BackupRun(cfg, cfg.job("db"), zfs_runner(fake)).run().manifest
    assert f"as send incrementally on {m1.id} " in plan()
    m2 = _backup(cfg, zfs_runner(fake)).manifest
    assert f"in full (full_every = 1: the chain of {m2.id} holds 1 incremental(s))" in plan()


def test_a_base_left_by_a_run_killed_after_its_commit_is_released_by_the_next_but_one(tmp_path, monkeypatch):
    cfg = config(tmp_path)
    fake = FakeZfs()
    fake.add(DS, mountpoint=str(tmp_path / "live"))
    runner = zfs_runner(fake)
    m1 = BackupRun(cfg, cfg.job("db"), runner).run().manifest
    # run 2 is killed right after its commit: its snapshot is undone by cleanup, base 1 is left
    # (simulated by not keeping: snapshot 2 stays open in the journal and the run undoes it)
    from plugins.zfs import ZfsDriver

    with monkeypatch.context() as mp:
        mp.setattr(ZfsDriver, "keep", lambda self, snap: None)
        mp.setattr(ZfsDriver, "release_base", lambda self, rec: None)
        _backup(cfg, runner)
    assert list(fake.snapshots) == [m1.volumes[0].snapshot]
    r3 = _backup(cfg, runner)
    assert r3.manifest.volumes[0].parent is None  # base 2 is gone: a full, with a warning
    assert list(fake.snapshots) == [r3.manifest.volumes[0].snapshot], "base 1 leaked"

"""The zfs driver through the real engine, directory target and restore code, with a fake zfs:
full then incremental send with held bases, and a restore whose DEST names a new dataset
(the Driver.prepare_destination hook). Real OpenZFS: tests/vm/test_zfs.py."""

from __future__ import annotations

import json
import time
import tomllib

from snapagent.config import parse
from snapagent.engine import BackupRun
from snapagent.restore import restore
from tests.helpers.fakezfs import FakeZfs, zfs_runner
from tests.helpers.manifests import manifest

DS = "tank/app db"


def config(tmp_path, options: str = ""):
    text = (f'[agent]\nstate_dir = {json.dumps(str(tmp_path / "state"))}\n'
            f'[targets.local]\ntype = "directory"\npath = {json.dumps(str(tmp_path / "backups"))}\n'
            f'[jobs.db]\ndriver = "zfs"\nvolumes = [{json.dumps(DS)}]\ntarget = "local"\n'
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

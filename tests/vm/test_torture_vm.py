"""Torture inside the test VM: the bank-transfer writer on SQLite (WAL) while backups are taken back
to back on OpenZFS (send, an incremental chain: every restore replays it) and on an LVM thin volume
(tar); every backup restored and checked like on btrfs (tests/torture)."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from pathlib import Path

import pytest

from tests.helpers import cli
from tests.helpers.cli import toml_str, write_config
from tests.torture.check import BANK_SQL, Run, Writer, locked_at, verdict, worst_stall
from tests.vm.vmtools import VolumeGroup, ZPool, run

pytestmark = pytest.mark.vm


def snapagent(*args: str, config: Path):
    return cli.snapagent(*args, config=config, check=True, in_process=True)


def loop(cfg: Path, writer: Writer, run_: Run, count: int, restore_and_read) -> None:
    writer.wait(50, limit=120)
    for _ in range(count):
        t0 = time.time()
        m = json.loads(snapagent("--json", "backup", "db", config=cfg).stdout)
        t1 = time.time()
        integrity, rows = restore_and_read(m)
        run_.add(verdict(rows, integrity, writer.ack, locked_at(m)), m, worst_stall(writer.ack, t0, t1))
        time.sleep(max(0.0, 1.05 - (time.time() - t1)))
    run_.commits = len(writer.ack.read_text().splitlines())
    run_.save()
    print(f"\n{run_.check}: {run_.backups} backups restored and checked, {run_.violations} violations, "
          f"{run_.acked_lost} acknowledged commits lost, worst writer stall {run_.worst_stall_ms:.0f} ms")
    assert run_.violations == 0 and run_.acked_lost == 0, run_.notes


def read_bank(db: Path) -> tuple[bool, dict]:
    conn = sqlite3.connect(db)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        total, max_seq, count = conn.execute(BANK_SQL).fetchone()
    finally:
        conn.close()
    return integrity, {"total": total, "max_seq": max_seq, "seq_count": count}


def test_sqlite_on_zfs_incremental_chain(zpool: ZPool, workdir, torture_backups):
    ds = zpool.dataset("bank")
    run(["zfs", "create", "-p", "--", ds])
    db = zpool.mountpoint(ds) / "bank.db"
    cfg = write_config(workdir, f'[jobs.db]\ndriver = "zfs"\nvolumes = [{toml_str(ds)}]\ntarget = "local"\n'
                                f'mode = "incremental"\nmax_freeze = "20s"\n[[jobs.db.quiesce]]\ntype = "sqlite"\npath = {toml_str(db)}\n')
    writer = Writer("sqlite", str(db), workdir / "acks", 0.005)

    def restore_and_read(m: dict):
        dest = zpool.dataset("restored")
        summary = json.loads(snapagent("--json", "restore", m["id"], "--to", dest, config=cfg).stdout)
        try:
            return read_bank(Path(summary["volumes"][0]["path"]) / "bank.db")
        finally:
            run(["zfs", "destroy", "-r", "--", dest])

    try:
        loop(cfg, writer, Run("sqlite wal paced on zfs (send, incremental chain)"), torture_backups, restore_and_read)
    finally:
        writer.stop()


def test_sqlite_on_lvm_thin(make_vg, workdir, torture_backups):
    vg: VolumeGroup = make_vg(size="384M")
    run(["lvcreate", "-q", "-y", "-L", "200M", "-T", f"{vg.name}/pool"])
    run(["lvcreate", "-q", "-y", "-V", "128M", "-T", f"{vg.name}/pool", "-n", "bank"])
    where = workdir / "bank-mnt"
    where.mkdir()
    run(["mkfs.ext4", "-q", vg.lv_path("bank")])
    run(["mount", vg.lv_path("bank"), str(where)])
    db = where / "bank.db"
    cfg = write_config(workdir, f'[jobs.db]\ndriver = "lvm-thin"\nvolumes = [{toml_str(vg.lv_ref("bank"))}]\n'
                                f'target = "local"\nmax_freeze = "20s"\n[[jobs.db.quiesce]]\ntype = "sqlite"\n'
                                f'path = {toml_str(db)}\n[jobs.db.options]\nmax_data_percent = 95\n')
    writer = Writer("sqlite", str(db), workdir / "acks", 0.005)

    def restore_and_read(m: dict):
        dest = workdir / "restored"
        snapagent("restore", m["id"], "--to", str(dest), config=cfg)
        try:
            return read_bank(dest / m["volumes"][0]["label"] / "bank.db")
        finally:
            shutil.rmtree(dest)

    try:
        loop(cfg, writer, Run("sqlite wal paced on lvm-thin (tar)"), torture_backups, restore_and_read)
    finally:
        writer.stop()
        run(["umount", str(where)], check=False)

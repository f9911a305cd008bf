"""Torture: a bank-transfer writer runs while backups are taken back to back; every backup is
restored into scratch space and checked — integrity check, the balances' invariant, a gap-free
sequence, every transaction acknowledged before the lock present. On real btrfs with SQLite (WAL
and rollback journal, back to back and paced), PostgreSQL and MariaDB. ``--torture-backups N``
sets the number of backups per combination (CI: 10). Figures go to the reliability report.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import pg, snapplaces
from tests.helpers.caps import need
from tests.helpers.cli import last_line, snapagent, toml_str, write_config
from tests.helpers.mariadb import MariaDB, available
from tests.torture.check import BANK_SQL, Run, Verdict, Writer, locked_at, verdict, worst_stall

pytestmark = [pytest.mark.root, pytest.mark.btrfs]


def torture(cfg: Path, job: str, writer: Writer, run: Run, count: int, check_restore) -> None:
    """Take ``count`` backups back to back while ``writer`` runs; restore and check each."""
    writer.wait(100)
    for i in range(count):
        t0 = time.time()
        bid = last_line(snapagent("backup", job, config=cfg, check=True))
        t1 = time.time()
        m = json.loads(snapagent("show", bid, "--json", config=cfg, check=True).stdout)
        v = check_restore(bid, m)
        run.add(v, m, worst_stall(writer.ack, t0, t1))
        time.sleep(max(0.0, 1.05 - (time.time() - t1)))  # backup ids have one-second resolution
    run.commits = len(writer.ack.read_text().splitlines())
    run.save()
    print(f"\n{run.check}: {run.backups} backups restored and checked, {run.violations} violations, "
          f"{run.acked_lost} acknowledged commits lost, worst writer stall {run.worst_stall_ms:.0f} ms, "
          f"worst lock wait {run.worst_lock_wait_ms:.1f} ms, worst freeze {run.worst_freeze_ms:.0f} ms")
    assert run.violations == 0 and run.acked_lost == 0, run.notes


@pytest.mark.parametrize("journal_mode,pace", [("wal", 0.0), ("wal", 0.005), ("delete", 0.0), ("delete", 0.005)],
                         ids=["wal-full", "wal-paced", "rollback-full", "rollback-paced"])
def test_sqlite_on_btrfs(subvol, workdir, torture_backups, journal_mode, pace):
    vol = subvol("bank")
    db = vol / "bank.db"
    cfg = write_config(workdir, f'[jobs.bank]\ndriver = "btrfs"\nvolumes = [{toml_str(vol)}]\ntarget = "local"\n'
                                f'max_freeze = "5s"\n[[jobs.bank.quiesce]]\ntype = "sqlite"\npath = {toml_str(db)}\n')
    writer = Writer("sqlite", str(db), workdir / "acks", pace, journal_mode)

    def check(bid: str, m: dict) -> Verdict:
        dest = workdir / "restored"
        snapagent("restore", bid, "--to", str(dest), config=cfg, check=True)
        conn = sqlite3.connect(dest / m["volumes"][0]["label"] / "bank.db")
        try:
            integrity = conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            total, max_seq, count = conn.execute(BANK_SQL).fetchone()
        finally:
            conn.close()
        shutil.rmtree(dest)
        return verdict({"total": total, "max_seq": max_seq, "seq_count": count}, integrity, writer.ack, locked_at(m))

    try:
        torture(cfg, "bank", writer, Run(f"sqlite {journal_mode} {'paced' if pace else 'back to back'} on btrfs"),
                torture_backups, check)
    finally:
        writer.stop()


@pytest.mark.postgres
def test_postgresql_on_btrfs(btrfs_root, workdir, torture_backups):
    ok, why = pg.available()
    need(ok, why)
    vol = btrfs_root / f"pg-bank-{os.getpid()}"
    subprocess.run(["btrfs", "subvolume", "create", str(vol)], check=True, capture_output=True)
    pg.open_path_for_postgres(vol)
    cluster = pg.Cluster(pg.pg_dir(vol / "pgdata")).initdb().start()
    cfg = write_config(workdir, f'[jobs.bank]\ndriver = "btrfs"\nvolumes = [{toml_str(vol)}]\ntarget = "local"\n'
                                f'max_freeze = "5s"\n[[jobs.bank.quiesce]]\ntype = "postgresql"\n'
                                f'dsn = {toml_str(cluster.dsn)}\n')
    pg.open_path_for_postgres(workdir / "restored")  # pg_ctl runs as postgres
    writer = Writer("postgresql", cluster.dsn, workdir / "acks", 0.0)

    def check(bid: str, m: dict) -> Verdict:
        dest = workdir / "restored"
        snapagent("restore", bid, "--to", str(dest), config=cfg, check=True)
        pgdata = dest / m["volumes"][0]["label"] / "pgdata"
        r = pg.as_postgres([str(pg.BINDIR / "pg_ctl"), "-D", str(pgdata), "-o", "-p 5433", "-l",
                            str(pgdata / "torture.log"), "-w", "-t", "120", "start"])
        assert r.returncode == 0, r.stdout + r.stderr
        try:
            import psycopg

            with psycopg.connect(host=str(cluster.sock), port=5433, user="postgres", dbname="postgres",
                                 autocommit=True) as conn:
                total, max_seq, count = conn.execute(BANK_SQL).fetchone()
            amcheck = subprocess.run([str(pg.BINDIR / "pg_amcheck"), "--all", "--install-missing", "-h",
                                      str(cluster.sock), "-p", "5433", "-U", "postgres"], capture_output=True)
        finally:
            pg.as_postgres([str(pg.BINDIR / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"])
        shutil.rmtree(dest)
        return verdict({"total": total, "max_seq": max_seq, "seq_count": count}, amcheck.returncode == 0,
                       writer.ack, locked_at(m))

    try:
        torture(cfg, "bank", writer, Run("postgresql back to back on btrfs"), torture_backups, check)
    finally:
        writer.stop()
        cluster.cleanup()
        for snap in snapplaces.snapdir(vol).glob("*"):
            subprocess.run(["btrfs", "subvolume", "delete", str(snap)], capture_output=True)
        subprocess.run(["btrfs", "subvolume", "delete", str(vol)], capture_output=True)


@pytest.mark.mysql
def test_mariadb_on_btrfs(subvol, workdir, torture_backups):
    need(available(), "needs mariadb-server (scripts/setup-mariadb.sh)")
    vol = subvol("mariadb bank")
    (vol / "datadir").mkdir()
    server = MariaDB(vol / "datadir")
    server.install()
    server.start()
    cfg = write_config(workdir, f'[jobs.bank]\ndriver = "btrfs"\nvolumes = [{toml_str(vol)}]\ntarget = "local"\n'
                                f'max_freeze = "5s"\n[[jobs.bank.quiesce]]\ntype = "mysql"\n'
                                f'socket = {toml_str(server.socket)}\n')
    writer = Writer("mysql", server.socket, workdir / "acks", 0.0)

    def check(bid: str, m: dict) -> Verdict:
        dest = workdir / "restored"
        snapagent("restore", bid, "--to", str(dest), config=cfg, check=True)
        copy = MariaDB(dest / m["volumes"][0]["label"] / "datadir")
        try:
            copy.start()
            rows = copy.sql("CHECK TABLE bank.accounts, bank.seq")
            integrity = all(r[3] in ("OK", "Table is already up to date") for r in rows if r[2] == "status")
            total, max_seq, count = copy.sql(BANK_SQL.replace("FROM accounts", "FROM bank.accounts")
                                              .replace("FROM seq", "FROM bank.seq"))[0]
        finally:
            copy.cleanup()
        shutil.rmtree(dest)
        return verdict({"total": total, "max_seq": max_seq, "seq_count": count}, integrity, writer.ack, locked_at(m))

    try:
        torture(cfg, "bank", writer, Run("mariadb back to back on btrfs"), torture_backups, check)
    finally:
        writer.stop()
        server.cleanup()

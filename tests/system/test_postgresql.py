"""PostgreSQL quiescer against real PostgreSQL 15 clusters on real btrfs subvolumes.

Each test runs its own throwaway cluster (initdb as `postgres`, private unix socket, no TCP) while a
writer commits continuously and logs every acknowledged transaction; backups go through the real
CLI; restored clusters are started as the restore's own instructions say and must hold every
transaction acknowledged before the backup's consistency point.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from tests.helpers import pg, snapplaces
from tests.helpers.caps import need
from tests.helpers.cli import ROOT, snapagent, toml_str, write_config
from tests.helpers.wrappers import slow_tool

pytestmark = [pytest.mark.postgres, pytest.mark.btrfs, pytest.mark.root]

WRITER = ROOT / "tests" / "helpers" / "pg_writer.py"


@pytest.fixture(scope="module")
def pg_base():
    """A private base directory outside /tmp/pytest-of-root: a concurrent pytest session resets that
    directory to 0700, which would cut the postgres user off from its data mid-test."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="snapagent-pgtest-", dir="/var/tmp"))
    os.chmod(base, 0o711)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def btrfs_root(pg_base):
    """Overrides conftest's: the same 1 GiB btrfs loop filesystem, mounted below ``pg_base``."""
    need(os.geteuid() == 0, "needs root for loop devices and mounts")
    img, mnt = pg_base / "fs.img", pg_base / "mnt"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(1 << 30)
    subprocess.run(["mkfs.btrfs", "-q", str(img)], check=True, capture_output=True)
    r = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True, text=True)
    need(r.returncode == 0, f"cannot mount a btrfs loop device: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture
def workdir(pg_base, request):
    """Overrides conftest's: config, state and target below ``pg_base`` (reachable by postgres)."""
    d = pg_base / re.sub(r"[^A-Za-z0-9_-]", "_", request.node.name)[:60]
    (d / "state").mkdir(parents=True)
    os.chmod(d, 0o711)
    return d


@pytest.fixture
def pg_ok():
    ok, why = pg.available()
    need(ok, why)


@pytest.fixture
def clusters():
    made: list[pg.Cluster] = []
    yield made
    for c in made:
        c.cleanup()


class Writer:
    """The continuous writer subprocess and its acknowledgement log."""

    def __init__(self, dsn: str, ackfile: Path):
        self.ackfile = ackfile
        self.proc = subprocess.Popen([sys.executable, str(WRITER), dsn, str(ackfile)], stderr=subprocess.PIPE)

    def acks(self) -> list[tuple[int, float]]:
        out = []
        for line in self.ackfile.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                out.append((int(parts[0]), float(parts[1])))
        return out

    def wait_for(self, n: int) -> None:
        pg.wait_until(lambda: self.ackfile.exists() and len(self.acks()) >= n, timeout=60)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def max_gap(self, t0: float, t1: float) -> float:
        """Return the longest time between two acknowledgements within [t0, t1]."""
        times = [t for _, t in self.acks() if t0 <= t <= t1]
        times = [t0, *times, t1]
        return max(b - a for a, b in zip(times, times[1:]))


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def make_cluster(clusters, pgdata: Path, archive: Path | None = None, waldir: Path | None = None) -> pg.Cluster:
    c = pg.Cluster(pg.pg_dir(pgdata), archive=pg.pg_dir(archive) if archive else None, waldir=waldir)
    clusters.append(c)
    return c.initdb().start()


def job_toml(volumes: list[Path], *, max_freeze: str = "10s", **q) -> str:
    vols = ", ".join(toml_str(v) for v in volumes)
    qlines = "".join(f"{k} = {toml_str(v)}\n" for k, v in q.items())
    return (f"[jobs.db]\ndriver = \"btrfs\"\nvolumes = [{vols}]\ntarget = \"local\"\nmax_freeze = \"{max_freeze}\"\n\n"
            f"[[jobs.db.quiesce]]\ntype = \"postgresql\"\n{qlines}")


def backup(cfg: Path) -> dict:
    r = snapagent("--json", "backup", "db", config=cfg, check=True)
    return json.loads(r.stdout)


def start_handover(argv: list[str], logfile: Path) -> subprocess.Popen:
    """Run a hand-over's start command exactly as given (argv, no shell); return the process
    (pg_ctl returns once the server is up; the postmaster form stays in the foreground)."""
    with open(logfile, "ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_handover(h: dict, proc: subprocess.Popen) -> None:
    """Run the hand-over's stop command; the started process must then end."""
    r = subprocess.run(h["stop"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    proc.wait(timeout=120)


def check_handover(h: dict) -> None:
    """The hand-over's check command lists the databases of the started copy."""
    r = subprocess.run(h["check"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "postgres" in r.stdout.split(), r.stdout + r.stderr


def in_place_script(live: Path, copy: Path, wal: Path | None, tablespaces: dict[str, str], stop_live: list[str],
                    start_live: list[str]) -> str:
    """Return docs/databases.md's put-in-place block for PostgreSQL with its values set and the live
    cluster's service commands (systemctl) replaced by the test cluster's."""
    import shlex

    text = (ROOT / "docs" / "databases.md").read_text()
    block = text.split("<!-- pg-in-place:begin -->", 1)[1].split("<!-- pg-in-place:end -->", 1)[0]
    lines = block.split("```sh\n", 1)[1].rsplit("```", 1)[0].splitlines()
    assert [ln.split("=", 1)[0] for ln in lines[:4]] == ["LIVE", "COPY", "WAL", "TABLESPACES"], lines[:4]
    values = [f"LIVE={shlex.quote(str(live))}", f"COPY={shlex.quote(str(copy))}",
              f"WAL={shlex.quote(str(wal) if wal else '')}",
              "TABLESPACES=" + shlex.quote("\n".join(f"{oid}={loc}" for oid, loc in tablespaces.items()))]
    body = [shlex.join(stop_live) if ln.startswith("systemctl stop ") else
            shlex.join(start_live) if ln.startswith("systemctl start ") else ln for ln in lines[4:]]
    assert body != lines[4:], "the block stops and starts the live cluster with systemctl"
    return "\n".join(values + body) + "\n"


def manual_restore_script(backup_dir: Path, dest: Path) -> str:
    """Return the by-hand restore block of docs/databases.md with B and DEST set."""
    text = (ROOT / "docs" / "databases.md").read_text()
    block = text.split("<!-- manual-restore:begin -->", 1)[1].split("<!-- manual-restore:end -->", 1)[0]
    body = block.split("```sh\n", 1)[1].rsplit("```", 1)[0]
    lines = body.splitlines()
    assert lines[0].startswith("B=") and lines[1].startswith("DEST=")
    import shlex
    return "\n".join([f"B={shlex.quote(str(backup_dir))}", f"DEST={shlex.quote(str(dest))}", *lines[2:]]) + "\n"


def restored_conn(sockdir: Path, port: int = 5440, timeout: float = 60):
    """Connect to the restored copy once it is up and out of recovery."""
    import psycopg

    def attempt():
        try:
            conn = psycopg.connect(host=str(sockdir), port=port, user="postgres", dbname="postgres", autocommit=True)
        except psycopg.OperationalError:
            return None
        if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
            conn.close()
            return None
        return conn

    return pg.wait_until(attempt, timeout=timeout, step=0.2)


def check_acked_present(conn, writer: Writer, consistent_at: float) -> int:
    """Assert every id acknowledged before ``consistent_at`` is in the restored table; return how many."""
    acked = [i for i, t in writer.acks() if t < consistent_at]
    assert len(acked) > 50, "the writer committed too little before the backup"
    present = {r[0] for r in conn.execute("SELECT id FROM bank WHERE id <= %s", (max(acked),))}
    missing = [i for i in acked if i not in present]
    assert not missing, f"{len(missing)} acknowledged transactions missing after restore, e.g. {missing[:5]}"
    return len(acked)


def stop_restored(pgdata: Path) -> None:
    pg.as_postgres([str(pg.BINDIR / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"])


# ---------------------------------------------------------------------------------------------
def test_checkpoint_mode_hot_backup_restore_and_drill(pg_ok, subvol, workdir, clusters):
    vol = subvol("pg data")
    c = make_cluster(clusters, vol / "pgdata")
    # refusals before anything is touched: a role without privileges; backup-api without archiving
    c.sql("CREATE ROLE weak LOGIN")
    cfg = write_config(workdir, job_toml([vol], dsn=c.dsn.replace("user=postgres", "user=weak")))
    r = snapagent("backup", "db", config=cfg)
    assert r.returncode == 1 and "lacks privileges" in r.stderr and "pg_read_all_settings" in r.stderr, r.stderr
    # the gate reaches the same checks, grants included: each missing one named, then a pass
    for grant, missing in (("pg_read_all_settings", "pg_read_all_settings"), ("pg_checkpoint", "pg_checkpoint"), (None, None)):
        r = snapagent("config", "check", "--connect", config=cfg)
        if missing is None:
            assert r.returncode == 0 and "every job's preflight passed" in r.stdout, r.stderr
        else:
            assert r.returncode == 1 and "jobs.db: postgresql: " in r.stderr and missing in r.stderr, r.stderr
            c.sql(f"GRANT {grant} TO weak")
    assert no_snapshots(vol)
    cfg = write_config(workdir, job_toml([vol], dsn=c.dsn, mode="backup-api", wal_archive=workdir))
    r = snapagent("backup", "db", config=cfg)
    assert r.returncode == 1 and "archiving is off (archive_mode = off)" in r.stderr, r.stderr
    assert no_snapshots(vol)

    w = Writer(c.dsn, workdir / "acks")
    try:
        w.wait_for(100)
        cfg = write_config(workdir, job_toml([vol], dsn=c.dsn))
        r = snapagent("backup", "db", "--dry-run", config=cfg, check=True)
        assert f"would quiesce: postgresql {vol / 'pgdata'}" in r.stdout and no_snapshots(vol)
        t0 = time.time()
        m = backup(cfg)
        t1 = time.time()
        w.wait_for(len(w.acks()) + 20)
    finally:
        w.stop()
    rec = m["quiescers"][0]
    assert rec["mode"] == "checkpoint" and rec["consistency"] == "crash"
    assert re.match(r"^[0-9A-F]+/[0-9A-F]+$", rec["lsn"])
    assert rec["server_version_num"] >= 150000 and rec["data_directory"] == str(vol / "pgdata")
    assert "labelfile" not in rec and "artifacts" not in rec
    gap = w.max_gap(t0, t1)
    print(f"\ncheckpoint mode: freeze window {m['freeze_window_ms']:.1f} ms, quiesce {rec['quiesce_ms']:.1f} ms, "
          f"longest writer gap during the backup {gap * 1000:.0f} ms")
    assert gap < 10 + 1

    dest = workdir / "restore 'here' $(x)"
    pg.open_path_for_postgres(dest)  # a place the postgres user can reach; DEST itself snapagent handles
    r = snapagent("restore", m["id"], "--to", str(dest), config=cfg, check=True)
    pgdata = dest / m["volumes"][0]["label"] / "pgdata"
    assert f"postgresql database: {pgdata}" in r.stdout and "owner:    postgres" in r.stdout, r.stdout
    assert "setfacl" not in r.stdout, r.stdout  # DEST's parents are open to postgres: no hint (issue 12)
    assert not (pgdata / "postmaster.pid").exists() and not (pgdata / "postmaster.opts").exists()
    assert "archive_mode = 'off'" in (pgdata / "postgresql.auto.conf").read_text()
    assert os.stat(pgdata).st_mode & 0o777 == 0o700 and pgdata.owner() == "postgres"
    # the text block is what an operator pastes: its start/check/stop lines split back into the commands
    import shlex

    h = {k: shlex.split(re.search(rf"(?m)^    {k}: +(.*)$", r.stdout).group(1)) for k in ("start", "check", "stop")}
    port = int(re.search(r"(?m)^    listens:  port (\d+) on 127.0.0.1", r.stdout).group(1))
    assert port >= 5440 and h["start"][4].endswith("/postgres")  # DEST holds a `$`: the postmaster itself
    proc = start_handover(h["start"], workdir / "start.log")
    try:
        sock = next(a.split("=", 1)[1] for a in h["start"] if a.startswith("unix_socket_directories="))
        with restored_conn(Path(sock), port) as conn:
            n = check_acked_present(conn, w, ts(rec["consistent_at"]))
            assert conn.execute("SHOW data_directory").fetchone()[0] == str(pgdata)
        check_handover(h)
    finally:
        stop_handover(h, proc)
    assert Path(sock).parent == Path(tempfile.gettempdir())  # DEST's path is too long for a socket below it
    shutil.rmtree(sock)  # the hand-over's run directory stays with the restored copy: the test removes it
    print(f"checkpoint mode: all {n} transactions acknowledged before the snapshot are in the restore")

    d = snapagent("--json", "drill", m["id"], config=cfg)
    report = json.loads(d.stdout)
    assert d.returncode == 0 and report["ok"], d.stdout + d.stderr
    names = [p["name"] for p in report["probes"]]
    assert any(n.endswith("pg_amcheck") for n in names) and any(n.endswith("recovery") for n in names)
    rows = next(p for p in report["probes"] if p["name"].endswith("rows"))["rows"]
    assert rows["postgres.public.bank"] >= n
    print(f"drill: {[(p['name'], p['message']) for p in report['probes']]}")


def test_backup_api_with_pg_wal_and_tablespace_on_second_volume(pg_ok, subvol, workdir, clusters, pg_base):
    data_vol, wal_vol = subvol("pgdata"), subvol("pg wal")
    archive = workdir / "wal archive"
    waldir = pg.pg_dir(wal_vol / "wal")
    c = make_cluster(clusters, data_vol / "pgdata", archive=archive, waldir=waldir)
    tsdir = pg.pg_dir(wal_vol / "ts")
    c.sql(f"CREATE TABLESPACE ts LOCATION '{tsdir}'")
    c.sql("CREATE TABLE tst (x int) TABLESPACE ts")
    c.sql("INSERT INTO tst SELECT generate_series(1, 1000)")

    # checkpoint mode cannot be consistent across two btrfs snapshots: refused, naming pg_wal
    cfg = write_config(workdir, job_toml([data_vol, wal_vol], dsn=c.dsn, mode="checkpoint"))
    r = snapagent("backup", "db", config=cfg)
    assert r.returncode == 1 and 'mode = "checkpoint" needs' in r.stderr and str(waldir) in r.stderr, r.stderr
    # pg_wal outside the job's volumes: refused by the engine, naming the directory
    cfg = write_config(workdir, job_toml([data_vol], dsn=c.dsn, wal_archive=archive))
    r = snapagent("backup", "db", config=cfg)
    assert r.returncode == 1 and str(waldir) in r.stderr and "is not on any volume" in r.stderr, r.stderr
    assert no_snapshots(data_vol) and no_snapshots(wal_vol)

    w = Writer(c.dsn, workdir / "acks")
    try:
        w.wait_for(100)
        cfg = write_config(workdir, job_toml([data_vol, wal_vol], dsn=c.dsn, wal_archive=archive))
        t0 = time.time()
        m = backup(cfg)
        t1 = time.time()
        w.wait_for(len(w.acks()) + 20)
    finally:
        w.stop()
    rec = m["quiescers"][0]
    assert rec["mode"] == "backup-api" and rec["consistency"] == "application"
    assert rec["labelfile"].startswith("START WAL LOCATION:") and rec["spcmapfile"].startswith(next(iter(rec["tablespaces"])))
    assert rec["pg_wal"] == str(waldir) and list(rec["tablespaces"].values()) == [str(tsdir)]
    wal_art = rec["artifacts"][0]
    assert wal_art["name"] == "wal" and any(a["name"] == wal_art["artifact"] for a in m["artifacts"])
    assert any(f.endswith(".backup") for f in rec["wal_files"])
    gap = w.max_gap(t0, t1)
    print(f"\nbackup-api: freeze window {m['freeze_window_ms']:.1f} ms (pg_backup_start {rec['quiesce_ms']:.0f} ms), "
          f"phases {m['phases_ms']}, longest writer gap {gap * 1000:.0f} ms, WAL files {len(rec['wal_files'])}")
    assert gap < 10 + 1
    assert snapagent("verify", m["id"], config=cfg).returncode == 0

    dest = pg_base / f"r 'q' 100% {os.getpid()}"  # quoted into postgresql.auto.conf and restore_command
    summary = json.loads(snapagent("--json", "restore", m["id"], "--to", str(dest), config=cfg, check=True).stdout)
    assert len(summary["databases"]) == 1, summary["databases"]  # pg_wal and the tablespace are no databases
    h = summary["databases"][0]["handover"]
    assert Path(h["socket"]) == dest / ".snapagent-postgresql" and h["port"] >= 5440
    assert h["start"][:5] == ["runuser", "-u", "postgres", "--", str(pg.BINDIR / "pg_ctl")]
    labels = {v["volume"]: v["label"] for v in m["volumes"]}
    pgdata = dest / labels[str(data_vol)] / "pgdata"
    assert os.readlink(pgdata / "pg_wal") == str(dest / labels[str(wal_vol)] / "wal")
    oid = next(iter(rec["tablespaces"]))
    assert os.readlink(pgdata / "pg_tblspc" / oid) == str(dest / labels[str(wal_vol)] / "ts")
    assert (pgdata / "backup_label").read_text() == rec["labelfile"]
    assert str(dest) in (pgdata / "tablespace_map").read_text()
    assert (pgdata / "recovery.signal").exists()
    assert not [p for p in (dest / labels[str(wal_vol)] / "wal").iterdir() if p.name != "archive_status"]
    proc = start_handover(h["start"], workdir / "start.log")
    try:
        with restored_conn(Path(h["socket"]), h["port"]) as conn:
            n = check_acked_present(conn, w, ts(rec["consistent_at"]))
            assert conn.execute("SELECT count(*) FROM tst").fetchone()[0] == 1000
            assert conn.execute("SELECT pg_tablespace_location(%s::oid)", (oid,)).fetchone()[0] == str(dest / labels[str(wal_vol)] / "ts")
            conn.execute("CREATE TABLE after_restore (x int) TABLESPACE ts")  # writes go to the restored copy only
            conn.execute("INSERT INTO tst VALUES (-1)")
            conn.execute("CHECKPOINT")
        check_handover(h)
    finally:
        stop_handover(h, proc)
    # the live cluster's WAL, tablespace and archive got nothing from the restored copy
    assert not any(p.name.startswith("00000002") for p in waldir.iterdir())  # the copy promoted to timeline 2
    assert not any(p.name.startswith("00000002") for p in archive.iterdir())
    assert c.sql("SELECT count(*) FROM pg_class WHERE relname = 'after_restore'")[0][0] == 0
    print(f"backup-api: all {n} transactions acknowledged before pg_backup_stop are in the restore")

    # docs/databases.md's restore by hand, run as written (only B and DEST set)
    manual = workdir / "manual restore"
    pg.open_path_for_postgres(manual)
    script = manual_restore_script(workdir / "backups" / "db" / m["id"], manual)
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    mpgdata = manual / labels[str(data_vol)] / "pgdata"
    try:
        with restored_conn(c.sock) as conn:
            assert check_acked_present(conn, w, ts(rec["consistent_at"])) == n
            assert conn.execute("SELECT count(*) FROM tst").fetchone()[0] == 1000
            assert conn.execute("SELECT pg_tablespace_location(%s::oid)", (oid,)).fetchone()[0] == str(manual / labels[str(wal_vol)] / "ts")
    finally:
        stop_restored(mpgdata)

    d = snapagent("--json", "drill", m["id"], config=cfg)
    report = json.loads(d.stdout)
    assert d.returncode == 0 and report["ok"], d.stdout + d.stderr
    rows = next(p for p in report["probes"] if p["name"].endswith("rows"))["rows"]
    assert rows["postgres.public.tst"] == 1000 and rows["postgres.public.bank"] >= n

    # docs/databases.md's put-in-place steps: the copy (started, written to, stopped) becomes the
    # live cluster; its pg_wal and tablespace links point at the live places again, archiving is back
    c.stop()
    script = in_place_script(c.pgdata, pgdata, waldir, rec["tablespaces"],
                             stop_live=["true"], start_live=[str(pg.BINDIR / "pg_ctl"), "--version"])
    proc = start_handover(h["start"], workdir / "start.log")  # the steps stop the copy first
    restored_conn(Path(h["socket"]), h["port"]).close()
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"{script}\n{r.stdout}\n{r.stderr}"
    proc.wait(timeout=60)
    assert os.readlink(c.pgdata / "pg_wal") == str(waldir) and os.readlink(c.pgdata / "pg_tblspc" / oid) == str(tsdir)
    assert "snapagent" not in (c.pgdata / "postgresql.auto.conf").read_text()
    c.start()
    assert c.sql("SELECT count(*) FROM pg_class WHERE relname = 'after_restore'")[0][0] == 1
    assert c.sql("SELECT count(*) FROM tst")[0][0] == 1001
    assert c.sql("SELECT pg_tablespace_location(%s::oid)", (oid,))[0][0] == str(tsdir)
    assert c.sql("SHOW archive_mode")[0][0] == "on" and c.sql("SHOW data_directory")[0][0] == str(c.pgdata)
    c.sql("CREATE TABLE archived_again (x int)")
    c.sql("SELECT pg_switch_wal()")  # archiving works again, into the live archive
    pg.wait_until(lambda: c.sql("SELECT archived_count FROM pg_stat_archiver")[0][0] > 0, timeout=60)
    print("put in place: the copy runs as the live cluster, pg_wal and tablespace links at the live places")


def snapagent_sessions(c: pg.Cluster) -> list:
    return c.sql("SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'snapagent:%'")


def no_snapshots(vol: Path) -> bool:
    d = snapplaces.snapdir(vol)
    return not d.exists() or not any(d.iterdir())


@pytest.mark.parametrize("mode", ["checkpoint", "backup-api"])
def test_statement_timeout_bounds_the_freeze(pg_ok, subvol, workdir, clusters, mode):
    """A checkpointer that never answers (SIGSTOP) makes CHECKPOINT / pg_backup_start hang: the
    statement_timeout derived from max_freeze cancels it, nothing is snapshotted, writers go on."""
    vol = subvol("pg")
    archive = workdir / "archive"
    c = make_cluster(clusters, vol / "pgdata", archive=archive)
    ckpt = c.sql("SELECT pid FROM pg_stat_activity WHERE backend_type = 'checkpointer'")[0][0]
    cfg = write_config(workdir, job_toml([vol], dsn=c.dsn, mode=mode, wal_archive=archive, max_freeze="2s"))
    w = Writer(c.dsn, workdir / "acks")
    try:
        w.wait_for(50)
        os.kill(ckpt, signal.SIGSTOP)
        try:
            t0 = time.time()
            r = snapagent("backup", "db", config=cfg)
            t1 = time.time()
            time.sleep(0.2)
            sessions = snapagent_sessions(c)
        finally:
            os.kill(ckpt, signal.SIGCONT)
        w.wait_for(len(w.acks()) + 10)
    finally:
        w.stop()
    what = "CHECKPOINT" if mode == "checkpoint" else "pg_backup_start"
    assert r.returncode == 1 and f"{what} did not finish within max_freeze" in r.stderr, r.stderr
    assert not sessions and no_snapshots(vol)
    assert snapagent("--json", "list", config=cfg, check=True).stdout.strip() == "[]"
    gap = w.max_gap(t0, t1)
    print(f"\n{mode}: backup refused after {t1 - t0:.2f}s (max_freeze 2s); longest writer gap {gap * 1000:.0f} ms")
    assert t1 - t0 < 2 + 5  # the agent's start-up and preflight included
    assert gap < 2 + 1


def test_sigkill_in_backup_mode_aborts_the_backup_server_side(pg_ok, subvol, workdir, clusters):
    """SIGKILL the agent while it holds the backup (its btrfs snapshot made slow on purpose): the
    session ends, the server aborts the backup, writers are never blocked; cleanup removes the rest."""
    vol = subvol("pg")
    archive = workdir / "archive"
    c = make_cluster(clusters, vol / "pgdata", archive=archive)
    mark = workdir / "in-snapshot"
    slow = workdir / "slow-btrfs"
    real = subprocess.run(["sh", "-c", "command -v btrfs"], capture_output=True, text=True).stdout.strip()
    slow.write_text(f'#!/bin/sh\nif [ "$1 $2" = "subvolume snapshot" ]; then : > {toml_str(mark)}; sleep 3; fi\n'
                    f'exec {real} "$@"\n')
    slow.chmod(0o755)
    max_freeze = 10
    cfg = write_config(workdir, job_toml([vol], dsn=c.dsn, mode="backup-api", wal_archive=archive),
                       extra=f"[agent.tools]\nbtrfs = {toml_str(slow)}\n")
    w = Writer(c.dsn, workdir / "acks")
    try:
        w.wait_for(50)
        t0 = time.time()
        agent = subprocess.Popen([sys.executable, "-m", "snapagent", "-c", str(cfg), "backup", "db"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        pg.wait_until(mark.exists, timeout=60)
        assert len(snapagent_sessions(c)) == 1
        agent.kill()
        t_kill = time.time()
        agent.wait()
        pg.wait_until(lambda: not snapagent_sessions(c), timeout=max_freeze + 1)
        t_gone = time.time()
        w.wait_for(len(w.acks()) + 20)
        t_end = time.time()
    finally:
        w.stop()
    assert "aborting backup due to backend exiting before pg_backup_stop was called" in c.log()
    gap = w.max_gap(t0, t_end)
    print(f"\nSIGKILL in backup mode: session gone {(t_gone - t_kill) * 1000:.0f} ms after the kill; "
          f"longest writer gap {gap * 1000:.0f} ms")
    assert gap < max_freeze + 1
    # the orphaned slow btrfs still makes its snapshot after the agent died; cleanup must remove it
    pg.wait_until(lambda: not no_snapshots(vol), timeout=10)
    time.sleep(0.5)
    r = snapagent("cleanup", config=cfg, check=True)
    assert "deleted btrfs snapshot" in r.stdout and no_snapshots(vol)
    # and the next run works
    cfg = write_config(workdir, job_toml([vol], dsn=c.dsn, mode="backup-api", wal_archive=archive))
    assert backup(cfg)["quiescers"][0]["mode"] == "backup-api"


def test_drill_killed_while_the_copy_starts_then_cleanup(pg_ok, subvol, workdir, clusters):
    """SIGKILL a drill while its restored cluster is starting (setpriv slowed down): the ACL entries
    that let postgres reach the scratch copy, the socket dir, the server and the scratch copy are
    all left behind — and `snapagent cleanup` gives every one of them back from the journal."""
    vol = subvol("pg drill")
    c = make_cluster(clusters, vol / "pgdata")
    cfg = write_config(workdir, job_toml([vol], dsn=c.dsn))
    bid = backup(cfg)["id"]
    marker = workdir / "copy-starting"
    slow = slow_tool(workdir / "slow-setpriv", "setpriv", marker, 120)
    cfg = write_config(workdir, job_toml([vol], dsn=c.dsn), agent=f"tools.setpriv = {toml_str(slow)}\n")
    agent = subprocess.Popen([sys.executable, "-m", "snapagent", "-c", str(cfg), "drill", bid],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pg.wait_until(lambda: marker.exists() or agent.poll() is not None, timeout=120)
    assert agent.poll() is None, agent.communicate()
    state = workdir / "state"

    def leftovers() -> dict:
        acl = subprocess.run(["getfacl", "-p", "-R", str(state)], capture_output=True, text=True).stdout
        return {"acl": [ln for ln in acl.splitlines() if ln.startswith("user:postgres:")],
                "procs": [p.pid for p in psutil.process_iter(["cmdline"])
                          if any("snapagent-pgdrill-" in a for a in p.info["cmdline"] or [])],
                "scratch": sorted(p.name for p in (state / "drill").iterdir()),
                "journals": sorted(p.name for p in state.rglob("*.jsonl"))}

    agent.kill()
    agent.wait()
    left = leftovers()
    assert left["acl"] and left["procs"] and left["scratch"] and left["journals"], left
    r = snapagent("cleanup", config=cfg, check=True)
    assert "removed the ACL entry" in r.stdout and "stopped pid" in r.stdout, r.stdout
    assert leftovers() == {"acl": [], "procs": [], "scratch": [], "journals": []}
    assert not list(Path(tempfile.gettempdir()).glob("snapagent-pgdrill-*"))


def test_pg_basebackup_works_after_a_backup_of_pgdata_at_a_subvolume_root(pg_ok, subvol, workdir, clusters):
    """Issue 12: with PGDATA at the subvolume root, a backup left a root-owned 0700
    ``.snapagent-snapshots`` in PGDATA and ``pg_basebackup`` failed on it (Permission denied).
    Snapshots now live outside the volume: a replica can be made after backups."""
    vol = subvol("pgroot")
    c = make_cluster(clusters, vol)  # PGDATA is the subvolume itself
    cfg = write_config(workdir, job_toml([vol], dsn=c.dsn))
    backup(cfg)
    assert snapplaces.ours_inside(vol) == []
    replica = pg.pg_dir(workdir / "replica")
    r = pg.as_postgres([str(pg.BINDIR / "pg_basebackup"), "-d", c.dsn, "-D", str(replica), "-c", "fast", "-X", "fetch",
                        "--no-sync"], timeout=300)
    assert r.returncode == 0, r.stderr
    assert (replica / "PG_VERSION").exists() and not list(replica.glob(".snapagent*"))


def test_passwords_never_reach_the_logs(pg_ok, subvol, workdir, clusters):
    """A cluster that asks for a password (scram-sha-256 on its socket): the password given as
    PGPASSWORD in the agent's environment, or in a pgpass file the DSN names, never appears in
    what snapagent prints, at -vv (every command and statement) or as JSON lines, nor in the
    manifest — neither on success nor when the password is wrong; a DSN holding a password is
    refused without echoing it, even the part libpq cannot parse."""
    secret = "Pw-0f-the-Cluster"
    vol = subvol("pg pw")
    c = make_cluster(clusters, vol / "pgdata")
    c.sql(f"ALTER ROLE postgres PASSWORD '{secret}'")
    (vol / "pgdata" / "pg_hba.conf").write_text("local all all scram-sha-256\n")
    c.sql("SELECT pg_reload_conf()")
    cfg = write_config(workdir, job_toml([vol], dsn=c.dsn))
    seen, ids = [], []
    for args in (["-vv", "config", "check", "--connect"], ["-vv", "backup", "db"],
                 ["-vv", "--log-format", "json", "backup", "db"]):
        r = snapagent(*args, config=cfg, env={"PGPASSWORD": secret})
        assert r.returncode == 0, r.stderr
        seen.append(r.stdout + r.stderr)
        ids.append(r.stdout.strip())
    assert "sql postgresql: CHECKPOINT" in seen[1] and "mode auto chose checkpoint" in seen[1], seen[1]
    bid = ids[1]
    seen.append(snapagent("--json", "show", bid, config=cfg, check=True).stdout)
    passfile = workdir / "pgpass"
    passfile.write_text(f"*:*:*:postgres:{secret}\n")
    passfile.chmod(0o600)
    cfg = write_config(workdir, job_toml([vol], dsn=f"{c.dsn} passfile={passfile}"))
    r = snapagent("-vv", "backup", "db", config=cfg, check=True)
    seen.append(r.stdout + r.stderr)
    passfile.write_text("*:*:*:postgres:Wrong-Password\n")
    r = snapagent("-vv", "backup", "db", config=cfg, env={"PGPASSWORD": ""})
    assert r.returncode == 1 and "password authentication failed" in r.stderr, r.stderr
    for bad in (f"{c.dsn} password={secret}", f"{c.dsn} password={secret} Tail-0f-It",
                f"postgresql://postgres:{secret}@/postgres?host={c.sock}"):
        r = snapagent("-vv", "config", "check", config=write_config(workdir, job_toml([vol], dsn=bad)))
        assert r.returncode == 2 and "jobs.db.quiesce[0].dsn" in r.stderr, r.stderr
        seen.append(r.stdout + r.stderr)
    for text in seen:
        assert secret not in text and "Tail-0f-It" not in text, text

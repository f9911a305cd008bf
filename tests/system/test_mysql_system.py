"""The mysql quiescer against a real MariaDB server on a real btrfs subvolume.

Each test starts its own ``mariadbd`` (``mariadb-install-db`` into a subvolume whose name holds a
space, socket in a temp dir, ``--skip-networking``, binlog on) and runs the real CLI.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import psutil
import pytest

from tests.helpers.caps import need
from tests.helpers.cli import ROOT, snapagent, toml_str, write_config
from tests.helpers.mariadb import MariaDB, available
from tests.helpers.procwatch import ProcWatch
from tests.helpers.snapplaces import snapdir, snapshots
from tests.helpers.wrappers import slow_tool
from tests.torture.check import record

pytestmark = [pytest.mark.mysql, pytest.mark.btrfs, pytest.mark.root]
WRITER = ROOT / "tests" / "helpers" / "mysql_writer.py"


@pytest.fixture(scope="module")
def shared_server(btrfs_root):
    """One running MariaDB for this module (starting one costs seconds): its datadir is
    <subvolume "mysql data">/datadir, binlog in the datadir. Tests leave it unlocked."""
    need(available(), "needs mariadb-server (scripts/setup-mariadb.sh)")
    try:
        import pymysql  # noqa: F401
    except ImportError:
        need(False, "needs PyMySQL (scripts/bootstrap.sh installs the mysql extra)")
    vol = btrfs_root / f"mysql data-{uuid.uuid4().hex[:8]}"
    subprocess.run(["btrfs", "subvolume", "create", str(vol)], check=True, capture_output=True)
    datadir = vol / "datadir"
    datadir.mkdir()
    db = MariaDB(datadir)
    try:
        db.install()
        db.start()
        db.volume = vol
        db.sql("CREATE DATABASE app")
        db.sql("CREATE TABLE app.side (id INT PRIMARY KEY, v INT) ENGINE=InnoDB")
        db.sql("CREATE TABLE app.legacy (id INT PRIMARY KEY, v INT) ENGINE=MyISAM")
        db.sql("INSERT INTO app.side VALUES (1, 1), (2, 2)")
        db.sql("INSERT INTO app.legacy VALUES (1, 10)")
        yield db
    finally:
        db.cleanup()
        snaps = snapdir(vol)
        for snap in (snaps.iterdir() if snaps.is_dir() else []):
            subprocess.run(["btrfs", "subvolume", "delete", str(snap)], capture_output=True)
        subprocess.run(["btrfs", "subvolume", "delete", str(vol)], capture_output=True)


@pytest.fixture
def server(shared_server):
    """The module's server; fails the test if it left a session behind that still holds a lock."""
    yield shared_server
    assert shared_server.proc is not None and shared_server.proc.poll() is None, "the server died"
    shared_server.sql("INSERT INTO app.side VALUES (3, 3) ON DUPLICATE KEY UPDATE v = v + 1")  # not locked


def job(db: MariaDB, max_freeze: str = "10s", **quiesce) -> str:
    q = {"socket": db.socket, **quiesce}
    lines = "\n".join(f"{k} = {toml_str(v) if isinstance(v, str) else v}" for k, v in q.items())
    return (f"[jobs.db]\ndriver = \"btrfs\"\nvolumes = [{toml_str(db.volume)}]\ntarget = \"local\"\n"
            f"max_freeze = \"{max_freeze}\"\n\n[[jobs.db.quiesce]]\ntype = \"mysql\"\n{lines}\n")


class Writer:
    """The continuous writer in a child process; ``acks()`` returns [(id, time)]."""

    def __init__(self, db: MariaDB, ackfile: Path, table: str = "t"):
        self.ackfile = ackfile
        self.proc = subprocess.Popen([sys.executable, str(WRITER), db.socket, str(ackfile), table])
        end = time.monotonic() + 30
        while len(self.acks()) < 20:
            assert self.proc.poll() is None, "writer died"
            assert time.monotonic() < end, "writer made no progress"
            time.sleep(0.05)

    def acks(self) -> list[tuple[int, float]]:
        if not self.ackfile.exists():
            return []
        out = []
        for line in self.ackfile.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                out.append((int(parts[0]), float(parts[1])))
        return out

    def wait_more(self, n: int = 20, timeout: float = 10) -> float:
        """Wait until ``n`` more commits are acknowledged; return how long that took."""
        start, t0 = len(self.acks()), time.monotonic()
        while len(self.acks()) < start + n:
            assert time.monotonic() - t0 < timeout, f"writer made no progress in {timeout}s"
            time.sleep(0.02)
        return time.monotonic() - t0

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def zstd_d(path: Path) -> bytes:
    import zstandard

    with open(path, "rb") as f:
        return zstandard.ZstdDecompressor().stream_reader(f).read()


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@pytest.mark.parametrize("method", ["auto", "ftwrl"])
def test_hot_backup_restore_and_drill(server, workdir, method):
    cfg = write_config(workdir, job(server, method=method))
    writer = Writer(server, workdir / "acks")
    try:
        r = snapagent("--json", "backup", "db", config=cfg, check=True)
        writer.wait_more(20)
    finally:
        writer.stop()
    m = json.loads(r.stdout)
    q = m["quiescers"][0]
    want = "backup-stage" if method == "auto" else "ftwrl"
    assert q["method"] == want and q["flavor"] == "mariadb"
    assert q["binlog"]["file"].startswith("mysql-bin.") and q["binlog"]["position"] > 0 and q["binlog"]["exact"]
    assert isinstance(q["connection_id"], int) and q["gtid"]
    assert str(server.datadir) in q["files"]
    print(f"\n[{method}] freeze window {m['freeze_window_ms']:.1f} ms, lock wait {q['lock_wait_ms']:.1f} ms, "
          f"binlog {q['binlog']['file']}:{q['binlog']['position']}, gtid {q['gtid']}")
    assert m["freeze_window_ms"] < 10000

    dest = workdir / "restored"
    summary = json.loads(snapagent("--json", "restore", m["id"], "--to", str(dest), config=cfg, check=True).stdout)
    h = summary["databases"][0]["handover"]
    assert h["kind"] == "mysql" and h["start"][0].endswith("mariadbd") and h["start"][1] == "--no-defaults"
    if not Path(h["socket"]).is_relative_to(dest):  # DEST's path too long for a socket: the run dir is a temp dir
        shutil.rmtree(Path(h["socket"]).parent)
    restored = dest / m["volumes"][0]["label"] / "datadir"
    assert not (restored / "mysqld.pid").exists()
    index = (restored / "mysql-bin.index").read_text()
    assert str(server.datadir) not in index and "./mysql-bin.000001" in index  # the restored binlogs

    locked_at = ts(q["locked_at"])
    acked_before = [i for i, t in writer.acks() if t < locked_at]
    assert acked_before, "the writer acknowledged nothing before the lock"
    copy = MariaDB(restored)
    copy.start()
    try:
        ids = {row[0] for row in copy.sql("SELECT id FROM app.t")}
        missing = [i for i in acked_before if i not in ids]
        assert not missing, f"{len(missing)} acknowledged transactions are missing: {missing[:10]}"
        check = copy.sql("CHECK TABLE app.t, app.side, app.legacy")
        assert all(r[3] == "OK" for r in check if r[2] == "status"), check
        gtid = copy.sql("SELECT @@gtid_binlog_pos")[0][0]
        print(f"[{method}] restored: {len(ids)} rows, {len(acked_before)} acknowledged before the lock, "
              f"all present; gtid recorded {q['gtid']} restored {gtid}")
        assert gtid == q["gtid"]  # nothing committed under the lock
    finally:
        copy.cleanup()

    d = snapagent("--json", "drill", m["id"], config=cfg)
    assert d.returncode == 0, d.stdout + d.stderr
    report = json.loads(d.stdout)
    probes = {p["name"].rsplit(" ", 1)[-1]: p for p in report["probes"]}
    assert probes["recovery"]["ok"] and probes["check"]["ok"], report
    assert probes["check"]["rows"]["app.side"] >= 2 and probes["check"]["rows"]["app.legacy"] == 1
    assert probes["check"]["rows"]["app.t"] >= len(acked_before)
    print(f"[{method}] drill: started in {probes['recovery']['seconds']}s as {probes['recovery']['run_as']}, "
          f"{probes['check']['tables_checked']} tables checked, rows {probes['check']['rows']}")


def start_sleeper(db: MariaDB, seconds: float) -> tuple[threading.Thread, list]:
    """Run ``SELECT SLEEP(seconds)`` in another session; return (thread, [connection id])."""
    conn = db.connect()
    cid = [conn.thread_id()]

    def run():
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT SLEEP(%s)", (seconds,))
        except Exception:  # noqa: BLE001 - the test KILLs it
            pass
        finally:
            conn.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, cid


def test_long_query_refused(server, workdir):
    cfg = write_config(workdir, job(server, long_query_threshold="1s"))
    t, cid = start_sleeper(server, 30)
    try:
        time.sleep(2.2)
        r = snapagent("backup", "db", config=cfg)
        assert r.returncode == 1, r.stderr
        assert "long_query_threshold" in r.stderr and f"id {cid[0]}" in r.stderr, r.stderr
        assert "SLEEP" not in r.stderr  # query text is never shown (it may hold secrets)
        print(f"\nrefused: {r.stderr.strip().splitlines()[-1]}")
        assert snapagent("list", "db", config=cfg, check=True).stderr.strip() == "no backups"
    finally:
        server.sql(f"KILL {cid[0]}")
        t.join(10)


def test_long_query_wait_is_bounded(server, workdir):
    cfg = write_config(workdir, job(server, max_freeze="3s", long_query_threshold="1s", long_query_policy="wait"))
    t, cid = start_sleeper(server, 30)
    try:
        time.sleep(1.5)
        t0 = time.monotonic()
        r = snapagent("backup", "db", config=cfg)
        took = time.monotonic() - t0
        assert r.returncode == 1 and "waited" in r.stderr, r.stderr
        waited = float(re.search(r"waited ([0-9.]+)s", r.stderr).group(1))
        print(f"\nwait policy gave up after waiting {waited:.2f}s (max_freeze 3 s); the command took {took:.2f}s")
        assert 2.0 < waited <= 3.0
        assert snapagent("list", "db", config=cfg, check=True).stderr.strip() == "no backups"
    finally:
        server.sql(f"KILL {cid[0]}")
        t.join(10)


def test_long_query_wait_then_backup(server, workdir):
    cfg = write_config(workdir, job(server, long_query_threshold="1s", long_query_policy="wait"))
    t, _ = start_sleeper(server, 6)  # long enough to outlast the CLI's start on a busy machine
    time.sleep(1.2)
    t0 = time.monotonic()
    r = snapagent("--json", "backup", "db", config=cfg, check=True)
    t.join(10)
    assert time.monotonic() - t0 < 10 + 5
    q = json.loads(r.stdout)["quiescers"][0]
    print(f"\nwaited {q['long_query_wait_ms']:.0f} ms for the long query, then locked")
    assert q["long_query_wait_ms"] > 500


@pytest.mark.parametrize("method", ["ftwrl", "backup-stage"])
def test_lock_wait_timeout_fails_cleanly(server, workdir, method):
    cfg = write_config(workdir, job(server, method=method, lock_wait_timeout="1s"))
    writer = Writer(server, workdir / "acks")
    holder = server.connect()
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLES app.side WRITE")
        t0 = time.monotonic()
        r = snapagent("backup", "db", config=cfg)
        took = time.monotonic() - t0
        assert r.returncode == 1, r.stderr
        assert "Lock wait timeout" in r.stderr or "interrupted" in r.stderr.lower(), r.stderr
        resumed = writer.wait_more(20, timeout=5)
        print(f"\n[{method}] lock wait timed out; backup failed after {took:.2f}s; writer made 20 commits "
              f"{resumed:.2f}s later: {r.stderr.strip().splitlines()[-1]}")
        assert snapagent("list", "db", config=cfg, check=True).stderr.strip() == "no backups"
        assert not snapshots(server.volume)  # the snapshot was skipped
        assert not list((workdir / "state").rglob("*.jsonl"))  # the run finished its journal
    finally:
        holder.close()
        writer.stop()


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGSTOP"])
def test_dead_or_hung_agent_releases(server, workdir, sig):
    """SIGKILL the agent while it holds the lock (during a slowed snapshot): writers resume at once.
    SIGSTOP it (a hung agent): the server ends the idle session at max_freeze (wait_timeout)."""
    max_freeze = 3 if sig == "SIGSTOP" else 10
    marker = workdir / "snapshot-started"
    wrapper = workdir / "slow-btrfs"
    wrapper.write_text("#!/bin/sh\n"
                       f"case \" $* \" in *\" snapshot \"*) touch {toml_str(marker)}; sleep 5;; esac\n"
                       "exec btrfs \"$@\"\n")
    wrapper.chmod(0o755)
    cfg = write_config(workdir, job(server, max_freeze=f"{max_freeze}s"))
    text = cfg.read_text().replace("[agent]\n", f"[agent]\ntools = {{ btrfs = {toml_str(wrapper)} }}\n", 1)
    cfg.write_text(text)
    writer = Writer(server, workdir / "acks")
    agent = None
    try:
        agent = subprocess.Popen([sys.executable, "-m", "snapagent", "-c", str(cfg), "backup", "db"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        end = time.monotonic() + 30
        while not marker.exists():
            assert agent.poll() is None, agent.communicate()
            assert time.monotonic() < end
            time.sleep(0.01)
        time.sleep(0.3)
        before = len(writer.acks())
        time.sleep(0.3)
        assert len(writer.acks()) == before, "the writer was not blocked by the lock"
        hit = time.time()
        agent.send_signal(getattr(signal, sig))
        writer.wait_more(1, timeout=max_freeze + 3)
        first = next(t for i, t in writer.acks()[before:] if t >= hit)
        stall_start = writer.acks()[before - 1][1]
        print(f"\n{sig} while locked: writer resumed {first - hit:.3f}s after the signal; "
              f"stalled {first - stall_start:.3f}s in all (max_freeze {max_freeze} s)")
        if sig == "SIGKILL":
            assert first - hit < 1.0
        assert first - stall_start < max_freeze + 1
    finally:
        writer.stop()
        if agent is not None:
            agent.kill()
            agent.wait()
    time.sleep(5.5)  # let the orphaned slow snapshot finish, then cleanup sweeps it from the journal
    r = snapagent("cleanup", config=cfg, check=True)
    assert not snapshots(server.volume), r.stdout


def test_file_outside_the_volumes_is_refused(subvol, workdir, tmp_path):
    need(available(), "needs mariadb-server (scripts/setup-mariadb.sh)")
    vol = subvol("mysql data")
    (vol / "datadir").mkdir()
    binlogs = tmp_path / "binlogs"
    binlogs.mkdir()
    db = MariaDB(vol / "datadir", log_bin=False, extra=[f"--log-bin={binlogs / 'mysql-bin'}"])
    db.install()
    db.start()
    db.volume = vol
    try:
        cfg = write_config(workdir, job(db))
        r = snapagent("backup", "db", config=cfg)
        assert r.returncode == 1
        assert str(binlogs) in r.stderr and str(vol) in r.stderr, r.stderr
        print(f"\nrefused: {r.stderr.strip()}")
    finally:
        db.cleanup()


def test_password_from_option_file_only(server, workdir):
    secret = "s3cr;et $(x) -pw"
    # by hash: the server's own files (binlog, redo) would otherwise hold the plain password the
    # test typed — user data snapagent backs up as it is, not a secret snapagent handled
    digest = hashlib.sha1(hashlib.sha1(secret.encode()).digest()).hexdigest().upper()
    server.sql("CREATE USER 'snap_operator'@'localhost' IDENTIFIED BY PASSWORD %s", (f"*{digest}",))
    server.sql("GRANT RELOAD, PROCESS, BINLOG MONITOR ON *.* TO 'snap_operator'@'localhost'")  # as docs/databases.md
    opt = workdir / "my backup.cnf"
    opt.write_text(f"[client]\nuser = snap_operator\npassword = \"{secret}\"\nsocket = {server.socket}\n!includedir /nonexistent\n")
    opt.chmod(0o600)
    cfg = write_config(workdir, job(server, option_file=str(opt)).replace(f"socket = {toml_str(server.socket)}\n", ""))
    with ProcWatch(secret) as watch:  # every process's argv and environment, sampled during the run
        r = snapagent("-vv", "--json", "backup", "db", config=cfg, env={"MYAPP_TOKEN": secret})
        assert r.returncode == 0, r.stderr
        d = snapagent("-vv", "drill", json.loads(r.stdout)["id"], config=cfg, env={"MYAPP_TOKEN": secret})
        assert d.returncode == 0, d.stderr
    # the agent's own environment holds MYAPP_TOKEN on purpose: its children must not inherit it
    agent = [h for h in watch.hits if "-m snapagent" in h[2]]
    assert watch.samples > 1000 and agent and all(h[1] == "environ" for h in agent)  # the sampler sees it
    assert [h for h in watch.hits if "-m snapagent" not in h[2]] == []  # no child, in argv or environment
    stored = "".join(p.read_text(errors="replace") for p in (workdir / "backups").rglob("*.json"))
    artifacts = b"".join(zstd_d(p) for p in (workdir / "backups").rglob("*.zst"))
    assert secret.encode() not in artifacts
    for text in (r.stdout, r.stderr, d.stdout, d.stderr, stored, cfg.read_text()):
        assert secret not in text
    # -vv shows every statement sent (these are the lock's) and the method auto chose
    assert "sql mysql: BACKUP STAGE BLOCK_COMMIT" in r.stderr and "sql mysql: BACKUP STAGE END" in r.stderr, r.stderr
    assert "method auto chose backup-stage" in r.stderr, r.stderr
    record(kind="secrets", check="database password in argv, environments, logs, manifests, artifacts",
           samples=watch.samples, hits=0)
    q = json.loads(r.stdout)["quiescers"][0]
    assert q["method"] == "backup-stage" and q["binlog"]["position"] > 0 and "positions_error" not in q, q
    assert "snap_operator" not in json.dumps(q)  # no user name recorded either
    opt.chmod(0o644)
    r = snapagent("backup", "db", config=cfg)
    assert r.returncode == 2 and "chmod 600" in r.stderr and secret not in r.stderr, r.stderr
    print(f"\nloose option file: {r.stderr.strip()}")


def test_missing_grants_are_refused_by_the_gate(server, workdir):
    """An account without RELOAD and PROCESS: `config check --connect`, `backup --dry-run` and the
    backup itself refuse in preflight, naming both and the GRANT statement to run — before any
    lock, without a warning about a lock never taken. Running that statement makes it pass."""
    server.sql("CREATE USER 'snap_weak'@'localhost'")  # no password: the socket as root, user snap_weak
    try:
        server.sql("GRANT BINLOG MONITOR ON *.* TO 'snap_weak'@'localhost'")
        cfg = write_config(workdir, job(server, user="snap_weak"))
        grant = "GRANT RELOAD, PROCESS ON *.* TO 'snap_weak'@'localhost';"
        for args in (["config", "check", "--connect"], ["backup", "db", "--dry-run"], ["backup", "db"]):
            r = snapagent(*args, config=cfg)
            assert r.returncode == 1 and "lacks RELOAD, PROCESS (RELOAD: method backup-stage" in r.stderr, r.stderr
            assert grant in r.stderr and "warning" not in r.stderr.lower() and "Traceback" not in r.stderr, r.stderr
        assert snapagent("list", "db", config=cfg, check=True).stderr.strip() == "no backups"
        print(f"\nrefused: {r.stderr.strip()}")
        server.sql(grant.rstrip(";"))
        r = snapagent("config", "check", "--connect", config=cfg)
        assert r.returncode == 0 and "every job's preflight passed" in r.stdout, r.stderr
    finally:
        server.sql("DROP USER 'snap_weak'@'localhost'")


def doc_block() -> str:
    text = (ROOT / "docs" / "databases.md").read_text()
    section = text.split("## MySQL / MariaDB", 1)[1]
    return re.search(r"### Restore by hand.*?```sh\n(.*?)```", section, re.S).group(1)


def test_restore_by_hand_as_documented(server, workdir, btrfs_root):
    """The by-hand commands of docs/databases.md start a server on an extracted backup (no snapagent).
    Differences: paths are the test's, and the server runs as root (pytest's temp dirs are not
    searchable by the mysql user)."""
    cfg = write_config(workdir, job(server))
    writer = Writer(server, workdir / "acks")
    try:
        m = json.loads(snapagent("--json", "backup", "db", config=cfg, check=True).stdout)
    finally:
        writer.stop()
    q, vol = m["quiescers"][0], m["volumes"][0]
    restore_root = btrfs_root / f"byhand-{uuid.uuid4().hex[:6]}"
    (restore_root / "db").mkdir(parents=True)
    art = workdir / "backups" / "db" / m["id"] / vol["artifact"]
    subprocess.run(["bash", "-o", "pipefail", "-ec", f"zstd -dc {shlex.quote(str(art))} | tar -x --xattrs "
                    f"--xattrs-include='*' --acls --numeric-owner -C {shlex.quote(str(restore_root / 'db'))}"],
                   check=True)
    run = Path(tempfile.mkdtemp(prefix="sa-byhand-"))
    script = (doc_block().replace("/restore/db", str(restore_root / "db"))
              .replace("LIVE=/srv/mysql/datadir", f"LIVE={shlex.quote(q['datadir'])}")
              .replace("/tmp/restored", str(run / "restored")).replace("--user=mysql", "--user=root"))
    try:
        r = subprocess.run(["bash", "-ec", script], capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, f"{script}\n{r.stdout}\n{r.stderr}\n{(run / 'restored.err').read_text(errors='replace')}"
        checked = [ln for ln in r.stdout.splitlines() if ln.startswith("app.")]
        assert checked and all(ln.split()[-1] == "OK" for ln in checked), r.stdout
        index = (restore_root / "db" / "datadir" / "mysql-bin.index").read_text()
        assert q["datadir"] not in index
        print(f"\nby hand: {len(r.stdout.splitlines())} tables checked OK: {checked}")
    finally:
        pid = run / "restored.pid"
        if pid.exists():
            subprocess.run(["kill", pid.read_text().strip()], capture_output=True)
        shutil.rmtree(run, ignore_errors=True)
        subprocess.run(["btrfs", "subvolume", "delete", str(restore_root)], capture_output=True)


@pytest.fixture
def owned_server(subvol):
    """A server owned by and running as `mysql` on its own subvolume, with a table app.o of 3 rows."""
    need(available(), "needs mariadb-server (scripts/setup-mariadb.sh)")
    vol = subvol("mysql owned")
    opened = []
    for p in [vol, *vol.parents]:  # the mysql user must reach the *live* datadir
        mode = stat.S_IMODE(p.stat().st_mode)
        if not mode & stat.S_IXOTH:
            opened.append((p, mode))
            p.chmod(mode | stat.S_IXOTH)
    (vol / "datadir").mkdir()
    db = MariaDB(vol / "datadir", user="mysql")
    try:
        db.install()
        subprocess.run(["chown", "-R", "mysql:mysql", "--", str(db.datadir)], check=True)
        db.start()
        db.volume = vol
        db.sql("CREATE DATABASE app")
        db.sql("CREATE TABLE app.o (id INT PRIMARY KEY) ENGINE=InnoDB")
        db.sql("INSERT INTO app.o VALUES (1), (2), (3)")
        yield db
    finally:
        db.cleanup()
        for p, mode in opened:
            p.chmod(mode)


def in_place_script(live: Path, copy: Path, sock: str) -> str:
    """Return docs/databases.md's put-in-place block for MySQL/MariaDB with LIVE, COPY and SOCK set;
    the live server's service commands (systemctl) are left to the caller."""
    text = (ROOT / "docs" / "databases.md").read_text()
    block = text.split("<!-- mysql-in-place:begin -->", 1)[1].split("<!-- mysql-in-place:end -->", 1)[0]
    lines = block.split("```sh\n", 1)[1].rsplit("```", 1)[0].splitlines()
    assert [ln.split("=", 1)[0] for ln in lines[:3]] == ["LIVE", "COPY", "SOCK"], lines[:3]
    body = [ln for ln in lines[3:] if not ln.startswith("systemctl ")]
    assert len(body) == len(lines) - 5, "the block stops and starts the live server with systemctl, once each"
    return "\n".join([f"LIVE={shlex.quote(str(live))}", f"COPY={shlex.quote(str(copy))}",
                      f"SOCK={shlex.quote(sock)}", *body]) + "\n"


def test_restore_hands_over_a_startable_server(owned_server, workdir):
    """Issue 12: the restored datadir was root-owned 0700 (`mysql-bin.index … Permission denied`),
    the start line only in --json, the socket fixed at /tmp. Now: files for mysql, a private socket
    below DEST, a free port; the hand-over's argv from --json, run exactly as given, starts a server
    that answers; its check and stop commands work; docs/databases.md's put-in-place steps make the
    copy the live server."""
    db = owned_server
    cfg = write_config(workdir, job(db))
    m = json.loads(snapagent("--json", "backup", "db", config=cfg, check=True).stdout)
    assert m["quiescers"][0]["owner"]["user"] == "mysql"
    dest = db.volume.parent / f"rst {uuid.uuid4().hex[:6]}"  # the mysql user can reach it (the fixture opened it)
    r = snapagent("restore", m["id"], "--to", str(dest), config=cfg, check=True)
    summary = json.loads(snapagent("--json", "restore", m["id"], "--to", str(dest), "--force", config=cfg,
                                   check=True).stdout)
    h = summary["databases"][0]["handover"]
    assert "mysql database: " in r.stdout and f"start:    {shlex.join(h['start'][:2])}" in r.stdout, r.stdout
    restored = Path(h["data_dir"])
    assert h["owner"] == "mysql" and restored.owner() == "mysql" and (restored / "mysql-bin.index").owner() == "mysql"
    assert Path(h["socket"]).is_relative_to(dest) and h["port"] not in (3306, 3307)
    proc = subprocess.Popen(h["start"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import pymysql

        def connect():
            if proc.poll() is not None:
                raise AssertionError(f"the hand-over's server exited {proc.returncode}: "
                                     f"{(Path(h['socket']).parent / 'error.log').read_text(errors='replace')[-2000:]}")
            try:
                return pymysql.connect(unix_socket=h["socket"], user="root", autocommit=True, connect_timeout=5)
            except pymysql.MySQLError:
                return None

        conn = None
        end = time.monotonic() + 120
        while conn is None and time.monotonic() < end:
            conn = connect() or time.sleep(0.2)
        assert conn is not None, "the hand-over's server did not answer within 120 s"
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM app.o")
            assert cur.fetchone()[0] == 3
            cur.execute("SELECT @@port, @@bind_address, CURRENT_USER()")
            port, bind, _ = cur.fetchone()
            assert (port, bind) == (h["port"], "127.0.0.1")
            cur.execute("INSERT INTO app.o VALUES (4)")  # made on the copy: must be live after put-in-place
        conn.close()
        check = subprocess.run(h["check"], capture_output=True, text=True, timeout=120)
        assert check.returncode == 0 and "app.o" in check.stdout and "OK" in check.stdout, check.stdout + check.stderr
        # put it in place: the live server stopped first (its systemctl line), the documented steps stop the copy
        db.stop()
        script = in_place_script(db.datadir, restored, h["socket"])
        r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=180)
        assert r.returncode == 0, f"{script}\n{r.stdout}\n{r.stderr}"
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            subprocess.run(h["stop"], capture_output=True, timeout=120)
            proc.wait(timeout=120)
    db.start()
    assert [r[0] for r in db.sql("SELECT id FROM app.o ORDER BY id")] == [1, 2, 3, 4]
    assert db.datadir.owner() == "mysql" and (db.datadir / "mysql-bin.index").owner() == "mysql"
    print(f"\nhand-over: {shlex.join(h['start'])}\nput in place: the copy's row 4 is live")


def drill_config(db: MariaDB, workdir: Path, agent: str = "") -> Path:
    return write_config(workdir, job(db), agent=f"scratch_dir = {toml_str(workdir / 'scratch')}\n{agent}")


def drill_leftovers(workdir: Path) -> dict:
    """What a drill may hold: server processes and mounts of its temp dirs, scratch copies, journals."""
    procs = [p.pid for p in psutil.process_iter(["cmdline"])
             if any("snapagent-mysql-" in a for a in p.info["cmdline"] or [])]
    mounts = [ln for ln in Path("/proc/self/mounts").read_text().splitlines() if "snapagent-mysql-" in ln]
    scratch = sorted(p.name for p in (workdir / "scratch").iterdir()) if (workdir / "scratch").exists() else []
    temps = [p for p in Path(tempfile.gettempdir()).glob("snapagent-mysql-*")]
    return {"procs": procs, "mounts": mounts, "scratch": scratch, "temps": temps,
            "journals": sorted((workdir / "state").rglob("*.jsonl"))}


def test_drill_runs_the_server_as_mysql(owned_server, workdir):
    """A server owned by and running as `mysql`; the drill's scratch space is private (0700 parents),
    so the drill bind-mounts the restored datadir into its own temp dir and runs mariadbd as mysql."""
    db = owned_server
    cfg = drill_config(db, workdir)
    bid = snapagent("backup", "db", config=cfg, check=True).stdout.split()[-1]
    d = snapagent("--json", "drill", bid, config=cfg)
    assert d.returncode == 0, d.stdout + d.stderr
    probes = {p["name"].rsplit(" ", 1)[-1]: p for p in json.loads(d.stdout)["probes"]}
    assert probes["recovery"]["run_as"] == "mysql", probes
    assert probes["check"]["rows"]["app.o"] == 3
    print(f"\ndrill ran mariadbd as {probes['recovery']['run_as']} through a bind mount; "
          f"{probes['check']['tables_checked']} tables checked")
    assert not [ln for ln in Path("/proc/self/mounts").read_text().splitlines() if "snapagent-mysql-" in ln]
    assert not list((workdir / "scratch").iterdir())


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_drill_stopped_mid_probe_leaves_nothing(owned_server, workdir, sig):
    """Stop a drill while its throwaway server starts (a slowed mariadbd): after SIGTERM the drill
    itself stops the server, unmounts, removes its temp and scratch dirs and exits 1; after SIGKILL
    all of that is left — and `snapagent cleanup` undoes it from the drill's journal."""
    db = owned_server
    marker = workdir / "server-starting"
    slow = slow_tool(workdir / "slow-mariadbd", "mariadbd", marker, 120)
    cfg = drill_config(db, workdir, agent=f"tools.mariadbd = {toml_str(slow)}\n")
    bid = snapagent("backup", "db", config=cfg, check=True).stdout.split()[-1]
    agent = subprocess.Popen([sys.executable, "-m", "snapagent", "-c", str(cfg), "drill", bid],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 120
    while not marker.exists():
        assert agent.poll() is None, agent.communicate()
        assert time.monotonic() < end, "the drill never started its server"
        time.sleep(0.05)
    held = drill_leftovers(workdir)
    assert held["procs"] and held["mounts"] and held["scratch"] and held["temps"] and held["journals"], held
    agent.send_signal(sig)
    out, err = agent.communicate(timeout=180)
    if sig == signal.SIGTERM:
        assert agent.returncode == 1 and "interrupted by SIGTERM" in err and "Traceback" not in err, err
    else:
        left = drill_leftovers(workdir)
        assert left["procs"] and left["mounts"] and left["scratch"], left
        c = snapagent("cleanup", config=cfg, check=True)
        assert "stopped pid" in c.stdout and "unmounted" in c.stdout and "removed" in c.stdout, c.stdout
    assert drill_leftovers(workdir) == {"procs": [], "mounts": [], "scratch": [], "temps": [], "journals": []}


def test_dry_run_connects_but_takes_nothing(server, workdir):
    cfg = write_config(workdir, job(server))
    holder = server.connect()
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLES app.side WRITE")  # any lock attempt would now wait and fail
        r = snapagent("backup", "db", "--dry-run", config=cfg)
        assert r.returncode == 0, r.stderr
        out = r.stdout + r.stderr
        assert "would quiesce: mysql" in out and "method backup-stage" in out, out
        assert snapagent("list", "db", config=cfg, check=True).stderr.strip() == "no backups"
    finally:
        holder.close()


def test_sigkill_while_waiting_for_the_lock(server, workdir):
    """SIGKILL the agent while FTWRL waits behind a LOCK TABLES (writers queue behind a waiting
    FTWRL): the server gives up by itself within lock_wait_timeout, writers resume."""
    cfg = write_config(workdir, job(server, method="ftwrl", lock_wait_timeout="2s"))
    writer = Writer(server, workdir / "acks")
    holder = server.connect()
    agent = None
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLES app.side WRITE")
        agent = subprocess.Popen([sys.executable, "-m", "snapagent", "-c", str(cfg), "backup", "db"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        end = time.monotonic() + 30
        while not server.sql("SELECT ID FROM information_schema.PROCESSLIST WHERE INFO = 'FLUSH TABLES WITH READ LOCK'"):
            assert agent.poll() is None and time.monotonic() < end, "FTWRL never started waiting"
            time.sleep(0.01)
        started = time.time()
        agent.kill()
        agent.wait()
        killed = time.time()
        writer.wait_more(5, timeout=10)
        first = next(t for i, t in writer.acks() if t >= killed)
        print(f"\nSIGKILL while FTWRL waited: writers resumed {first - killed:.3f}s after the kill, "
              f"{first - started:.3f}s after FTWRL began waiting (lock_wait_timeout 2 s)")
        assert first - started < 2 + 1
    finally:
        holder.close()
        writer.stop()
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()

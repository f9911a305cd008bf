"""Unit tests of the mysql quiescer: config, option files, and the exact SQL each method sends,
through a fake PyMySQL connection (the real server tests are in tests/system/test_mysql_system.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from snapagent import config as configmod
from snapagent.errors import ConfigError, NotFound, PreflightFailed, QuiesceFailed
from snapagent.plugin.quiescer import QuiesceContext
from snapagent.quiesce import mysql as my
from snapagent.quiesce.mysql import connection as mc
from snapagent.quiesce.mysql import drill as mysql_drill
from snapagent.quiesce.mysql import restore as mr
from snapagent.util.runner import Runner
from tests.helpers.cli import ROOT


class FakeCursor:
    def __init__(self, conn):
        self.conn = conn
        self.description = None
        self.rows = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def execute(self, sql, args=None):
        self.conn.log.append(sql)
        cols, rows = self.conn.server.answer(sql, args, self.conn)
        self.description = [(c,) for c in cols]
        self.rows = rows

    def fetchall(self):
        return self.rows


class FakeConn:
    def __init__(self, server, cid):
        self.server, self.cid, self.log, self.closed = server, cid, [], False

    def cursor(self):
        return FakeCursor(self)

    def close(self):
        self.closed = True


class FakeServer:
    """Answers the quiescer's statements like a server of ``version``; ``fail`` maps SQL -> error."""

    def __init__(self, version="10.11.6-MariaDB-0+deb12u1-log", comment="Debian 12", datadir="/srv/my sql/data/",
                 log_bin="ON", extra_vars=None, processlist=(), non_innodb=(),
                 grants=("GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost` WITH GRANT OPTION",)):
        self.version, self.comment, self.grants = version, comment, list(grants)
        self.vars = {"datadir": datadir, "innodb_log_group_home_dir": "./", "innodb_undo_directory": "./",
                     "innodb_data_home_dir": "", "log_bin": log_bin,
                     "log_bin_basename": datadir.rstrip("/") + "/mysql-bin",
                     "log_bin_index": datadir.rstrip("/") + "/mysql-bin.index", "pid_file": datadir + "x.pid",
                     "aria_log_dir_path": datadir, "innodb_page_size": "16384", "server_id": "1",
                     **(extra_vars or {})}
        self.processlist = list(processlist)
        self.non_innodb = list(non_innodb)
        self.fail: dict[str, Exception] = {}
        self.conns: list[FakeConn] = []

    def connect(self, params, timeout, read_timeout=None):
        c = FakeConn(self, 40 + len(self.conns))
        self.conns.append(c)
        return c

    def answer(self, sql, args, conn):
        if sql in self.fail:
            raise self.fail[sql]
        if sql.startswith("SELECT VERSION()"):
            return ["v", "c"], [(self.version, self.comment)]
        if sql.startswith("SHOW GLOBAL VARIABLES"):
            return ["Variable_name", "Value"], [(k, v) for k, v in self.vars.items() if k in args]
        if sql == "SELECT CONNECTION_ID()":
            return ["id"], [(conn.cid,)]
        if sql == "SHOW GRANTS":
            return ["Grants"], [(g,) for g in self.grants]
        if sql == "SELECT CURRENT_USER()":
            return ["u"], [("snap@localhost",)]
        if "PROCESSLIST" in sql:
            return ["ID", "USER", "HOST", "DB", "COMMAND", "TIME", "STATE"], self.processlist
        if "information_schema.TABLES" in sql:
            return ["TABLE_SCHEMA", "TABLE_NAME"], self.non_innodb
        if sql.startswith("SHOW") and "STATUS" in sql:
            return ["File", "Position"], [("mysql-bin.000003", 1234)]
        if sql.startswith("SELECT @@gtid"):
            return ["g"], [("0-1-99",)]
        return [], []


@pytest.fixture
def fake(monkeypatch):
    def make(**kw):
        server = FakeServer(**kw)
        monkeypatch.setattr(mc, "connect", server.connect)
        return server
    return make


def quiescer(volumes=("/srv/my sql",), atomic=False, **cfg):
    ctx = QuiesceContext("db", Runner(), list(volumes))
    ctx.atomic = atomic
    return my.MysqlQuiescer(my.MysqlConfig(**{"socket": "/run/mysqld/mysqld.sock", **cfg}), ctx)


def lock_log(server):
    return [s for s in server.conns[0].log if not s.startswith(("SELECT VERSION", "SHOW GLOBAL", "SELECT CONNECTION_ID"))]


# -- config -------------------------------------------------------------------------------------
def parse(quiesce: dict) -> configmod.Config:
    data = {"targets": {"local": {"type": "directory", "path": "/tmp/x"}},
            "jobs": {"db": {"driver": "btrfs", "volumes": ["/srv/db"], "target": "local",
                            "quiesce": [{"type": "mysql", **quiesce}]}}}
    return configmod.parse(data, Path("t.toml"))


@pytest.mark.parametrize("bad, words", [
    ({"password": "hunter2"}, ["jobs.db.quiesce[0]", "password", "option file"]),
    ({"socket": "relative.sock"}, ["jobs.db.quiesce[0].socket", "absolute"]),
    ({"method": "snapshot"}, ["jobs.db.quiesce[0].method"]),
    ({"long_query_policy": "kill"}, ["jobs.db.quiesce[0].long_query_policy"]),
    ({"lock_wait_timeout": "0s"}, ["jobs.db.quiesce[0].lock_wait_timeout"]),
    ({"port": 70000}, ["jobs.db.quiesce[0].port"]),
    ({"user": "x", "bogus": 1}, ["jobs.db.quiesce[0].bogus", "unknown key"]),
])
def test_bad_config_names_the_key(bad, words):
    with pytest.raises(ConfigError) as e:
        parse(bad)
    assert e.value.exit_code == 2
    for w in words:
        assert w in str(e.value)
    assert "hunter2" not in str(e.value)


def test_good_config():
    job = parse({"option_file": "/etc/mysql/debian.cnf", "method": "ftwrl", "long_query_threshold": "30s",
                 "lock_wait_timeout": "2s"}).job("db")
    cls, cfg = job.quiescers[0]
    assert cls is my.MysqlQuiescer and cfg.long_query_threshold == 30 and cfg.lock_wait_timeout == 2


# -- option files -------------------------------------------------------------------------------
def test_option_file(tmp_path):
    f = tmp_path / "my client.cnf"
    f.write_text("!includedir /etc/mysql/conf.d/\n[mysqld]\npassword = server\n[client]\nuser = backup\n"
                 "password = \"p a;ss $(x)\"\nsocket = /run/my sql.sock\nskip-ssl\n[client-mariadb]\nport=3307\n")
    f.chmod(0o600)
    assert mc.read_option_file(f) == {"user": "backup", "password": "p a;ss $(x)", "socket": "/run/my sql.sock",
                                      "port": "3307"}
    p = mc.params_for(my.MysqlConfig(option_file=f, user="other"))
    assert (p.user, p.socket, p.password) == ("other", "/run/my sql.sock", "p a;ss $(x)")
    assert "p a;ss" not in repr(p) and "p a;ss" not in p.describe()
    p = mc.params_for(my.MysqlConfig(option_file=f, host="db.example", port=3310))
    assert (p.socket, p.host, p.port) == (None, "db.example", 3310)


def test_option_file_with_password_must_be_private(tmp_path):
    f = tmp_path / "c.cnf"
    f.write_text("[client]\nuser = root\npassword = hunter2\n")
    f.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600") as e:
        mc.read_option_file(f)
    assert "hunter2" not in str(e.value)
    f.write_text("[client]\nuser = root\n")  # no password: permissions do not matter
    assert mc.read_option_file(f) == {"user": "root"}
    with pytest.raises(ConfigError, match="cannot read"):
        mc.read_option_file(tmp_path / "missing.cnf")


# -- methods: the exact statements --------------------------------------------------------------
def test_backup_stage_on_mariadb(fake):
    server = fake()
    q = quiescer()
    q.preflight()
    q.quiesce(time.monotonic() + 10)
    q.verify()
    rec = q.release()
    assert lock_log(server) == [
        "SET SESSION lock_wait_timeout = 3", "SET SESSION wait_timeout = 10",
        "BACKUP STAGE START", "BACKUP STAGE BLOCK_COMMIT", "SHOW BINLOG STATUS", "SELECT @@gtid_binlog_pos",
        "BACKUP STAGE END"]
    assert rec["method"] == "backup-stage" and rec["consistency"] == "application"
    assert rec["binlog"] == {"file": "mysql-bin.000003", "position": 1234, "exact": True}
    assert rec["gtid"] == "0-1-99" and rec["connection_id"] == 40
    assert rec["files"] == ["/srv/my sql/data"] and rec["datadir"] == "/srv/my sql/data"
    assert all(c.closed for c in server.conns)
    assert q.release()["released_at"] == rec["released_at"]  # idempotent: nothing sent twice
    assert lock_log(server).count("BACKUP STAGE END") == 1


def test_ftwrl_on_old_mariadb_and_mysql57(fake):
    server = fake(version="10.3.39-MariaDB")
    q = quiescer()
    q.quiesce(time.monotonic() + 10)
    q.release()
    assert lock_log(server)[2:] == ["FLUSH TABLES", "FLUSH TABLES WITH READ LOCK", "SHOW MASTER STATUS",
                                    "SELECT @@gtid_binlog_pos", "UNLOCK TABLES"]
    server = fake(version="5.7.44-log", comment="MySQL Community Server (GPL)")
    q = quiescer()
    q.quiesce(time.monotonic() + 10)
    rec = q.release()
    assert rec["flavor"] == "mysql" and rec["method"] == "ftwrl"
    assert lock_log(server)[2:] == ["FLUSH TABLES", "FLUSH TABLES WITH READ LOCK", "SHOW MASTER STATUS",
                                    "SELECT @@gtid_executed", "UNLOCK TABLES"]


def test_lock_instance_on_mysql8_locks_non_innodb_tables(fake):
    server = fake(version="8.4.3", comment="MySQL Community Server - GPL",
                  non_innodb=[("app", "a`b"), ("app", "x; DROP TABLE y"), ("-lead", "$(rm -rf /)")])
    q = quiescer()
    q.quiesce(time.monotonic() + 10)
    rec = q.release()
    log = lock_log(server)
    assert log[2] == "LOCK INSTANCE FOR BACKUP"
    assert log[4] == "FLUSH TABLES `app`.`a``b`, `app`.`x; DROP TABLE y`, `-lead`.`$(rm -rf /)` WITH READ LOCK"
    assert log[5:] == ["SHOW BINARY LOG STATUS", "SELECT @@gtid_executed", "UNLOCK TABLES", "UNLOCK INSTANCE"]
    assert rec["method"] == "lock-instance" and rec["consistency"] == "crash" and rec["binlog"]["exact"] is False


def test_lock_instance_needs_one_volume(fake):
    fake(version="8.0.36", comment="MySQL", extra_vars={"innodb_log_group_home_dir": "/srv/redo/"})
    q = quiescer(volumes=("/srv/my sql", "/srv/redo"), method="lock-instance")
    with pytest.raises(PreflightFailed, match="one volume"):
        q.preflight()
    q = quiescer(volumes=("/srv/my sql", "/srv/redo"))
    q.preflight()
    assert q.method == "ftwrl"  # auto falls back to a lock that stops writes
    q = quiescer(volumes=("/srv/my sql", "/srv/redo"), atomic=True)  # e.g. one ZFS snapshot call
    q.preflight()
    assert q.method == "lock-instance"
    assert q.files() == [Path("/srv/my sql/data"), Path("/srv/redo")]


def test_backup_stage_refused_on_mysql(fake):
    fake(version="8.0.36", comment="MySQL")
    with pytest.raises(PreflightFailed, match="MariaDB >= 10.4"):
        quiescer(method="backup-stage").preflight()


def test_files_resolve_relative_dirs_and_binlog(fake):
    fake(extra_vars={"innodb_undo_directory": "undo", "log_bin_basename": "/srv/binlogs/mysql-bin"})
    assert quiescer().files() == [Path("/srv/my sql/data"), Path("/srv/my sql/data/undo"), Path("/srv/binlogs")]
    fake(log_bin="OFF", extra_vars={"log_bin_basename": "/elsewhere/mysql-bin"})
    assert quiescer().files() == [Path("/srv/my sql/data")]


def test_long_query_refused_without_query_text(fake):
    fake(processlist=[(77, "app", "localhost", "shop", "Query", 95, "Sending data")])
    with pytest.raises(PreflightFailed) as e:
        quiescer(long_query_threshold="60s").preflight()
    assert "id 77 user app db shop Query for 95s" in str(e.value) and "long_query_threshold (60s)" in str(e.value)


def test_long_query_wait_bounded_by_deadline(fake):
    server = fake(processlist=[(77, "app", "localhost", None, "Query", 95, None)])
    q = quiescer(long_query_policy="wait")
    q.preflight()  # wait policy: preflight does not refuse
    t0 = time.monotonic()
    with pytest.raises(QuiesceFailed, match="waited"):
        q.quiesce(t0 + 0.6)
    assert time.monotonic() - t0 < 0.7
    assert not any("LOCK" in s or "BACKUP" in s for s in server.conns[0].log)  # nothing taken
    q.release()


def test_lock_failure_and_verify(fake):
    import pymysql

    server = fake()
    server.fail["BACKUP STAGE BLOCK_COMMIT"] = pymysql.err.OperationalError(1205, "Lock wait timeout exceeded")
    q = quiescer()
    with pytest.raises(QuiesceFailed, match="Lock wait timeout exceeded.*1205"):
        q.quiesce(time.monotonic() + 10)
    q.release()
    assert lock_log(server)[-1] == "BACKUP STAGE END"  # START succeeded: ended on release
    server = fake()
    q = quiescer()
    q.quiesce(time.monotonic() + 10)
    q.conn.cid = 99  # a reconnect would give a new session
    with pytest.raises(QuiesceFailed, match="changed"):
        q.verify()
    server.fail["BACKUP STAGE END"] = pymysql.err.OperationalError(2013, "Lost connection")
    assert "released_at" in q.release()  # never raises; closing the session releases the lock


# -- restore side -------------------------------------------------------------------------------
def test_prepare_restore_and_server_argv(tmp_path):
    import shutil
    import tempfile

    live = "/srv/my sql/data"
    top = Path(tempfile.mkdtemp(prefix="sa-m-", dir="/tmp"))  # a short DEST: the socket goes below it
    dest = top / "my_sql" / "data"
    dest.mkdir(parents=True)
    (dest / "x.pid").write_text("123\n")
    (dest / "mysql-bin.index").write_text(f"{live}/mysql-bin.000001\n./mysql-bin.000002\n/other/keep.000001\n")
    record = {"datadir": live, "files": [live], "flavor": "mariadb", "server": {
        "pid_file": f"{live}/x.pid", "log_bin": "ON", "log_bin_basename": f"{live}/mysql-bin",
        "log_bin_index": f"{live}/mysql-bin.index", "innodb_log_group_home_dir": "./",
        "innodb_page_size": "16384", "server_id": "5", "innodb_data_home_dir": None},
        "owner": {"user": "nobody", "uid": 4242, "gid": 4242, "group": None}}

    def locate(p):  # like restore.locator: only recorded paths are known
        if p != live:
            raise NotFound(p)
        return dest

    import pwd

    from snapagent.held import Held
    from snapagent.plugin.quiescer import RestoreContext
    from tests.helpers.fakerunner import FakeRunner

    os.chmod(top, 0o700)
    r = FakeRunner()
    try:
        h = mr.prepare_restore(record, locate, RestoreContext(r, None, Held(None, r), dest=top))
        assert not (dest / "x.pid").exists() and h.details["removed"] == [str(dest / "x.pid")]
        assert (dest / "mysql-bin.index").read_text() == (
            "./mysql-bin.000001\n./mysql-bin.000002\n/other/keep.000001\n")
        assert h.details["binlog_index"] == 2
        # the files belong to the live datadir's owner (by name), who may now pass DEST; the socket is private
        nobody = pwd.getpwnam("nobody")
        assert h.owner == "nobody" and os.stat(dest / "mysql-bin.index").st_uid == nobody.pw_uid
        assert ["setfacl", "-m", f"u:{nobody.pw_uid}:x", "--", str(top)] in r.argvs()
        run = top / ".snapagent-mysql"
        assert h.socket == str(run / "mysqld.sock") and os.stat(run).st_uid == nobody.pw_uid
        assert h.port >= 3340 and f"--port={h.port}" in h.start and "--bind-address=127.0.0.1" in h.start
        assert h.start[0].endswith("mariadbd") and "--user=nobody" in h.start and f"--datadir={dest}" in h.start
        assert h.stop == ["mariadb-admin", f"--socket={run}/mysqld.sock", "shutdown"]
        assert h.check == ["mariadb-check", f"--socket={run}/mysqld.sock", "--all-databases"]
    finally:
        shutil.rmtree(top)
    argv = mr.server_argv(record, locate, "/tmp/s.sock", "/tmp/p.pid", "/tmp/e.log", "mysql")
    assert argv == ["mariadbd", "--no-defaults", f"--datadir={dest}", "--socket=/tmp/s.sock", "--pid-file=/tmp/p.pid",
                    "--skip-networking", "--user=mysql", "--log-error=/tmp/e.log", "--event-scheduler=OFF",
                    "--skip-slave-start", "--innodb-page-size=16384", "--server-id=5",
                    f"--innodb-log-group-home-dir={dest}/", "--log-bin=mysql-bin",
                    "--log-bin-index=mysql-bin.index"]  # relative: the copy indexes new binlogs as ./name


def test_run_as_falls_back_to_root(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    os.chown(d, 0, 0) if os.geteuid() == 0 else None
    assert mysql_drill._run_as(d) in ("root", os.environ.get("USER", "root"))


def test_server_argv_for_mysql8_without_binlog(tmp_path):
    record = {"datadir": "/var/lib/mysql", "files": ["/var/lib/mysql"], "flavor": "mysql", "version": "8.0.36",
              "server": {"log_bin": "OFF", "lower_case_table_names": "1"}}
    argv = mr.server_argv(record, lambda p: tmp_path / "my sql", "/s", "/p", "/e", "mysql")
    assert argv[0] == "mysqld" and "--skip-replica-start" in argv and argv[-1] == "--skip-log-bin"
    assert f"--datadir={tmp_path / 'my sql'}" in argv and "--lower-case-table-names=1" in argv


def test_server_errors_become_typed_errors(fake):
    import pymysql

    server = fake()
    server.fail["SELECT VERSION(), @@version_comment"] = pymysql.err.OperationalError(1227, "Access denied")
    with pytest.raises(PreflightFailed, match="Access denied.*1227"):
        quiescer().preflight()
    server = fake()
    q = quiescer()
    q.preflight()
    server.fail["SET SESSION lock_wait_timeout = 3"] = pymysql.err.OperationalError(2006, "gone away")
    with pytest.raises(QuiesceFailed, match="gone away"):
        q.quiesce(time.monotonic() + 10)
    q.release()


def test_docs_example_config_parses():
    import tomllib


    section = (ROOT / "docs" / "databases.md").read_text().split("## MySQL / MariaDB", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    data = tomllib.loads('[targets.local]\ntype = "directory"\npath = "/tmp/x"\n' + example)
    _, qcfg = configmod.parse(data, Path("docs/databases.md")).jobs["shop"].quiescers[0]
    assert qcfg.option_file == Path("/etc/mysql/debian.cnf") and qcfg.method == "auto"
    assert qcfg.long_query_policy == "refuse" and qcfg.lock_wait_timeout == 3


def test_restored_paths_never_follow_a_symlink_out_of_the_copy(tmp_path):
    """A forged backup may restore `datadir/run -> /etc`: a pid file recorded below it is not
    touched (it would be /etc/...)."""
    root = tmp_path / "restored"
    (root / "datadir").mkdir(parents=True)
    os.symlink("/etc", root / "datadir" / "run")
    (root / "datadir" / "real.pid").write_text("1")
    record = {"datadir": "/var/lib/mysql", "files": ["/var/lib/mysql"],
              "server": {"pid_file": "/var/lib/mysql/run/hostname"}}

    def locate(live):
        if live == "/var/lib/mysql":
            return root / "datadir"
        raise mr.NotFound(live)

    assert mr.restored_path(record, locate, "/var/lib/mysql/run/hostname") is None
    assert mr.restored_path(record, locate, "/var/lib/mysql/real.pid") == root / "datadir" / "real.pid"
    assert mr.restored_path(record, locate, "/var/lib/mysql/../../etc/passwd") is None


@pytest.mark.parametrize("version, grants, method, missing", [
    ("10.11.6-MariaDB", ["GRANT PROCESS, BINLOG MONITOR ON *.* TO `snap`@`localhost`"], "backup-stage", "RELOAD"),
    ("10.11.6-MariaDB", ["GRANT USAGE ON *.* TO `snap`@`localhost`", "GRANT ALL PRIVILEGES ON `app`.* TO `snap`@`localhost`"],
     "backup-stage", "RELOAD, PROCESS"),
    ("8.0.36", ["GRANT RELOAD, PROCESS ON *.* TO `snap`@`localhost`"], "lock-instance", "BACKUP_ADMIN"),
    ("5.7.44", ["GRANT RELOAD ON *.* TO 'snap'@'localhost'"], "ftwrl", "PROCESS"),
])
def test_preflight_names_the_missing_grant(fake, version, grants, method, missing):
    fake(version=version, comment="x", grants=grants)
    q = quiescer(method=method) if method == "lock-instance" else quiescer()
    with pytest.raises(PreflightFailed) as e:
        q.preflight()
    msg = str(e.value)
    assert f"the account 'snap'@'localhost' lacks {missing} (" in msg, msg
    assert f"GRANT {missing} ON *.* TO 'snap'@'localhost';" in msg, msg


@pytest.mark.parametrize("version, grants, method", [
    ("10.11.6-MariaDB", ["GRANT RELOAD, PROCESS, BINLOG MONITOR ON *.* TO `snap`@`localhost`"], "backup-stage"),
    ("8.0.36", ["GRANT RELOAD, PROCESS ON *.* TO `snap`@`%`", "GRANT BACKUP_ADMIN,SYSTEM_USER ON *.* TO `snap`@`%`"],
     "lock-instance"),
])
def test_preflight_accepts_the_documented_grants(fake, version, grants, method):
    fake(version=version, comment="x", grants=grants)
    q = quiescer(method=method) if method == "lock-instance" else quiescer()
    q.preflight()
    assert q.method == method


def test_grants_through_a_role_are_left_to_the_server(fake):
    fake(grants=["GRANT USAGE ON *.* TO `snap`@`localhost`", "GRANT `backup_role` TO `snap`@`localhost`"])
    q = quiescer()
    q.preflight()
    assert q.method == "backup-stage"


def test_a_refused_lock_leaves_nothing_to_release(fake):
    """BACKUP STAGE START refused (no RELOAD): release sends no BACKUP STAGE END (it would fail
    and warn about a lock never taken)."""
    import pymysql

    server = fake()
    server.fail["BACKUP STAGE START"] = pymysql.err.OperationalError(1227, "Access denied; you need the RELOAD privilege")
    q = quiescer()
    q.preflight()
    with pytest.raises(QuiesceFailed, match="RELOAD"):
        q.quiesce(time.monotonic() + 5)
    q.release()
    assert not [s for c in server.conns for s in c.log if s.startswith(("BACKUP STAGE END", "UNLOCK"))]

"""Unit tests of the PostgreSQL quiescer's pure parts: config validation, WAL arithmetic, quoting of
restore_command / postgresql.conf values, tablespace_map rewriting, prepare_restore on a synthetic
restored tree, and the exact argv of every command (names with spaces, ';', '$()', leading '-')."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from snapagent import config as configmod
from snapagent.errors import ConfigError, OperationFailed
from snapagent.held import Held
from snapagent.plugin import handover
from snapagent.plugin.quiescer import RestoreContext
from snapagent.quiesce.postgresql import drill as pg_drill
from snapagent.quiesce.postgresql import restore as pg_restore
from snapagent.quiesce.postgresql import wal as pg_wal
from tests.helpers.fakerunner import FakeRunner

NASTY = "-a b;c $(touch pwned) 'q' %d"


def parse(q: dict):
    data = {"targets": {"local": {"type": "directory", "path": "/tmp/x"}},
            "jobs": {"db": {"driver": "btrfs", "volumes": ["/srv/pg"], "target": "local",
                            "quiesce": [{"type": "postgresql", **q}]}}}
    return configmod.parse(data, Path("test.toml"))


# -- config -----------------------------------------------------------------------------------
def test_valid_config():
    cfg = parse({"dsn": "host=/run/postgresql user=postgres dbname=postgres", "mode": "backup-api",
                 "wal_archive": "/srv/archive", "archive_timeout": "2m"})
    _, qcfg = cfg.jobs["db"].quiescers[0]
    assert qcfg.mode == "backup-api" and qcfg.archive_timeout == 120 and qcfg.checkpoint is True


@pytest.mark.parametrize("q, key, words", [
    ({"dsn": "host=/run/postgresql password=s3cret"}, "jobs.db.quiesce[0].dsn", "must not contain a password"),
    ({"dsn": "postgresql://u:s3cret@localhost/db"}, "jobs.db.quiesce[0].dsn", "must not contain a password"),
    ({"dsn": "host='unterminated"}, "jobs.db.quiesce[0].dsn", "not a valid libpq connection string"),
    ({"dsn": "", "mode": "backup-api"}, "jobs.db.quiesce[0]", "wal_archive: required"),
    ({"dsn": "", "wal_archive": "relative/dir"}, "jobs.db.quiesce[0].wal_archive", "absolute"),
    ({"dsn": "", "mode": "fast"}, "jobs.db.quiesce[0].mode", "checkpoint"),
    ({"dsn": "", "wal_archve": "/x"}, "jobs.db.quiesce[0].wal_archve", "unknown key"),
    ({}, "jobs.db.quiesce[0].dsn", "required key is missing"),
])
def test_bad_config_names_the_key(q, key, words):
    with pytest.raises(ConfigError) as e:
        parse(q)
    msg = str(e.value)
    assert key in msg and words in msg and "s3cret" not in msg
    assert e.value.exit_code == 2


# -- WAL arithmetic ---------------------------------------------------------------------------
SEG = 16 * 1024 * 1024


def test_segment_names_cross_a_log_id():
    assert pg_wal.segment_name(1, 2, SEG) == "000000010000000000000002"
    assert pg_wal.segments_between("0000000100000000000000FE", "000000010000000100000001", SEG) == [
        "0000000100000000000000FE", "0000000100000000000000FF",
        "000000010000000100000000", "000000010000000100000001"]
    assert pg_wal.split_segment("000000030000000100000001", SEG) == (3, 257)


def test_history_file_and_wanted_files():
    rec = {"wal_segment_size": SEG, "start_walfile": "000000020000000000000002",
           "stop_walfile": "000000020000000000000003", "start_lsn": "0/20001A8"}
    assert pg_wal.wanted_files(rec) == ["000000020000000000000002", "000000020000000000000003",
                                        "000000020000000000000002.000001A8.backup", "00000002.history"]


def test_timeline_change_is_refused():
    with pytest.raises(OperationFailed, match="timeline changed"):
        pg_wal.segments_between("000000010000000000000002", "000000020000000000000003", SEG)


def test_wait_for_archive_names_missing_and_incomplete(tmp_path):
    (tmp_path / "000000010000000000000002").write_bytes(b"x" * 10)
    with pytest.raises(OperationFailed) as e:
        pg_wal.wait_for_archive(tmp_path, ["000000010000000000000002", "000000010000000000000003",
                                           "00000002.history"], SEG, timeout=0.2)
    msg = str(e.value)
    assert "incomplete: 10 of" in msg and "000000010000000000000003" in msg and "history" not in msg


def test_tar_stream_argv_and_refused_names(tmp_path):
    r = FakeRunner(stream=lambda argv: b"TAR")
    with pg_wal.tar_stream(r, tmp_path / NASTY, ["000000010000000000000002"]) as s:
        assert s.read() == b"TAR"
    assert r.argvs() == [["tar", "--create", "--file=-", "--format=posix", "--directory", str(tmp_path / NASTY),
                        "--no-wildcards", "--", "000000010000000000000002"]]
    with pytest.raises(OperationFailed):
        with pg_wal.tar_stream(r, tmp_path, ["--checkpoint-action=exec=sh"]):
            pass


# -- quoting ----------------------------------------------------------------------------------
def pg_expand(cmd: str, f: str, p: str) -> str:
    """Expand %f/%p/%% the way PostgreSQL does for restore_command."""
    out, i = [], 0
    while i < len(cmd):
        if cmd[i] == "%" and i + 1 < len(cmd):
            out.append({"f": f, "p": p, "%": "%"}.get(cmd[i + 1], cmd[i:i + 2]))
            i += 2
        else:
            out.append(cmd[i])
            i += 1
    return "".join(out)


def test_restore_command_is_shell_safe(tmp_path):
    wal = tmp_path / NASTY
    wal.mkdir()
    (wal / "000000010000000000000002").write_text("segment")
    (tmp_path / "pg_wal").mkdir()
    cmd = pg_expand(pg_restore.restore_command(wal), "000000010000000000000002", "pg_wal/RECOVERYXLOG")
    r = subprocess.run(["sh", "-c", cmd], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "pg_wal" / "RECOVERYXLOG").read_text() == "segment"
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    missing = pg_expand(pg_restore.restore_command(wal), "000000010000000000000009", "pg_wal/RECOVERYXLOG")
    assert subprocess.run(["sh", "-c", missing], cwd=tmp_path, capture_output=True).returncode != 0


def test_conf_quote():
    assert pg_restore.conf_quote("a'b\\c") == "'a''b\\\\c'"


def test_tablespace_map_rewrite():
    spcmap = "16384 /live/ts\n16385 /live/odd\n"
    out = pg_restore.rewrite_tablespace_map(spcmap, {"16384": "/r/ts one", "16385": "/r/a\nb"})
    assert out == "16384 /r/ts one\n16385 /r/a\\\nb\n"
    with pytest.raises(OperationFailed):
        pg_restore.rewrite_tablespace_map("99 /x\n", {})


# -- prepare_restore on a synthetic restored tree ---------------------------------------------
def synthetic(tmp_path: Path, mode: str):
    dest = tmp_path / "dest"
    pgdata = dest / "vol1" / "pgdata"
    (pgdata / "pg_tblspc").mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("15\n")
    (pgdata / "postmaster.pid").write_text("1\n")
    (pgdata / "postmaster.opts").write_text("x\n")
    (pgdata / "postgresql.auto.conf").write_text("# auto\n")
    wal = dest / "vol2" / "wal"
    (wal / "archive_status").mkdir(parents=True)
    (wal / "000000010000000000000001").write_text("old")
    (wal / "archive_status" / "000000010000000000000001.ready").write_text("")
    ts = dest / "vol2" / "ts"
    ts.mkdir()
    os.symlink("/live/wal", pgdata / "pg_wal")
    os.symlink("/live/ts", pgdata / "pg_tblspc" / "16384")
    restored_wal = dest / "postgresql-wal"
    restored_wal.mkdir()
    rec = {"type": "postgresql", "mode": mode, "data_directory": "/live/pgdata", "pg_wal": "/live/wal",
           "tablespaces": {"16384": "/live/ts"}, "server_version_num": 150018,
           "labelfile": "START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n",
           "spcmapfile": "16384 /live/ts\n",
           "locations": {"/live/pgdata": {"volume": 0, "relpath": "pgdata"},
                         "/live/wal": {"volume": 1, "relpath": "wal"}, "/live/ts": {"volume": 1, "relpath": "ts"}},
           "artifacts": [{"name": "wal", "restored": str(restored_wal)}]}
    where = {"/live/pgdata": pgdata, "/live/wal": wal, "/live/ts": ts}
    return dest, pgdata, wal, ts, rec, where.__getitem__


@pytest.fixture
def short_tmp():
    """A temp dir with a short path (a socket path below DEST must fit in 107 bytes)."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="sa-h-", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def ctx_for(dest: Path, runner: FakeRunner | None = None) -> RestoreContext:
    return RestoreContext(runner or FakeRunner(), None, Held(None, runner or FakeRunner()), dest=dest)


def test_prepare_backup_api(short_tmp):
    dest, pgdata, wal, ts, rec, locate = synthetic(short_tmp, "backup-api")
    h = pg_restore.prepare(rec, locate, ctx_for(dest))
    assert os.readlink(pgdata / "pg_wal") == str(wal)
    assert os.readlink(pgdata / "pg_tblspc" / "16384") == str(ts)
    assert not (pgdata / "postmaster.pid").exists() and not (pgdata / "postmaster.opts").exists()
    assert (pgdata / "backup_label").read_text() == rec["labelfile"]
    assert (pgdata / "tablespace_map").read_text() == f"16384 {ts}\n"
    assert (pgdata / "recovery.signal").exists()
    assert sorted(p.name for p in wal.iterdir()) == ["archive_status"] and not any((wal / "archive_status").iterdir())
    auto = (pgdata / "postgresql.auto.conf").read_text()
    assert auto.startswith("# auto\n") and "archive_mode = 'off'" in auto and "restore_command = 'cp -- " in auto
    assert h.kind == "postgresql" and h.data_dir == str(pgdata) and h.files == [str(wal), str(ts)]
    assert h.details["relinked"]["pg_wal"] == {"from": "/live/wal", "to": str(wal)}
    assert pg_restore.restore_root(rec, locate) == dest


def test_handover_free_port_private_socket_and_owner(short_tmp):
    """The hand-over: a free port from 5440 (never 5432/5433), a private socket directory in DEST
    owned by the data directory's owner, PGDATA 0700 theirs, no hint for what was done already."""
    import pwd
    import socket

    dest, pgdata, wal, ts, rec, locate = synthetic(short_tmp, "checkpoint")
    (pgdata / "postgresql.conf").touch()
    os.chmod(pgdata, 0o755)
    os.chmod(dest, 0o700)  # as restore makes it
    pw = pwd.getpwnam("nobody")
    rec["owner"] = {"user": "nobody", "uid": 4242, "group": None, "gid": 4242}
    with socket.socket() as busy:  # the first candidate is taken: the next one is chosen
        busy.bind(("127.0.0.1", 5440))
        r = FakeRunner()
        h = pg_restore.prepare(rec, locate, ctx_for(dest, r))
    assert h.port == 5441 and h.owner == "nobody"
    run = dest / ".snapagent-postgresql"
    assert h.socket == str(run) and (os.stat(run).st_uid, oct(os.stat(run).st_mode & 0o777)) == (pw.pw_uid, "0o700")
    st = os.stat(pgdata)
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (pw.pw_uid, pw.pw_gid, 0o700)
    assert os.stat(pgdata / "PG_VERSION").st_uid == pw.pw_uid
    bindir = "/usr/lib/postgresql/15/bin"
    assert h.start == ["runuser", "-u", "nobody", "--", f"{bindir}/pg_ctl", "-D", str(pgdata), "-l",
                       str(run / "server.log"), "-o",
                       f"-c port=5441 -c listen_addresses=127.0.0.1 -c unix_socket_directories={run}", "start"]
    assert h.stop == ["runuser", "-u", "nobody", "--", f"{bindir}/pg_ctl", "-D", str(pgdata), "-m", "fast", "stop"]
    assert h.check[:10] == ["runuser", "-u", "nobody", "--", f"{bindir}/psql", "-h", str(run), "-p", "5441", "-U"]
    assert h.put_in_place.startswith("docs/databases.md#")
    # nobody may not enter DEST (0700 dirs of pytest): ACL entries below DEST, taken through Held
    acl = [a for a in r.argvs() if a[0] == "setfacl"]
    assert acl and all(a[2] == f"u:{pw.pw_uid}:x" and Path(a[4]).is_relative_to(dest) for a in acl)
    assert not any("setfacl" in n and str(dest) in n.split("--", 1)[-1] for n in h.notes)


def test_handover_nasty_path_runs_the_postmaster_in_the_foreground(short_tmp, tmp_path):
    dest, pgdata, wal, ts, rec, locate = synthetic(short_tmp / "a $(b)", "checkpoint")
    h = pg_restore.prepare(rec, locate, ctx_for(dest))
    assert h.start[4].endswith("/postgres") and h.start[5:7] == ["-D", str(pgdata)]
    assert "-c" in h.start and f"unix_socket_directories={dest / '.snapagent-postgresql'}" in h.start
    assert any("foreground" in n for n in h.notes)
    # no postgresql.conf in PGDATA (Debian): the run directory holds a minimal one and a peer pg_hba
    assert (dest / ".snapagent-postgresql" / "pg_hba.conf").read_text() == "local all all peer\n"
    assert f"hba_file={dest / '.snapagent-postgresql' / 'pg_hba.conf'}" in h.start
    # a DEST too long for a socket path: the run directory goes to the temp dir
    dest, pgdata, wal, ts, rec, locate = synthetic(tmp_path / ("x" * 60), "checkpoint")
    h = pg_restore.prepare(rec, locate, ctx_for(dest))
    assert Path(h.socket).parent == Path(tempfile.gettempdir()) and len(h.socket) < 90
    shutil.rmtree(h.socket)


def test_prepare_checkpoint_leaves_wal_and_refuses_unknown_links(short_tmp):
    dest, pgdata, wal, ts, rec, locate = synthetic(short_tmp, "checkpoint")
    os.symlink("/live/other", pgdata / "pg_tblspc" / "99999")
    with pytest.raises(OperationFailed, match="did not record"):
        pg_restore.prepare(rec, locate, ctx_for(dest))
    (pgdata / "pg_tblspc" / "99999").unlink()
    pg_restore.prepare(rec, locate, ctx_for(dest))
    assert (wal / "000000010000000000000001").exists() and not (pgdata / "backup_label").exists()
    assert not (pgdata / "recovery.signal").exists()


def test_acl_argv(tmp_path):
    r = FakeRunner()
    held = Held(None, r)  # restore keeps the entries with the copy; drill gives them back afterwards
    held.grant_traverse([tmp_path / NASTY], 101)
    (tmp_path / NASTY).mkdir()
    assert held.release_all() == []
    assert r.argvs() == [["setfacl", "-m", "u:101:x", "--", f"{tmp_path}/{NASTY}"],
                         ["setfacl", "-x", "u:101", "--", f"{tmp_path}/{NASTY}"]]


def test_can_traverse_reads_the_acl(tmp_path):
    """A directory another user may enter through an ACL entry is not 'blocked' (the setfacl hint
    issue 12 found printed for what the restore had already done); a mask limits it."""
    d = tmp_path / "d"
    d.mkdir(mode=0o700)
    os.chmod(d, 0o700)
    assert handover.blocked_dirs([d / "x"], 4242, 4242, below=d) == [d]
    subprocess.run(["setfacl", "-m", "u:4242:x", "--", str(d)], check=True)
    assert handover.blocked_dirs([d / "x"], 4242, 4242, below=d) == []
    subprocess.run(["setfacl", "-m", "m::r", "--", str(d)], check=True)
    assert handover.blocked_dirs([d / "x"], 4242, 4242, below=d) == [d]
    subprocess.run(["setfacl", "-b", "-m", "g:4343:x", "--", str(d)], check=True)
    assert handover.can_traverse(d, 4242, [4343]) and not handover.can_traverse(d, 4242, [4242])


def test_drill_postmaster_argv(tmp_path):
    pgdata = tmp_path / NASTY
    pgdata.mkdir()
    c = pg_drill.Cluster({"server_version_num": 150018, "bootstrap_superuser": "postgres"}, pgdata, [],
                         Held(None, FakeRunner()))
    try:
        argv = c.argv()
    finally:
        for f in c.sock.iterdir():
            f.unlink()
        c.sock.rmdir()
    assert argv[:7] == ["setpriv", f"--reuid={os.getuid()}", f"--regid={os.getgid()}", "--init-groups", "--",
                        "/usr/lib/postgresql/15/bin/postgres", "-D"]
    assert argv[7] == str(pgdata)
    assert "listen_addresses=" in argv and "archive_mode=off" in argv and f"port={c.port}" in argv
    assert any(a.startswith("config_file=") for a in argv)  # no postgresql.conf in that PGDATA


def test_docs_example_config_parses():
    import tomllib

    text = (Path(__file__).resolve().parents[2] / "docs" / "databases.md").read_text()
    section = text.split("## PostgreSQL", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    data = tomllib.loads('[targets.local]\ntype = "directory"\npath = "/tmp/x"\n' + example)
    cfg = configmod.parse(data, Path("docs/databases.md"))
    _, qcfg = cfg.jobs["pg"].quiescers[0]
    assert qcfg.mode == "auto" and qcfg.wal_archive == Path("/srv/pg-archive")


# -- mode choice from the topology ------------------------------------------------------------
def quiescer(mode: str, roots: list[str], atomic: bool, in_recovery: bool = False):
    from snapagent.errors import PreflightFailed  # noqa: F401
    from snapagent.plugin.quiescer import QuiesceContext
    from snapagent.quiesce.postgresql.quiescer import PostgresConfig, PostgresQuiescer

    cfg = PostgresConfig(dsn="host=/nonexistent", mode=mode, wal_archive="/srv/archive")
    ctx = QuiesceContext("db", FakeRunner(), roots, volume_roots=[Path(r) for r in roots], atomic=atomic)
    q = PostgresQuiescer(cfg, ctx)
    q.topo = {"data_directory": "/srv/data/pg", "pg_wal": "/srv/wal/wal", "tablespaces": {"16384": "/srv/wal/ts"},
              "in_recovery": in_recovery}
    return q


@pytest.mark.parametrize("mode, roots, atomic, expect", [
    ("auto", ["/srv"], False, "checkpoint"),                    # everything on one volume
    ("auto", ["/srv/data", "/srv/wal"], False, "backup-api"),   # two volumes, one after another
    ("auto", ["/srv/data", "/srv/wal"], True, "checkpoint"),    # an atomic driver
    ("backup-api", ["/srv"], False, "backup-api"),
])
def test_choose_mode(mode, roots, atomic, expect):
    assert quiescer(mode, roots, atomic).choose_mode() == expect


def test_checkpoint_mode_refused_across_non_atomic_volumes():
    from snapagent.errors import PreflightFailed

    with pytest.raises(PreflightFailed) as e:
        quiescer("checkpoint", ["/srv/data", "/srv/wal"], False).choose_mode()
    assert "/srv/wal/wal on /srv/wal" in str(e.value) and "/srv/data/pg on /srv/data" in str(e.value)
    with pytest.raises(PreflightFailed, match="standby"):
        quiescer("auto", ["/srv/data", "/srv/wal"], False, in_recovery=True).choose_mode()


def test_handover_socket_dir_never_holds_a_comma(short_tmp):
    """unix_socket_directories is a comma-separated list: a DEST with a comma gets its run directory
    in the temp dir."""
    dest, pgdata, wal, ts, rec, locate = synthetic(short_tmp / "a,b", "checkpoint")
    h = pg_restore.prepare(rec, locate, ctx_for(dest))
    try:
        assert "," not in h.socket and Path(h.socket).parent == Path(tempfile.gettempdir())
        assert f"unix_socket_directories={h.socket}" in h.start[-2]
    finally:
        shutil.rmtree(h.socket)

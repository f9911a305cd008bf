"""Throwaway PostgreSQL 15 clusters for the tests: initdb as `postgres` into a given directory
(optionally with pg_wal elsewhere), a private unix socket directory, no TCP, WAL archiving into a
given directory. Everything runs as the `postgres` user from /usr/lib/postgresql/15/bin (not
/usr/local/bin, which may hold other versions)."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

BINDIR = Path("/usr/lib/postgresql/15/bin")


def available() -> tuple[bool, str]:
    """Return (ok, reason) for whether clusters can be made here."""
    if not (BINDIR / "initdb").exists():
        return False, f"needs PostgreSQL 15 in {BINDIR} (scripts/setup-postgres.sh installs it)"
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return False, "needs the postgres user (scripts/setup-postgres.sh)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return False, "needs psycopg (bootstrap installs the postgres extra)"
    return True, ""


def pg_ids() -> tuple[int, int]:
    pw = pwd.getpwnam("postgres")
    return pw.pw_uid, pw.pw_gid


def open_path_for_postgres(path: Path) -> None:
    """Let the postgres user traverse every ancestor of ``path`` (test temp dirs are 0700)."""
    for a in reversed(Path(path).parents):
        st = os.stat(a)
        if not st.st_mode & stat.S_IXOTH:
            os.chmod(a, stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def pg_dir(path: Path) -> Path:
    """Create ``path`` owned by postgres, mode 0700."""
    uid, gid = pg_ids()
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, uid, gid)
    os.chmod(path, 0o700)
    open_path_for_postgres(path)
    return path


def as_postgres(argv: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "postgres", "--", *argv], capture_output=True, text=True, **kw)


class Cluster:
    """One test cluster. ``start()``/``stop()``; ``dsn`` connects as postgres through the socket."""

    def __init__(self, pgdata: Path, archive: Path | None = None, waldir: Path | None = None):
        self.pgdata = pgdata
        self.archive = archive
        self.waldir = waldir
        self.sock = Path(tempfile.mkdtemp(prefix="pgtest-"))
        uid, gid = pg_ids()
        os.chown(self.sock, uid, gid)
        open_path_for_postgres(self.sock)
        self.port = 5432
        self.logfile = self.sock / "server.log"

    @property
    def dsn(self) -> str:
        return f"host={self.sock} port={self.port} user=postgres dbname=postgres"

    def initdb(self, **settings: str) -> "Cluster":
        argv = [str(BINDIR / "initdb"), "-D", str(self.pgdata), "--auth=trust", "-U", "postgres", "--no-sync"]
        if self.waldir:
            argv += [f"--waldir={self.waldir}"]
        r = as_postgres(argv)
        assert r.returncode == 0, r.stderr
        conf = {"listen_addresses": "''", "unix_socket_directories": f"'{self.sock}'", "port": str(self.port),
                "shared_buffers": "16MB", "max_wal_size": "64MB", "wal_level": "replica",
                "fsync": "on", "max_connections": "30", **settings}
        if self.archive:
            conf["archive_mode"] = "on"
            a = str(self.archive)
            conf["archive_command"] = f"'test ! -f \"{a}/%f\" && cp %p \"{a}/.%f.tmp\" && mv \"{a}/.%f.tmp\" \"{a}/%f\"'"
        with open(self.pgdata / "postgresql.conf", "a") as f:
            f.write("".join(f"{k} = {v}\n" for k, v in conf.items()))
        return self

    def start(self) -> "Cluster":
        r = as_postgres([str(BINDIR / "pg_ctl"), "-D", str(self.pgdata), "-l", str(self.logfile), "-w", "-t", "60", "start"])
        assert r.returncode == 0, r.stdout + r.stderr + self.log()
        return self

    def stop(self, mode: str = "fast") -> None:
        as_postgres([str(BINDIR / "pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w", "-t", "60", "stop"])

    def log(self) -> str:
        try:
            return self.logfile.read_text()
        except OSError:
            return ""

    def connect(self, **kw):
        import psycopg

        return psycopg.connect(self.dsn, autocommit=True, **kw)

    def sql(self, query: str, params=None):
        with self.connect() as c:
            cur = c.execute(query, params)
            return cur.fetchall() if cur.description else None

    def cleanup(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.sock, ignore_errors=True)


def wait_until(fn, timeout: float = 30, step: float = 0.05):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = fn()
        if v:
            return v
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout}s")

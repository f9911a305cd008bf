"""``drill`` of a restored PostgreSQL cluster: start it privately, wait for recovery, check it, stop it.

The copy runs as the owner of its data directory on a free port, reachable only through a unix
socket in a private temporary directory (no TCP), with a trust-only pg_hba.conf there and archiving
off. ``pg_amcheck --all`` checks every database; exact row counts are taken of up to 100 tables per
database. The postmaster is started directly (argv, no shell) rather than through ``pg_ctl``,
which passes its arguments through ``/bin/sh``. The socket directory, the ACL entries that let
the owner reach the copy, and the server itself are taken through the drill's ``Held``: journaled
first, given back when the probe ends — or by ``snapagent cleanup`` after a kill.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from snapagent.errors import CommandFailed
from snapagent.held import Held
from snapagent.plugin.handover import blocked_dirs
from snapagent.plugin.quiescer import Locate, ProbeResult, RestoreContext

START_TIMEOUT = 600.0
MAX_TABLES = 100


def free_port() -> int:
    """Return a TCP port nothing listens on right now (names the socket file)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(text: str, n: int = 8) -> str:
    return "\n".join(text.strip().splitlines()[-n:])


class Cluster:
    """A restored cluster started for a drill; use as a context manager (stops it on exit)."""

    def __init__(self, record: dict[str, Any], pgdata: Path, extra_paths: list[Path], held: Held):
        self.record = record
        self.pgdata = pgdata
        self.held = held
        self.runner = held.runner
        major = int(record["server_version_num"]) // 10000
        self.bindir = Path(record.get("bindir") or f"/usr/lib/postgresql/{major}/bin")
        st = os.stat(pgdata)
        self.uid, self.gid = st.st_uid, st.st_gid
        self.user = record.get("bootstrap_superuser") or "postgres"
        self.port = free_port()
        self.sock = held.tempdir("snapagent-pgdrill-")
        self.paths = [pgdata, *extra_paths, self.sock]
        self.proc = None

    def _file(self, name: str, text: str) -> Path:
        p = self.sock / name
        p.write_text(text)
        os.chown(p, self.uid, self.gid)
        return p

    def argv(self) -> list[str]:
        hba = self._file("pg_hba.conf", "local all all trust\n")
        ident = self._file("pg_ident.conf", "")
        argv = ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--",
                str(self.bindir / "postgres"), "-D", str(self.pgdata),
                "-c", f"port={self.port}", "-c", "listen_addresses=", "-c", f"unix_socket_directories={self.sock}",
                "-c", f"hba_file={hba}", "-c", f"ident_file={ident}", "-c", "archive_mode=off",
                "-c", "logging_collector=off", "-c", "hot_standby=off", "-c", "log_min_messages=warning"]
        if not (self.pgdata / "postgresql.conf").exists():
            argv += ["-c", f"config_file={self._file('postgresql.conf', '')}"]
        return argv

    def __enter__(self) -> "Cluster":
        os.chown(self.sock, self.uid, self.gid)
        os.chmod(self.sock, 0o700)
        self.held.grant_traverse(blocked_dirs(self.paths, self.uid, self.gid), self.uid)
        # SIGINT: fast shutdown (SIGTERM would wait for clients)
        self.proc = self.held.start(self.argv(), marker=str(self.sock), stop_signal=signal.SIGINT, stop_timeout=60,
                                    stdout=subprocess.DEVNULL)
        return self

    def log(self) -> str:
        return self.proc.stderr_text() if self.proc else ""

    def connect(self, dbname: str = "template1"):
        import psycopg

        return psycopg.connect(host=str(self.sock), port=self.port, user=self.user, dbname=dbname,
                               autocommit=True, connect_timeout=5)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> float:
        """Wait until the copy accepts connections and is out of recovery; return the seconds taken.

        Raises CommandFailed (with the server log) when it exits or does not finish in time.
        """
        import psycopg

        t0 = time.monotonic()
        while True:
            if self.proc.proc.poll() is not None:
                raise CommandFailed(self.proc.argv, self.proc.proc.returncode, self.log(), "the restored server exited")
            try:
                with self.connect() as c:
                    if not c.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                        return time.monotonic() - t0
            except psycopg.OperationalError:
                pass
            if time.monotonic() - t0 > timeout:
                raise CommandFailed(self.proc.argv, None, self.log(), f"recovery did not complete in {timeout:g}s")
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self.held.release("process", str(self.sock))


def row_counts(cluster: Cluster) -> dict[str, int]:
    """Return {"db.schema.table": exact row count} for up to MAX_TABLES user tables per database."""
    from psycopg import sql

    counts: dict[str, int] = {}
    with cluster.connect() as c:
        dbs = [r[0] for r in c.execute("SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1")]
    for db in dbs:
        with cluster.connect(db) as c:
            tables = c.execute(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') "
                "AND n.nspname NOT LIKE 'pg_toast%%' ORDER BY 1, 2 LIMIT %s", (MAX_TABLES,)).fetchall()
            for schema, table in tables:
                q = sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(table))
                counts[f"{db}.{schema}.{table}"] = c.execute(q).fetchone()[0]
    return counts


def drill(record: dict[str, Any], locate: Locate, ctx: RestoreContext) -> list[ProbeResult]:
    """Start the restored cluster of ``record``, run pg_amcheck and count rows; return the probes."""
    runner = ctx.runner
    name = f"postgresql {record['data_directory']}"
    pgdata = locate(record["data_directory"])
    extra = [locate(p) for p in [record.get("pg_wal"), *record.get("tablespaces", {}).values()] if p]
    cluster = Cluster(record, pgdata, extra, ctx.held)
    probes: list[ProbeResult] = []
    try:
        with cluster:
            secs = cluster.wait_ready()
            with cluster.connect() as c:
                version = c.execute("SHOW server_version").fetchone()[0]
            probes.append(ProbeResult(f"{name} recovery", True, {"recovery_seconds": round(secs, 2), "server_version": version},
                                      f"started and recovered in {secs:.1f}s"))
            amcheck = runner.run([str(cluster.bindir / "pg_amcheck"), "--all", "--install-missing", "--no-password",
                                  "-h", str(cluster.sock), "-p", str(cluster.port), "-U", cluster.user],
                                 mutating=False, timeout=START_TIMEOUT, ok_codes=(0, 1, 2))
            ok = amcheck.returncode == 0
            probes.append(ProbeResult(f"{name} pg_amcheck", ok, {"pg_amcheck_exit": amcheck.returncode,
                                                                 "pg_amcheck_output": _tail(amcheck.stdout + amcheck.stderr, 20)},
                                      "pg_amcheck --all passed" if ok else "pg_amcheck found corruption"))
            counts = row_counts(cluster)
            probes.append(ProbeResult(f"{name} rows", True, {"rows": counts}, f"{len(counts)} table(s) counted"))
    except CommandFailed as e:
        probes.append(ProbeResult(f"{name} recovery", False, {"log": _tail(e.stderr, 15)}, str(e).splitlines()[0]))
    return probes

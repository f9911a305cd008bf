"""docs/databases.md "The DSN when snapagent runs as root", line by line against a real server.

A PostgreSQL 15 cluster with Debian's authentication (peer on the socket, scram-sha-256 on
127.0.0.1): the documented DSN as root fails with `Peer authentication failed for user
"postgres"`; each of the three documented fixes — a pg_ident map, TCP with a pgpass file, a role
named root — is applied with the doc's own lines and passes `config check --connect` (grants
included); the map's DSN then takes a backup.
"""

from __future__ import annotations

import re
import socket

import pytest

from tests.helpers import pg
from tests.helpers.cli import ROOT, snapagent, write_config
from tests.system.test_postgresql import (  # noqa: F401 - fixtures (btrfs_root: one the postgres user reaches)
    btrfs_root,
    clusters,
    job_toml,
    pg_base,
    pg_ok,
    workdir,
)

pytestmark = [pytest.mark.postgres, pytest.mark.btrfs, pytest.mark.root]

DEBIAN_HBA = ["local   all   postgres   peer", "local   all   all        peer",
              "host    all   all        127.0.0.1/32   scram-sha-256"]


def doc_block(name: str) -> str:
    """The fenced block after ``<!-- NAME -->`` in docs/databases.md."""
    text = (ROOT / "docs" / "databases.md").read_text()
    m = re.search(rf"<!-- {re.escape(name)} -->\n```\w*\n(.*?)```", text, re.S)
    assert m, f"docs/databases.md has no block {name}"
    return m.group(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def psql(c: pg.Cluster, sql: str) -> None:
    r = pg.as_postgres([str(pg.BINDIR / "psql"), "-h", str(c.sock), "-p", str(c.port), "-d", "postgres",
                        "-v", "ON_ERROR_STOP=1", "-c", sql])
    assert r.returncode == 0, r.stderr


def reload(c: pg.Cluster, hba: list[str], ident: str = "") -> None:
    """Write pg_hba.conf and pg_ident.conf and have the server read them (its log says so)."""
    before = c.log().count("reloading configuration files")
    (c.pgdata / "pg_hba.conf").write_text("\n".join(hba) + "\n")
    (c.pgdata / "pg_ident.conf").write_text(ident)
    r = pg.as_postgres([str(pg.BINDIR / "pg_ctl"), "-D", str(c.pgdata), "reload"])
    assert r.returncode == 0, r.stderr
    pg.wait_until(lambda: c.log().count("reloading configuration files") > before, timeout=10)


def test_the_documented_dsns_work_as_root(pg_ok, subvol, workdir, clusters):  # noqa: F811
    vol = subvol("pg dsn")
    c = pg.Cluster(pg.pg_dir(vol / "pgdata"))
    clusters.append(c)
    c.port = free_port()
    c.initdb(listen_addresses="'127.0.0.1'")
    (c.pgdata / "pg_hba.conf").write_text("\n".join(DEBIAN_HBA) + "\n")
    c.start()

    def with_place(text: str) -> str:
        return (text.strip().replace("/run/postgresql", str(c.sock)).replace("5432", str(c.port))
                .replace("/etc/snapagent/pgpass", str(workdir / "pgpass")))

    def connect_check(dsn: str):
        cfg = write_config(workdir, job_toml([vol], dsn=dsn))
        return snapagent("config", "check", "--connect", config=cfg), cfg

    # the problem: the recommended DSN, as root, against Debian's pg_hba.conf
    map_dsn = with_place(doc_block("dsn:map"))
    r, _ = connect_check(map_dsn)
    assert r.returncode == 1 and 'Peer authentication failed for user "postgres"' in r.stderr, r.stderr

    # 1. the pg_ident map: the doc's ident lines, its hba line in place of Debian's first one
    hba = [doc_block("dsn:hba-map").strip()] + DEBIAN_HBA[1:]
    reload(c, hba, doc_block("dsn:ident"))
    r, cfg = connect_check(map_dsn)
    assert r.returncode == 0 and "every job's preflight passed" in r.stdout, r.stdout + r.stderr
    r = snapagent("backup", "db", config=cfg)
    assert r.returncode == 0, r.stderr

    # 2. TCP with a pgpass file: the doc's role and grants, its hba line, pgpass line and DSN
    for stmt in filter(None, (s.strip() for s in doc_block("dsn:role").split(";"))):
        psql(c, stmt)
    psql(c, "ALTER ROLE snapagent PASSWORD 'test pw: 5$x'")  # \password, non-interactively
    hba = hba[:2] + [doc_block("dsn:hba-tcp").strip()]
    reload(c, hba, doc_block("dsn:ident"))
    passfile = workdir / "pgpass"
    passfile.write_text(with_place(doc_block("dsn:pgpass")).replace("the-password", r"test pw\: 5$x") + "\n")
    passfile.chmod(0o600)
    r, _ = connect_check(with_place(doc_block("dsn:tcp")))
    assert r.returncode == 0 and "every job's preflight passed" in r.stdout, r.stdout + r.stderr

    # 3. a role named root: peer maps root to it without a map
    psql(c, doc_block("dsn:root-role").strip().rstrip(";"))
    r, _ = connect_check(with_place(doc_block("dsn:root")))
    assert r.returncode == 0 and "every job's preflight passed" in r.stdout, r.stdout + r.stderr

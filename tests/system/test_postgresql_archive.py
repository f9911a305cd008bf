"""WAL archive hygiene against a real PostgreSQL 15 in backup-api mode, on real btrfs.

Several backups with WAL switched between them; retention keeps the newest two. The archive
must keep exactly what the kept backups need — every segment from the oldest kept backup's
``oldest_needed_walfile`` on, and every file a kept backup lists — and lose the rest of what the
agent can reason about: the same segments as ``pg_archivecleanup -n ARCHIVE SEGMENT`` (PostgreSQL's
own tool, the documented manual command) plus older ``.backup`` history files and compressed
copies; never a ``.history`` file, a foreign name, or a symlink's target. The oldest kept backup
still drills after the pruning.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest

from tests.helpers import pg
from tests.helpers.cli import ROOT, snapagent, write_config
from tests.system.test_postgresql import (  # noqa: F401 - fixtures
    backup,
    btrfs_root,
    clusters,
    job_toml,
    make_cluster,
    pg_base,
    pg_ok,
    workdir,
)

pytestmark = [pytest.mark.postgres, pytest.mark.btrfs, pytest.mark.root]


def cleanup_oracle(archive: Path, oldest: str) -> set[str]:
    """The file names ``pg_archivecleanup -n`` would remove before ``oldest``: the manual command
    of docs/databases.md as written, with the archive and the segment put in."""
    text = (ROOT / "docs" / "databases.md").read_text()
    line = re.search(r"<!-- wal:cleanup -->\n```sh\n(.*?)\n```", text).group(1)
    argv = [str(archive) if a == "/srv/pg-archive" else oldest if re.fullmatch(r"[0-9A-F]{24}", a) else a
            for a in shlex.split(line)]
    assert argv[0] == str(pg.BINDIR / "pg_archivecleanup") and "-n" in argv and str(archive) in argv
    r = pg.as_postgres(argv)
    assert r.returncode == 0, r.stderr
    return {Path(line).name for line in r.stdout.splitlines() if line}


def segments(archive: Path) -> set[str]:
    return {p.name for p in archive.iterdir()}


def config(where: Path, c, vol, archive, **extra) -> Path:
    text = job_toml([vol], dsn=c.dsn, mode="backup-api", wal_archive=archive, **extra)
    return write_config(where, text.replace("[[jobs.db.quiesce]]", "[jobs.db.retention]\nkeep_last = 2\n\n[[jobs.db.quiesce]]"))


def test_prune_removes_the_archived_wal_no_kept_backup_needs(pg_ok, subvol, workdir, clusters):  # noqa: F811
    vol = subvol("pg arch")
    archive = workdir / "wal archive"
    c = make_cluster(clusters, vol / "pgdata", archive=archive)
    c.sql("CREATE TABLE t (x int)")
    outside = workdir / "outside"
    outside.mkdir()
    (outside / "000000010000000000000000").write_bytes(b"not ours")
    os.symlink(outside / "000000010000000000000000", archive / "000000010000000000000000")
    (archive / "00000005.history").write_text("planted: a timeline history is always kept\n")
    (archive / "00000001000000000000000a").write_bytes(b"a foreign spelling")

    # three backups with the archive left alone (wal_prune = false), WAL switched between them
    cfg = config(workdir, c, vol, archive, wal_prune=False)
    made = []
    for i in range(3):
        c.sql("INSERT INTO t SELECT generate_series(1, 1000)")
        c.sql("SELECT pg_switch_wal()")
        made.append(backup(cfg))
    rec = [m["quiescers"][0] for m in made]
    for r in rec:
        assert r["oldest_needed_walfile"] == r["start_walfile"] == r["labelfile"].split("(file ")[1][:24]
        assert r["wal_archive"] == str(archive)
    ids = [b["id"] for b in json.loads(snapagent("--json", "list", "db", config=cfg, check=True).stdout)]
    assert sorted(ids) == sorted(m["id"] for m in made[1:])  # keep_last = 2 removed the first backup
    assert set(rec[0]["wal_files"]) <= segments(archive)  # ... but not its WAL
    first = min(n for n in segments(archive) if n.startswith("00000001") and n[8:] > "0" * 16)
    (archive / f"{first}.gz").write_bytes(b"a compressed copy")  # archive_command may compress

    cutoff = rec[1]["oldest_needed_walfile"]
    oracle = cleanup_oracle(archive, cutoff)
    assert oracle and all(n[8:] < cutoff[8:] for n in oracle)
    backup_files = {n for n in segments(archive) if n.endswith(".backup") and n[8:24] < cutoff[8:]}
    want = oracle | backup_files | {f"{first}.gz"}
    want -= {"000000010000000000000000"}  # pg_archivecleanup follows the symlink's name; the agent never touches it

    cfg = config(workdir, c, vol, archive)
    before = segments(archive)
    r = snapagent("prune", "db", "--dry-run", config=cfg, check=True)
    listed = {ln.strip() for ln in r.stdout.split("would remove", 1)[1].splitlines()[1:] if ln.startswith("  ")}
    assert listed == want, r.stdout
    assert f"keep from {cutoff} on (needed by backup {made[1]['id']})" in r.stdout
    assert segments(archive) == before

    r = snapagent("--json", "prune", "db", config=cfg, check=True)
    a = json.loads(r.stdout)[0]["archives"][0]
    assert set(a["removed"]) == want and a["kept_from"] == cutoff and a["bytes"] > 16 << 20
    assert segments(archive) == before - want
    for r_ in rec[1:]:  # never what a kept backup lists
        assert set(r_["wal_files"]) <= segments(archive)
    assert {"00000005.history", "00000001000000000000000a", "000000010000000000000000"} <= segments(archive)
    assert (outside / "000000010000000000000000").read_bytes() == b"not ours"

    # the next backup prunes by itself: backup 2 goes, and the WAL only it needed
    c.sql("SELECT pg_switch_wal()")
    r = snapagent("-v", "--json", "backup", "db", config=cfg, check=True)
    newest = json.loads(r.stdout)["quiescers"][0]
    assert f"archive {archive} (postgresql): removed" in r.stderr and "MiB, older than " + rec[2]["oldest_needed_walfile"] in r.stderr, r.stderr
    left = segments(archive)
    assert set(rec[2]["wal_files"]) | set(newest["wal_files"]) <= left
    ours = [n for n in left if n[:8] == "00000001" and len(n) == 24 and n != "000000010000000000000000"]
    assert min(ours) == rec[2]["oldest_needed_walfile"]

    # the oldest kept backup restores and recovers after the pruning
    d = snapagent("--json", "drill", made[2]["id"], config=cfg)
    report = json.loads(d.stdout)
    assert d.returncode == 0 and report["ok"], d.stdout + d.stderr
    rows = next(p for p in report["probes"] if p["name"].endswith("rows"))["rows"]
    assert rows["postgres.public.t"] == 3000

"""Retention on real btrfs through the real CLI: ``prune --dry-run`` removes nothing, ``prune``
removes exactly what the rules drop (directories gone, ``list`` agrees), a backup prunes after
itself, ``--json``; and a prune SIGKILLed in the middle leaves, after ``cleanup``, no half-deleted
backup listed."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from snapagent import manifest as M
from tests.helpers.cli import last_line, snapagent, toml_str, write_config
from tests.helpers.manifests import manifest, volume

pytestmark = [pytest.mark.root, pytest.mark.btrfs]


def app_job(vol: Path, retention: str = "") -> str:
    db = vol / "app.db"
    return (f'[jobs.app]\ndriver = "btrfs"\nvolumes = [{toml_str(vol)}]\ntarget = "local"\n'
            f'[[jobs.app.quiesce]]\ntype = "sqlite"\npath = {toml_str(db)}\n' + retention)


def listed(cfg: Path) -> list[str]:
    return [b["id"] for b in json.loads(snapagent("--json", "list", "app", config=cfg, check=True).stdout)]


def dirs(workdir: Path) -> list[str]:
    return sorted(p.name for p in (workdir / "backups" / "app").iterdir())


def test_prune_keeps_what_the_rules_keep(subvol, workdir):
    vol = subvol("prune")
    conn = sqlite3.connect(vol / "app.db")
    conn.execute("CREATE TABLE t (a)")
    conn.commit()
    conn.close()
    plain = write_config(workdir, app_job(vol))
    made = [last_line(snapagent("backup", "app", config=plain, check=True)) for _ in range(4)]
    assert len(set(made)) == 4 and listed(plain) == made

    r = snapagent("prune", "app", config=plain, check=True)  # no rules: nothing is removed
    assert "no retention rules: nothing is removed" in r.stdout and listed(plain) == made

    prom = workdir / "snapagent.prom"
    cfg = write_config(workdir, app_job(vol, "[jobs.app.retention]\nkeep_last = 2\n"),
                       agent=f"metrics_file = {toml_str(prom)}")
    r = snapagent("prune", "app", "--dry-run", config=cfg, check=True)
    assert "would remove 2 backup(s):" in r.stdout and f"{made[3]}" in r.stdout
    assert listed(cfg) == made and dirs(workdir) == made
    plan = json.loads(snapagent("--json", "prune", "--dry-run", config=cfg, check=True).stdout)
    assert plan == [{"job": "app", "target": "local", "keep": [made[3], made[2]], "remove": [made[1], made[0]],
                     "reasons": {made[3]: ["last"], made[2]: ["last"]}, "damaged": [], "removed": [], "failed": []}]

    done = json.loads(snapagent("prune", "app", "--json", config=cfg, check=True).stdout)
    assert done[0]["removed"] == [made[1], made[0]]
    assert listed(cfg) == made[2:] and dirs(workdir) == made[2:]
    # the exporter's view follows a prune by hand
    assert 'snapagent_backups{backup_job="app",target="local"} 2.0' in prom.read_text()

    r = snapagent("-v", "backup", "app", config=cfg, check=True)  # prunes after itself, under its lock
    new = last_line(r)
    assert "prune: removed 1 backup(s)" in r.stderr and "warning" not in r.stderr
    assert listed(cfg) == [made[3], new] and dirs(workdir) == [made[3], new]
    assert snapagent("verify", new, config=cfg).returncode == 0


def test_a_failing_prune_after_a_backup_is_a_warning(subvol, workdir):
    vol = subvol("prune fails")
    sqlite3.connect(vol / "app.db").close()
    cfg = write_config(workdir, app_job(vol, "[jobs.app.retention]\nkeep_last = 1\n"))
    first = last_line(snapagent("backup", "app", config=cfg, check=True))
    jobdir = workdir / "backups" / "app"
    subprocess.run(["mount", "--bind", str(jobdir / first), str(jobdir / first)], check=True)  # EBUSY on rename
    try:
        r = snapagent("backup", "app", config=cfg)
        assert r.returncode == 0, r.stderr
        assert "warning: prune: could not remove" in r.stderr and first in r.stderr
        assert listed(cfg) == [first, last_line(r)]
    finally:
        subprocess.run(["umount", str(jobdir / first)], check=True)


def forge(workdir: Path, n: int, files: int) -> list[str]:
    """Write ``n`` forged-but-valid backups of job app (``files`` artifacts each); return their ids."""
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    out = []
    for i in range(n):
        created = t0 + timedelta(hours=i)
        bid = f"app-{created:%Y%m%dT%H%M%SZ}"
        vols = [volume(volume=f"/srv/v{k}", label=f"v{k}") for k in range(files)]
        d = workdir / "backups" / "app" / bid
        d.mkdir(parents=True)
        for v in vols:
            (d / v.artifact).write_bytes(b"x")
        (d / "manifest.json").write_bytes(M.dumps(manifest(id=bid, created=created, completed=created, volumes=vols)))
        out.append(bid)
    return out


def complete(workdir: Path, bid: str) -> bool:
    d = workdir / "backups" / "app" / bid
    m = M.loads((d / "manifest.json").read_bytes())
    return all((d / a.name).is_file() for a in m.artifacts)


def test_a_prune_killed_midway_leaves_no_half_deleted_backup(workdir):
    cfg = write_config(workdir, '[jobs.app]\ndriver = "btrfs"\nvolumes = ["/srv/v0"]\ntarget = "local"\n'
                                '[jobs.app.retention]\nkeep_last = 10\n')
    made = forge(workdir, 150, 20)
    jobdir = workdir / "backups" / "app"
    p = subprocess.Popen([sys.executable, "-m", "snapagent", "-c", str(cfg), "prune", "app"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any(n.startswith(".deleting-") for n in os.listdir(jobdir)) and len(os.listdir(jobdir)) == 150:
        assert time.monotonic() < deadline and p.poll() is None, "prune never started removing"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    left = listed(cfg)
    assert 10 < len(left) < 150, "the kill did not land in the middle of the prune"
    assert all(complete(workdir, b) for b in left)  # whatever is listed is whole, before cleanup too
    journal = list((workdir / "state" / "journal" / "app").glob("prune-*.jsonl"))
    assert len(journal) == 1
    r = snapagent("cleanup", config=cfg, check=True)
    assert "removing backup" in r.stdout or "left intact" in r.stdout
    assert not any(n.startswith(".") for n in os.listdir(jobdir))
    assert listed(cfg) == left and all(complete(workdir, b) for b in left)
    assert not list((workdir / "state" / "journal" / "app").glob("*.jsonl"))
    snapagent("prune", "app", config=cfg, check=True)
    assert listed(cfg) == made[-10:] and dirs(workdir) == made[-10:]

"""Incremental chains on real btrfs: a full and three incrementals (``btrfs send -p``) of a
subvolume whose files are created, modified, deleted and renamed between backups while a live
SQLite database is written (sqlite quiescer). The newest and a middle backup are restored through
their chains and compared with what the volume held at that backup (the backup's own read-only
snapshot, hashed right after it): file tree, types, modes, symlink targets and content hashes.
A drill replays the chain on btrfs scratch space and leaves nothing behind. ``full_every = 2``
starts a new chain; a missing or corrupt link makes verify, restore and drill fail in one line
naming the backup and the parent it needs; a kept parent deleted by hand makes the next backup a
full with a warning."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.helpers import snapplaces
from tests.helpers.cli import log_lines, snapagent, toml_str, write_config
from tests.helpers.trees import tree
from tests.system.test_btrfs_sqlite import Writer

pytestmark = [pytest.mark.root, pytest.mark.btrfs]


def job(vol: Path, db: Path, extra: str = "") -> str:
    return (f'[jobs.app]\ndriver = "btrfs"\nvolumes = [{toml_str(vol)}]\ntarget = "local"\nexport = "send"\n'
            f'mode = "incremental"\n{extra}\n[[jobs.app.quiesce]]\ntype = "sqlite"\npath = {toml_str(db)}\n')


def backup(cfg: Path) -> tuple[dict, dict]:
    """Take a backup; return (its manifest, the tree of the volume as the backup holds it)."""
    r = snapagent("--json", "backup", "app", config=cfg, check=True)
    m = json.loads(r.stdout)
    snap = Path(m["volumes"][0]["snapshot"])
    assert snap.is_dir(), "the backup's snapshot was not kept as the next parent"
    return m, tree(snap)


def restore(cfg: Path, backup_id: str, dest: Path) -> Path:
    """Restore ``backup_id`` into ``dest``; return the restored volume (its only entry)."""
    summary = json.loads(snapagent("--json", "restore", backup_id, "--to", str(dest), config=cfg, check=True).stdout)
    restored = Path(summary["volumes"][0]["path"])
    assert list(dest.iterdir()) == [restored], "received intermediate links were left behind"
    return restored


def one_error(r: subprocess.CompletedProcess) -> str:
    errors = log_lines(r.stderr, "error")
    assert r.returncode == 1 and len(errors) == 1, (r.returncode, r.stderr)
    return errors[0].group()


@pytest.fixture
def chain_env(subvol, btrfs_root, workdir):
    vol = subvol("app chain")
    (vol / "keep.txt").write_text("unchanged\n")
    (vol / "edit.txt").write_text("version 1\n")
    (vol / "gone.txt").write_text("to be deleted\n")
    (vol / "old name.txt").write_text("to be renamed\n")
    (vol / "dir").mkdir()
    (vol / "dir" / "big.bin").write_bytes(os.urandom(2 << 20))
    (vol / "link").symlink_to("keep.txt")
    db = vol / "app.db"
    w = Writer(db, workdir / "acks.txt")
    w.wait_for(100)
    dests = []

    def dest() -> Path:
        d = btrfs_root / f"restore-{uuid.uuid4().hex[:8]}"
        dests.append(d)
        return d

    yield vol, db, w, dest
    w.stop()
    for d in dests:
        for sv in sorted(d.rglob("*"), key=lambda p: -len(p.parts)) if d.exists() else []:
            if sv.is_dir() and os.stat(sv).st_ino == 256:
                subprocess.run(["btrfs", "subvolume", "delete", str(sv)], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def test_chain_restores_byte_identical_and_broken_links_are_named(chain_env, workdir, btrfs_root):
    vol, db, writer, dest = chain_env
    scratch = btrfs_root / f"drill-{uuid.uuid4().hex[:8]}"  # a drill of send backups receives on btrfs
    scratch.mkdir()
    cfg = write_config(workdir, job(vol, db), agent=f"scratch_dir = {toml_str(scratch)}")
    ms, states = [], []

    def take():
        n = len(writer.acks())
        writer.wait_for(n + 30)  # the database changes between backups, as it does in production
        m, t = backup(cfg)
        ms.append(m)
        states.append(t)
        return m

    m1 = take()
    assert m1["volumes"][0]["parent"] is None and not m1["volumes"][0]["incremental"]
    (vol / "edit.txt").write_text("version 2, longer than before\n")
    (vol / "gone.txt").unlink()
    os.rename(vol / "old name.txt", vol / "new name.txt")
    (vol / "new.txt").write_text("new in 2\n")
    with open(vol / "dir" / "big.bin", "r+b") as f:  # rewrite 4 KiB in the middle of a big file
        f.seek(1 << 20)
        f.write(os.urandom(4096))
    m2 = take()
    (vol / "dir").rename(vol / "moved dir")
    (vol / "edit.txt").write_text("v3\n")  # shorter: truncation
    os.chmod(vol / "keep.txt", 0o600)
    (vol / "link").unlink()
    (vol / "link").symlink_to("new.txt")
    m3 = take()
    (vol / "new.txt").unlink()
    (vol / "moved dir" / "sub").mkdir()
    (vol / "moved dir" / "sub" / "deep.txt").write_text("deep\n")
    m4 = take()
    for prev, m in zip(ms, ms[1:]):
        v = m["volumes"][0]
        assert v["incremental"] and v["parent"] == prev["id"] and v["kept"]
        assert v["info"]["parent_snapshot"] == prev["volumes"][0]["snapshot"]
        assert not Path(prev["volumes"][0]["snapshot"]).exists(), "the older parent was not released"
    assert sorted(p.name for p in snapplaces.snapdir(vol).iterdir()) == [Path(m4["volumes"][0]["snapshot"]).name]
    assert m4["artifacts"][0]["raw_size"] < m1["artifacts"][0]["raw_size"] / 4  # incrementals are small

    newest = restore(cfg, m4["id"], dest())
    assert tree(newest) == states[3]
    middle = restore(cfg, m2["id"], dest())
    assert tree(middle) == states[1]
    assert (middle / "new name.txt").read_text() == "to be renamed\n" and not (middle / "gone.txt").exists()
    conn = sqlite3.connect(newest / "app.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert conn.execute("SELECT count(*) FROM t").fetchone()[0] > 100
    conn.close()

    d = json.loads(snapagent("--json", "drill", m4["id"], config=cfg, check=True).stdout)
    assert d["ok"] and d["probes"][0]["integrity_check"] == ["ok"]
    assert list(scratch.iterdir()) == [], "the drill left received links or its copy behind"

    r = snapagent("verify", m4["id"], config=cfg, check=True)
    assert r.stdout.splitlines()[-1] == f"backup {m4['id']} with the 3 earlier backup(s) of its chain: verified"
    assert all(f"{m['id']}/" in r.stdout for m in ms[:3])

    # full_every = 2: the chain of m4 holds 3 incrementals, so the next is a full, then one incremental
    cfg = write_config(workdir, job(vol, db, "full_every = 2"), agent=f"scratch_dir = {toml_str(scratch)}")
    m5, state5 = backup(cfg)
    m6, state6 = backup(cfg)
    assert m5["volumes"][0]["parent"] is None and not m5["volumes"][0]["incremental"]
    assert m6["volumes"][0]["parent"] == m5["id"]
    assert not Path(m4["volumes"][0]["snapshot"]).exists() and not Path(m5["volumes"][0]["snapshot"]).exists()
    assert tree(restore(cfg, m6["id"], dest())) == state6

    # a corrupt link: every command names the backup and the damaged parent, one line, exit 1
    art5 = workdir / "backups" / "app" / m5["id"] / m5["artifacts"][0]["name"]
    data = bytearray(art5.read_bytes())
    data[len(data) // 2] ^= 0xFF
    art5.write_bytes(bytes(data))
    r = snapagent("verify", m6["id"], config=cfg)
    assert r.returncode == 1 and f"backup {m6['id']} is incremental on {m5['id']}, whose artifact" in \
        r.stdout.splitlines()[-1]
    for cmd in (["restore", m6["id"], "--to", str(dest())], ["drill", m6["id"]]):
        err = one_error(snapagent(*cmd, config=cfg))
        assert f"backup {m6['id']} is incremental on {m5['id']}, whose artifact" in err, err

    # a middle artifact deleted, then a middle backup gone
    art2 = workdir / "backups" / "app" / m2["id"] / m2["artifacts"][0]["name"]
    art2.unlink()
    r = snapagent("verify", m4["id"], config=cfg)
    assert r.returncode == 1 and f"backup {m3['id']} is incremental on {m2['id']}, whose artifact " \
        f"{m2['artifacts'][0]['name']} of {m2['id']} is missing" in r.stdout.splitlines()[-1]
    err = one_error(snapagent("restore", m4["id"], "--to", str(dest()), config=cfg))
    assert f"backup {m3['id']} is incremental on {m2['id']}, whose artifact" in err
    shutil.rmtree(workdir / "backups" / "app" / m3["id"])
    expected = f"backup {m4['id']} is incremental on {m3['id']}, which is missing from every target"
    for cmd in (["verify", m4["id"]], ["restore", m4["id"], "--to", str(dest())], ["drill", m4["id"]]):
        assert expected in one_error(snapagent(*cmd, config=cfg))
    assert tree(restore(cfg, m1["id"], dest())) == states[0]  # what is left of the chain still restores

    # the kept parent deleted by hand: the next backup is a full, with a warning saying why
    base6 = m6["volumes"][0]["snapshot"]
    subprocess.run(["btrfs", "subvolume", "delete", base6], check=True, capture_output=True)
    r = snapagent("--json", "backup", "app", config=cfg, check=True)
    m7 = json.loads(r.stdout)
    assert m7["volumes"][0]["parent"] is None and m7["volumes"][0]["kept"]
    assert f"snapagent: warning: {vol}: exported in full, not incrementally on {m6['id']}: its parent {base6} " \
        "cannot be used: it no longer exists" in r.stderr

    # back to mode = "full": nothing is kept, and the last parent is deleted
    cfg = write_config(workdir, job(vol, db).replace('mode = "incremental"', 'mode = "full"'))
    m8 = json.loads(snapagent("--json", "backup", "app", config=cfg, check=True).stdout)
    assert not m8["volumes"][0]["kept"] and not m8["volumes"][0]["incremental"]
    assert list(snapplaces.snapdir(vol).iterdir()) == []


def test_retention_keeps_the_chain_a_kept_backup_needs_and_prunes_a_finished_one(chain_env, workdir):
    """``keep_last = 1`` with incremental chains: while the newest backup is an incremental, every
    link it needs is kept (rule ``chain``); once ``full_every`` starts a new chain, the old chain
    is removed — with the read-only snapshots it kept — and the new full restores."""
    vol, db, writer, dest = chain_env
    cfg = write_config(workdir, job(vol, db, "full_every = 2\n[jobs.app.retention]\nkeep_last = 1"))
    snapdir = snapplaces.snapdir(vol)

    def kept_snapshots() -> set[str]:
        return {p.name for p in snapdir.iterdir()} if snapdir.is_dir() else set()

    ids = []
    for i in range(3):  # a full and two incrementals: the post-backup prune must keep all three
        (vol / f"file-{i}.txt").write_text(f"change {i}\n")
        ids.append(backup(cfg)[0]["id"])
        listed = [b["id"] for b in json.loads(snapagent("--json", "list", "app", config=cfg, check=True).stdout)]
        assert listed == ids, f"prune broke a chain after backup {i + 1}: {listed}"
    dry = json.loads(snapagent("--json", "prune", "app", "--dry-run", config=cfg, check=True).stdout)
    assert dry[0]["remove"] == [] and sorted(dry[0]["keep"]) == sorted(ids)
    assert "chain" in dry[0]["reasons"][ids[0]] and "last" in dry[0]["reasons"][ids[2]]
    assert len(kept_snapshots()) == 1, kept_snapshots()  # only the newest is kept as the next parent

    (vol / "file-3.txt").write_text("a new chain\n")
    m4, state4 = backup(cfg)  # full_every = 2: a new full; the post-backup prune drops the old chain
    assert not m4["volumes"][0]["incremental"]
    listed = [b["id"] for b in json.loads(snapagent("--json", "list", "app", config=cfg, check=True).stdout)]
    assert listed == [m4["id"]]
    assert kept_snapshots() == {Path(m4["volumes"][0]["snapshot"]).name}
    assert sorted(p.name for p in (workdir / "backups" / "app").iterdir()) == [m4["id"]]
    assert tree(restore(cfg, m4["id"], dest())) == state4

"""Snapshots never inside the data they protect (issue 12), on real btrfs: a plain subvolume
(snapshots next to it) and a subvolume mounted with ``subvol=`` as its own mount root (snapshots in
the filesystem's top-level subvolume, mounted privately for the run). Through backup, incremental
chains, verify, restore, drill, the post-backup prune and a SIGKILL + ``cleanup``, a walk of the volume finds
nothing of snapagent's, and no private mount is left. A chain kept under the old default (inside
the volume) is continued and released by the next run, which removes the old directory. A
configured ``snapshot_dir`` inside a volume or a database's directory is refused with exit 2,
naming the key and a better place."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from snapagent import manifest
from snapagent.util import mountinfo
from tests.helpers import snapplaces
from tests.helpers.cli import snapagent, toml_str, write_config
from tests.helpers.wrappers import slow_tool

pytestmark = [pytest.mark.root, pytest.mark.btrfs]
TOP_MOUNTS = Path("/run/snapagent/btrfs")


def private_mounts() -> list[str]:
    return [e.mount_point for e in mountinfo.read() if e.mount_point.startswith(str(TOP_MOUNTS) + "/")]


@contextlib.contextmanager
def mounted_subvolume(vol: Path, btrfs_root: Path, at: Path):
    """Mount subvolume ``vol`` with ``subvol=`` at ``at`` (a mount root whose parent is not btrfs)."""
    src = mountinfo.mounted_at(btrfs_root).source
    at.mkdir()
    subprocess.run(["mount", "-t", "btrfs", "-o", f"subvol={vol.name}", src, str(at)], check=True, capture_output=True)
    try:
        yield at
    finally:
        subprocess.run(["umount", str(at)], capture_output=True)


@pytest.fixture(params=["plain", "mount-root"])
def volume(request, subvol, btrfs_root, tmp_path):
    """Yield (volume, where its snapshots are): a plain subvolume, or one mounted at its own mount
    point with ``subvol=`` (its snapshots are in the top-level subvolume: btrfs_root)."""
    vol = subvol("app")
    if request.param == "plain":
        yield vol, snapplaces.snapdir(vol)
        return
    with mounted_subvolume(vol, btrfs_root, tmp_path / "pgdata") as mnt:
        yield mnt, btrfs_root / snapplaces.DIRNAME


def job(vol: Path, extra: str = "", options: str = "") -> str:
    return (f'[jobs.app]\ndriver = "btrfs"\nvolumes = [{toml_str(vol)}]\ntarget = "local"\nexport = "send"\n'
            f'mode = "incremental"\n{extra}\n[[jobs.app.quiesce]]\ntype = "sqlite"\npath = {toml_str(vol / "app.db")}\n'
            + (f"[jobs.app.options]\n{options}\n" if options else ""))


def make_db(vol: Path, rows: int = 3) -> None:
    with sqlite3.connect(vol / "app.db") as c:
        c.execute("CREATE TABLE IF NOT EXISTS t (a)")
        c.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(rows)])
    c.close()


def clean(vol: Path) -> None:
    assert snapplaces.ours_inside(vol) == [], "snapagent left something inside the volume"
    assert private_mounts() == [], "a private top-level mount was left"


def run(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    return snapagent(*args, config=cfg, check=True)


def test_nothing_inside_the_volume_through_the_lifecycle(volume, workdir, btrfs_root):
    vol, place = volume
    make_db(vol)
    (vol / "data.txt").write_text("one\n")
    scratch = btrfs_root / f"drill-{uuid.uuid4().hex[:8]}"  # a drill of send backups receives on btrfs
    scratch.mkdir()
    cfg = write_config(workdir, job(vol, 'full_every = 1\n[jobs.app.retention]\nkeep_last = 1'),
                       agent=f"scratch_dir = {toml_str(scratch)}")
    ids = []
    for i in range(3):  # a full, an incremental on it, a new full: the post-backup prune drops the first chain
        (vol / "data.txt").write_text(f"change {i}\n")
        m = json.loads(run(cfg, "--json", "backup", "app").stdout)
        ids.append(m["id"])
        assert Path(m["volumes"][0]["snapshot"]).name in {p.name for p in place.iterdir()}, "not kept in its place"
        clean(vol)
    assert m["volumes"][0]["incremental"] is False
    kept = sorted(p.name for p in place.iterdir() if p.name.startswith("snapagent-app-"))
    assert kept == [Path(m["volumes"][0]["snapshot"]).name], "the pruned chain's kept snapshots were not released"
    run(cfg, "verify", ids[2])
    dest = btrfs_root / f"restore-{uuid.uuid4().hex[:8]}"
    run(cfg, "restore", ids[2], "--to", str(dest))
    clean(vol)
    run(cfg, "drill", ids[2])
    clean(vol)
    assert list(scratch.iterdir()) == []
    subprocess.run(["btrfs", "subvolume", "delete", "-R", "--", *map(str, dest.iterdir())], capture_output=True)


def kill_during_export(vol: Path, place: Path, workdir: Path) -> tuple[Path, list[str]]:
    """SIGKILL a backup of ``vol`` while it exports; return (its config, the snapshots in ``place``)."""
    make_db(vol)
    marker = workdir / "send-started"
    send = slow_tool(workdir / "btrfs", "btrfs", marker, 15, when="send")
    cfg = write_config(workdir, job(vol), agent=f"[agent.tools]\nbtrfs = {toml_str(send)}\n")
    agent = subprocess.Popen([sys.executable, "-m", "snapagent", "-c", str(cfg), "backup", "app"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < end and agent.poll() is None:
            time.sleep(0.05)
        assert marker.exists(), agent.communicate()
        left = [p.name for p in place.iterdir()]
        assert left, "the killed run had no snapshot yet"
        os.kill(agent.pid, signal.SIGKILL)
    finally:
        agent.wait(30)
    assert snapplaces.ours_inside(vol) == []  # the killed run's snapshot is outside the volume, even before cleanup
    return cfg, left


def test_sigkill_and_cleanup_leave_nothing_inside(volume, workdir):
    vol, place = volume
    cfg, left = kill_during_export(vol, place, workdir)
    run(cfg, "cleanup")
    clean(vol)
    assert not set(left) & {p.name for p in place.iterdir()}, "cleanup did not delete the killed run's snapshot"


def test_cleanup_after_a_reboot_finds_the_snapshot_in_the_top_level(subvol, btrfs_root, tmp_path, workdir):
    """The private top-level mount is gone after a reboot: cleanup mounts it again to delete."""
    place = btrfs_root / snapplaces.DIRNAME
    with mounted_subvolume(subvol("reboot"), btrfs_root, tmp_path / "pgdata") as vol:
        cfg, left = kill_during_export(vol, place, workdir)
        [top] = private_mounts()
        subprocess.run(["umount", top], check=True)  # what a reboot does to it
        r = run(cfg, "cleanup")
        assert "in the top-level subvolume" in r.stdout + r.stderr, r
        clean(vol)
        assert not set(left) & {p.name for p in place.iterdir()}, "cleanup did not delete the killed run's snapshot"


def test_a_chain_kept_under_the_old_default_is_continued_and_released(subvol, workdir):
    vol = subvol("upgrade")
    make_db(vol)
    cfg = write_config(workdir, job(vol))
    first = json.loads(run(cfg, "--json", "backup", "app").stdout)
    # as the previous version left it: the kept parent inside the volume, the manifest naming it there
    new_place = Path(first["volumes"][0]["snapshot"])
    old = vol / snapplaces.DIRNAME / new_place.name
    old.parent.mkdir(mode=0o700)
    # a rename keeps the subvolume and its UUID; a read-only one cannot move (its ".." changes)
    subprocess.run(["btrfs", "property", "set", "-ts", str(new_place), "ro", "false"], check=True, capture_output=True)
    new_place.rename(old)
    subprocess.run(["btrfs", "property", "set", "-ts", str(old), "ro", "true"], check=True, capture_output=True)
    mpath = workdir / "backups" / "app" / first["id"] / "manifest.json"
    m = manifest.loads(mpath.read_bytes())
    m = m.model_copy(update={"volumes": [m.volumes[0].model_copy(update={"snapshot": str(old)})]})
    mpath.write_bytes(manifest.dumps(m))
    assert snapplaces.ours_inside(vol) != []
    second = json.loads(run(cfg, "--json", "backup", "app").stdout)
    assert second["volumes"][0]["incremental"] is True, "the old parent was not used"
    assert not old.exists() and snapplaces.ours_inside(vol) == [], "the old place was not released and removed"


def test_snapshot_dir_inside_the_data_is_refused(subvol, workdir, tmp_path):
    vol = subvol("refused")
    make_db(vol)
    for value, better in [(str(vol / "snaps"), str(vol.parent / "snaps")), (".snapagent-snapshots", None)]:
        cfg = write_config(workdir, job(vol, options=f"snapshot_dir = {toml_str(value)}"))
        r = snapagent("backup", "app", config=cfg)  # config check says the same: tests/configs/invalid/btrfs-*
        assert r.returncode == 2 and "jobs.app.options.snapshot_dir" in r.stderr, r.stderr
        assert better is None or f"e.g. {better}" in r.stderr, r.stderr
    # through a symlink: config check cannot see it, the backup's preflight does (nothing taken)
    link = tmp_path / "link"
    link.symlink_to(vol)
    cfg = write_config(workdir, job(vol, options=f"snapshot_dir = {toml_str(link / 'snaps')}"))
    assert snapagent("config", "check", config=cfg, in_process=True).returncode == 0
    r = snapagent("backup", "app", config=cfg)
    assert r.returncode == 2 and "jobs.app.options.snapshot_dir" in r.stderr and "inside volume" in r.stderr, r.stderr
    assert snapplaces.ours_inside(vol) == [] and not (workdir / "backups").exists()

"""Restore checks DEST before it reads any artifact, and a restore that fails part-way removes
what it wrote (or says what is left where), on real btrfs and real small filesystems.

The refusals are proven to come before any artifact is read with a backup whose artifact is
corrupt: reading it would fail verification, so a DEST refusal in its place shows nothing was read.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers.cli import last_line, snapagent, toml_str, write_config
from tests.helpers.wrappers import failing_tool
from tests.system.test_lifecycle import app_volume, job, journals, with_tool

pytestmark = [pytest.mark.root, pytest.mark.btrfs]


@contextlib.contextmanager
def tmpfs(at: Path, size: str, ro: bool = False) -> Iterator[Path]:
    """Mount a tmpfs of ``size`` at ``at`` (created) for the block; yield ``at``."""
    at.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700{',ro' if ro else ''}", "tmpfs", str(at)],
                   check=True)
    try:
        yield at
    finally:
        subprocess.run(["umount", "-l", str(at)], check=False)


@contextlib.contextmanager
def small_btrfs(base: Path, size_mb: int) -> Iterator[Path]:
    """A btrfs of ``size_mb`` MiB (mixed data and metadata, so it can be that small) on a loop
    device, mounted at ``base/mnt`` for the block."""
    img, mnt = base / "small-btrfs.img", base / "mnt"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(size_mb << 20)
    subprocess.run(["mkfs.btrfs", "-q", "--mixed", str(img)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        img.unlink(missing_ok=True)


def corrupt(workdir: Path, bid: str) -> None:
    """Flip one byte of the backup's volume artifact: any read of it fails verification."""
    art = next((workdir / "backups" / "app" / bid).glob("00-*"))
    data = bytearray(art.read_bytes())
    data[100] ^= 1
    art.write_bytes(bytes(data))


def backed_up(subvol, workdir: Path, big: int = 0) -> tuple[Path, str]:
    """Back up a SQLite app volume (``big`` bytes of noise beside it); return (config, backup id)."""
    vol, db = app_volume(subvol, big=big)
    cfg = write_config(workdir, job(vol, db))
    return cfg, last_line(snapagent("backup", "app", config=cfg, check=True))


def refused(cfg: Path, *args: str) -> str:
    r = snapagent(*args, config=cfg, in_process=True)
    assert r.returncode == 1, (args, r.returncode, r.stderr)
    assert "verif" not in r.stderr.lower() and "Traceback" not in r.stderr, r.stderr  # no artifact was read
    return r.stderr


def test_every_dest_refusal_comes_before_any_artifact_is_read(subvol, workdir, btrfs_root):
    cfg, bid = backed_up(subvol, workdir, big=2 << 20)
    corrupt(workdir, bid)
    # the control: a good DEST gets as far as reading, which fails verification
    r = snapagent("restore", bid, "--to", str(workdir / "fine"), config=cfg, in_process=True)
    assert r.returncode == 1 and "00-" in r.stderr and not (workdir / "fine").exists(), r.stderr

    (workdir / "a file").write_text("x")
    assert "exists and is not a directory" in refused(cfg, "restore", bid, "--to", str(workdir / "a file"))
    (workdir / "victim").mkdir()
    (workdir / "link").symlink_to(workdir / "victim")
    assert "is a symlink" in refused(cfg, "restore", bid, "--to", str(workdir / "link"))
    (workdir / "victim" / "keep").write_text("x")
    err = refused(cfg, "restore", bid, "--to", str(workdir / "victim"))
    assert f"--to {workdir / 'victim'}: is not empty; use --force" in err, err
    missing = workdir / "no such" / "dest"
    err = refused(cfg, "restore", bid, "--to", str(missing))
    assert f"its parent {missing.parent} does not exist" in err and f"mkdir -p -- '{missing.parent}'" in err and not missing.parent.exists()
    immutable = btrfs_root / f"immutable-{workdir.name}"  # on btrfs: chattr works there
    immutable.mkdir()
    subprocess.run(["chattr", "+i", str(immutable)], check=True)
    try:
        err = refused(cfg, "restore", bid, "--to", str(immutable / "dest"))
        assert f"{immutable} is not writable for uid 0 (its permissions, ACLs or an immutable" in err, err
    finally:
        subprocess.run(["chattr", "-i", str(immutable)], check=True)
        immutable.rmdir()
    with tmpfs(workdir / "ro", "1m", ro=True) as ro:
        err = refused(cfg, "restore", bid, "--to", str(ro / "dest"))
        assert f"--to {ro / 'dest'}: {ro} is on a read-only filesystem (mounted at {ro})" in err, err
        # drill checks its scratch space the same way
        agent = f"scratch_dir = {toml_str(ro)}\n"
        drill_cfg = cfg.with_name("drill.toml")
        drill_cfg.write_text(cfg.read_text().replace("[agent]\n", f"[agent]\n{agent}", 1))
        err = refused(drill_cfg, "drill", bid)
        assert f"the drill's scratch copy (agent.scratch_dir) {ro}/{bid}." in err, err
        assert f"{ro} is on a read-only filesystem" in err, err
    with tmpfs(workdir / "mnt", "1m") as mnt:
        (mnt / "old").write_text("x")
        err = refused(cfg, "restore", bid, "--to", str(mnt), "--force")
        assert f"--to {mnt}: is a mount point, which --force cannot move aside" in err, err
        (mnt / "old").unlink()
        err = refused(cfg, "restore", bid, "--to", str(mnt / "dest"))
        assert f"--to {mnt / 'dest'}: the restore needs about 2.1 MiB" in err and "MiB free" in err, err
        assert "--no-space-check" in err
    assert sorted(p.name for p in workdir.iterdir() if "pre-restore" in p.name) == []
    assert list((workdir / "victim").iterdir()) == [workdir / "victim" / "keep"] and journals(workdir) == []


def test_a_restore_that_fills_the_disk_removes_what_it_wrote(subvol, workdir):
    cfg, bid = backed_up(subvol, workdir, big=6 << 20)
    with tmpfs(workdir / "small", "4m") as small:
        dest = small / "dest"
        r = snapagent("restore", bid, "--to", str(dest), "--no-space-check", config=cfg)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert f"restore into {dest} ran out of space (tar: no space left on device): " \
               "4.0 MiB was free when it started (the space check was skipped)" in r.stderr, r.stderr
        assert f"restore failed part-way: removed what it wrote to {dest}\n" in r.stderr, r.stderr
        assert list(small.iterdir()) == [] and journals(workdir) == []
        # --force: the previous content comes back
        dest.mkdir()
        (dest / "old.txt").write_text("what was there before\n")
        r = snapagent("restore", bid, "--to", str(dest), "--force", "--no-space-check", config=cfg)
        assert r.returncode == 1 and "ran out of space" in r.stderr, r.stderr
        assert "its previous content is back in place (from " in r.stderr, r.stderr
        assert [p.name for p in small.iterdir()] == ["dest"] and [p.name for p in dest.iterdir()] == ["old.txt"]
        assert journals(workdir) == []


def test_a_failing_tar_puts_the_forced_content_back(subvol, workdir):
    cfg, bid = backed_up(subvol, workdir)
    switch = workdir / "fail"
    switch.touch()
    bad = with_tool(cfg, "tar", failing_tool(workdir / "failing-tar", "tar", ["--extract"], switch))
    dest = workdir / "dest"
    dest.mkdir()
    (dest / "old.txt").write_text("what was there before\n")
    r = snapagent("restore", bid, "--to", str(dest), "--force", config=bad)
    assert r.returncode == 1 and "injected failure" in r.stderr, r.stderr
    assert f"restore failed part-way: removed what it wrote to {dest}; its previous content is back in place" in r.stderr
    assert [p.name for p in dest.iterdir()] == ["old.txt"] and journals(workdir) == []
    assert not [p for p in workdir.iterdir() if "pre-restore" in p.name]


def test_a_restore_that_cannot_remove_what_it_wrote_says_what_is_left_where(subvol, workdir):
    cfg, bid = backed_up(subvol, workdir)
    # a tar that mounts something inside the directory it extracts into, then fails: the undo
    # refuses to remove a tree with a mount inside it
    busy = workdir / "busy-tar"
    busy.write_text(f"#!{sys.executable}\nimport os, subprocess, sys\nargs = sys.argv[1:]\n"
                    "if '--extract' in args:\n"
                    "    d = os.path.join(args[args.index('--directory') + 1], 'busy')\n"
                    "    os.mkdir(d)\n"
                    "    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', d], check=True)\n"
                    "    sys.exit(print('injected failure', file=sys.stderr) or 1)\n"
                    f"os.execv({shutil.which('tar')!r}, ['tar', *args])\n")
    busy.chmod(0o755)
    dest = workdir / "dest"
    r = snapagent("restore", bid, "--to", str(dest), config=with_tool(cfg, "tar", busy))
    mounted = next(dest.glob("*/busy"))
    try:
        assert r.returncode == 1 and "injected failure" in r.stderr, r.stderr
        assert f"restore failed part-way and left {dest} (partly restored); `snapagent cleanup` removes it" \
               in r.stderr, r.stderr
        assert f"{mounted} is mounted inside it" in r.stderr and journals(workdir), r.stderr
    finally:
        subprocess.run(["umount", str(mounted)], check=True)
    c = snapagent("cleanup", config=cfg, check=True)
    assert f"removed {dest}" in c.stdout, c.stdout
    assert not dest.exists() and journals(workdir) == []


def test_a_btrfs_receive_that_fills_the_disk_removes_what_it_received(subvol, workdir):
    vol, db = app_volume(subvol, big=64 << 20)
    cfg = write_config(workdir, job(vol, db).replace('target = "local"\n', 'target = "local"\nexport = "send"\n'))
    bid = last_line(snapagent("backup", "app", config=cfg, check=True))
    with small_btrfs(workdir, 48) as fs:
        dest = fs / "dest"
        err = refused(cfg, "restore", bid, "--to", str(dest))
        assert f"--to {dest}: the restore needs about 64." in err, err
        r = snapagent("restore", bid, "--to", str(dest), "--no-space-check", config=cfg)
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert f"restore into {dest} ran out of space (btrfs: no space left on device)" in r.stderr, r.stderr
        assert f"restore failed part-way: removed what it wrote to {dest}\n" in r.stderr, r.stderr
        assert list(fs.iterdir()) == [] and journals(workdir) == []
        listed = subprocess.run(["btrfs", "subvolume", "list", str(fs)], capture_output=True, text=True, check=True)
        assert listed.stdout == "", listed.stdout

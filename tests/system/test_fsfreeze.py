"""fsfreeze quiescer on real ext4 loop filesystems made by the tests (never anything else):
refusals, freeze/verify/release, the watchdog's deadline and its deafness to SIGTERM, and — through
the real CLI — an ext4 image on a btrfs subvolume whose snapshot is clean only when frozen."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snapagent.errors import PreflightFailed, QuiesceFailed
from snapagent.journal import Journal, read_open
from snapagent.plugin.quiescer import QuiesceContext
from snapagent.quiesce.fsfreeze.quiescer import FsfreezeConfig, FsfreezeQuiescer
from snapagent.util.runner import Runner
from tests.helpers.caps import need
from tests.helpers.cli import ROOT, snapagent, toml_str, write_config
from tests.helpers.loopfs import ext4_loop, is_frozen, was_frozen, write_takes

pytestmark = [pytest.mark.root]


@pytest.fixture
def ext4(tmp_path):
    need(os.geteuid() == 0, "needs root for loop devices, mounts and FIFREEZE")
    need(shutil.which("mkfs.ext4") is not None and shutil.which("fsfreeze") is not None,
         "needs e2fsprogs and util-linux (fsfreeze)")
    with ext4_loop(tmp_path / "ext4 a;$(touch x) -n") as mnt:
        yield mnt


def quiescer(mps, tmp_path, volumes=(), protected=None, journal=True):
    ctx = QuiesceContext("j", Runner(), list(volumes))
    ctx.protected = protected or {}
    if journal:
        ctx.journal = Journal.start(tmp_path / "state", "j", "run1")
    return FsfreezeQuiescer(FsfreezeConfig(mountpoints=[str(m) for m in mps]), ctx)


def test_refuses_root_tmp_non_mountpoints_and_protected(ext4, tmp_path):
    # check_mountpoints() only: these tests never start a watchdog, let alone freeze
    with pytest.raises(PreflightFailed, match="holds the root filesystem"):
        quiescer(["/"], tmp_path, journal=False).check_mountpoints()
    with pytest.raises(PreflightFailed, match="is not a mount point; it lies on the filesystem mounted at"):
        quiescer([tmp_path], tmp_path, journal=False).check_mountpoints()
    (ext4 / "state").mkdir()
    with pytest.raises(PreflightFailed, match=r"holds the agent's state_dir \(.*/state\)"):
        quiescer([ext4], tmp_path, protected={"the agent's state_dir": ext4 / "state"}, journal=False).check_mountpoints()
    with pytest.raises(PreflightFailed, match="holds job volume"):
        quiescer([ext4], tmp_path, volumes=[str(ext4 / "state")], journal=False).check_mountpoints()
    assert not was_frozen(ext4)


def test_watchdog_itself_refuses_root():
    r = subprocess.run([sys.executable, "-m", "snapagent.quiesce.fsfreeze.watchdog", "/"], input="",
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "refusing to freeze /" in r.stdout


def test_freeze_verify_release(ext4, tmp_path):
    q = quiescer([ext4], tmp_path)
    q.preflight()
    try:
        q.quiesce(time.monotonic() + 10)
        assert is_frozen(ext4)
        opened = read_open(q.ctx.journal.path)
        assert [(r["kind"], r["key"], r["owner"]) for r in opened] == \
            [("freeze", str(ext4), {"kind": "quiescer", "name": "fsfreeze"})]
        q.verify()
    finally:
        rec = q.release()
    took = write_takes(ext4, 5)
    assert took is not None and took < 1
    assert read_open(q.ctx.journal.path) == []
    assert rec["thawed"][str(ext4)]["by"] == "watchdog" and rec["thawed"][str(ext4)]["reason"] == "released"
    assert rec["consistency"] == "crash" and rec["image"] == "filesystem-consistent"
    print(f"\nfsfreeze: freeze took {rec['freeze_ms']} ms, frozen {rec['thawed'][str(ext4)]['frozen_ms']} ms")


def test_watchdog_thaws_at_deadline_and_ignores_sigterm(ext4, tmp_path):
    q = quiescer([ext4], tmp_path)
    q.preflight()
    try:
        t0 = time.monotonic()
        q.quiesce(t0 + 1.5)
        pid = q.rec["watchdog_pid"]
        assert os.getsid(pid) == pid  # its own session
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            os.kill(pid, s)
        time.sleep(0.2)
        assert is_frozen(ext4, 0.3)  # still frozen: the signals were ignored
        took = write_takes(ext4, 5)  # blocks until the watchdog's deadline thaw
        thawed_after = time.monotonic() - t0
        assert took is not None and 1.4 < thawed_after < 2.5, thawed_after
        with pytest.raises(QuiesceFailed, match="thawed before the snapshot ended"):
            q.verify()
    finally:
        rec = q.release()
    assert rec["thawed"][str(ext4)]["reason"] == "deadline"
    assert read_open(q.ctx.journal.path) == []
    print(f"\nfsfreeze watchdog: deadline 1.5 s, write resumed {thawed_after:.2f} s after the freeze")


def test_cli_refuses_state_dir_filesystem(ext4, workdir, subvol):
    """Preflight through the CLI: the state_dir on the filesystem to freeze → exit 1, nothing frozen."""
    vol = subvol("v")
    state = ext4 / "state"
    cfg = write_config(workdir, f"""
[jobs.j]
driver = "btrfs"
volumes = [{toml_str(vol)}]
target = "local"
[[jobs.j.quiesce]]
type = "fsfreeze"
mountpoints = [{toml_str(ext4)}]
""")
    cfg.write_text(cfg.read_text().replace(toml_str(workdir / "state"), toml_str(state)))
    r = snapagent("backup", "j", config=cfg)
    assert r.returncode == 1 and f"refusing to freeze {str(ext4)!r}" in r.stderr and "state_dir" in r.stderr, r.stderr
    assert not was_frozen(ext4)


def _dumpe2fs_features(img: Path) -> str:
    r = subprocess.run(["dumpe2fs", "-h", str(img)], capture_output=True, text=True)
    return next(l for l in r.stdout.splitlines() if l.startswith("Filesystem features:"))


@pytest.mark.btrfs
@pytest.mark.parametrize("freeze", [True, False], ids=["fsfreeze", "no-freeze"])
def test_image_on_btrfs_is_clean_only_when_frozen(subvol, workdir, tmp_path, freeze):
    """An ext4 image kept on a btrfs subvolume and mounted: the btrfs snapshot copies the image.
    With fsfreeze the copy needs no journal recovery and holds the unsynced file; without it the
    copy is only crash-consistent (needs_recovery set)."""
    need(shutil.which("dumpe2fs") is not None, "needs e2fsprogs")
    vol = subvol("images")
    with ext4_loop(vol, size_mb=32) as mnt:
        (mnt / "unsynced.txt").write_text("written, never fsynced\n" * 100)
        text = (ROOT / "etc" / "hooks" / "fsfreeze.toml").read_text()
        for old, new in {"/var/lib/snapagent": workdir / "state", "/var/backups/snapagent": workdir / "backups",
                         "/srv/images": vol, "/mnt/disk": mnt}.items():
            text = text.replace(f'"{old}"', toml_str(new))
        if not freeze:
            text = text[:text.index("[[jobs.images.quiesce]]")]
        cfg = workdir / "fsfreeze.toml"
        cfg.write_text(text)
        r = snapagent("backup", "images", config=cfg, check=True)
        bid = r.stdout.strip().splitlines()[-1]
        assert not was_frozen(mnt)
    m = json.loads(snapagent("--json", "show", bid, config=cfg, check=True).stdout)
    dest = tmp_path / "restored"
    snapagent("restore", bid, "--to", str(dest), config=cfg, check=True)
    img = dest / m["volumes"][0]["label"] / "ext4.img"
    features = _dumpe2fs_features(img)
    if freeze:
        assert m["quiescers"][0]["consistency"] == "crash" and m["quiescers"][0]["image"] == "filesystem-consistent"
        assert "needs_recovery" not in features, features
        fsck = subprocess.run(["e2fsck", "-fn", str(img)], capture_output=True, text=True)
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
        cat = subprocess.run(["debugfs", "-R", "cat /unsynced.txt", str(img)], capture_output=True, text=True)
        assert cat.stdout.count("never fsynced") == 100
        print(f"\nfsfreeze image: clean, freeze window {m['freeze_window_ms']:.0f} ms")
    else:
        assert "needs_recovery" in features, features


@pytest.mark.btrfs
def test_dry_run_freezes_nothing(ext4, workdir, subvol, tmp_path):
    vol = subvol("v")
    ran = tmp_path / "pre-ran"
    cfg = write_config(workdir, f"""
[jobs.j]
driver = "btrfs"
volumes = [{toml_str(vol)}]
target = "local"
[[jobs.j.quiesce]]
type = "fsfreeze"
mountpoints = [{toml_str(ext4)}]
[[jobs.j.quiesce]]
type = "command"
pre = [{toml_str(sys.executable)}, "-c", "import sys; open(sys.argv[1], 'w')", {toml_str(ran)}]
""")
    r = snapagent("backup", "j", "--dry-run", config=cfg)
    assert r.returncode == 0, r.stderr
    assert f"would quiesce: fsfreeze {ext4}" in r.stdout and "would quiesce: command" in r.stdout
    assert not ran.exists() and not was_frozen(ext4)

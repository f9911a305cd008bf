"""The LVM drivers against real LVM inside the test VM: hot SQLite backups on classic and thin
snapshots (restore, integrity, every row acknowledged before the lock present), XFS with nouuid,
COW overflow, a VG without room, and SIGKILL mid-export followed by ``snapagent cleanup``.

Small data only: the guest runs under TCG.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.helpers.cli import ROOT, snapagent, write_config
from tests.vm.vmtools import VolumeGroup, pipe, run

pytestmark = pytest.mark.vm

WRITER = ROOT / "tests" / "helpers" / "writer.py"

# A tar that copies slowly (64 KiB per 0.1 s): makes "during the export" last long enough to write
# into the origin or to kill the agent, without sleeping blindly. Installed as [agent] tools.tar.
SLOW_TAR = """#!/usr/bin/python3
import subprocess, sys, time
p = subprocess.Popen(["tar", *sys.argv[1:]], stdout=subprocess.PIPE)
while chunk := p.stdout.read(65536):
    sys.stdout.buffer.write(chunk)
    sys.stdout.buffer.flush()
    time.sleep(0.1)
sys.exit(p.wait())
"""


# -- helpers -------------------------------------------------------------------------------------
def sh(argv: list[str], **kw) -> subprocess.CompletedProcess:
    """vmtools.run, printing how long the command took (TCG is slow: this shows where time goes)."""
    t = time.monotonic()
    r = run(argv, **kw)
    print(f"[{time.monotonic() - t:6.1f}s] {' '.join(argv)}", flush=True)
    return r


def cli(config: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run the real CLI (verbose) as a process; print what it said and how long it took."""
    return snapagent("-v", *args, config=config, timeout=timeout, show=True)


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    return r.stdout


def write_job(tmp: Path, driver: str, volumes: list[str], options: dict, quiesce: str = "",
              tools: dict | None = None) -> Path:
    """Write a config with one job ``j`` (state and directory target under ``tmp``)."""
    opts = "".join(f"{k} = {json.dumps(str(v) if isinstance(v, Path) else v)}\n" for k, v in options.items())
    tools_toml = "".join(f"tools.{k} = {json.dumps(v)}\n" for k, v in (tools or {}).items())
    job = (f"[jobs.j]\ndriver = {json.dumps(driver)}\nvolumes = {json.dumps(volumes)}\ntarget = \"local\"\n"
           f"max_freeze = \"20s\"\n\n[jobs.j.options]\n{opts}\n{quiesce}")
    return write_config(tmp, job, agent=tools_toml)


def make_lv(vg: VolumeGroup, name: str, size: str, fstype: str, where: Path) -> Path:
    """Create LV ``vg/name`` (``size``), make ``fstype`` on it, mount it at ``where``; return ``where``."""
    sh(["lvcreate", "-q", "-y", "-L", size, "-n", name, vg.name])
    return mkfs_mount(vg.lv_path(name), fstype, where)


def mkfs_mount(device: str, fstype: str, where: Path) -> Path:
    sh([f"mkfs.{fstype}", "-q", *(["-f"] if fstype == "xfs" else []), device])
    where.mkdir(parents=True, exist_ok=True)
    sh(["mount", device, str(where)])
    return where


def lv_names(vg: VolumeGroup) -> list[str]:
    return sorted(sh(["lvs", "--noheadings", "-o", "lv_name", vg.name]).stdout.split())


def mounts_under(base: Path) -> list[str]:
    from snapagent.util import mountinfo

    return [e.mount_point for e in mountinfo.read() if e.mount_point.startswith(str(base) + "/")]


def loop_devices() -> list[str]:
    return sorted(sh(["losetup", "-n", "-O", "NAME"]).stdout.split())


def start_writer(db: Path, ack: Path, rows: int = 10) -> subprocess.Popen:
    """Start the continuous SQLite writer on ``db`` and wait until ``rows`` rows are acknowledged."""
    w = subprocess.Popen([sys.executable, str(WRITER), str(db), str(ack)])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if ack.exists() and len(ack.read_text().splitlines()) >= rows:
            return w
        assert w.poll() is None, "the writer died"
        time.sleep(0.2)
    w.kill()
    raise AssertionError("the writer acknowledged too few rows in 120 s")


def stop(w: subprocess.Popen) -> None:
    w.terminate()
    w.wait(30)


def check_restored_db(db: Path, ack: Path, manifest: dict) -> dict:
    """Integrity-check the restored ``db`` and check every row acknowledged before the lock is in it."""
    locked_at = datetime.fromisoformat(manifest["quiescers"][0]["locked_at"]).timestamp()
    acked = [(int(i), float(t)) for i, t in (ln.split() for ln in ack.read_text().splitlines() if ln.strip())]
    before = {i for i, t in acked if t < locked_at}
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        assert [r[0] for r in conn.execute("PRAGMA integrity_check")] == ["ok"]
        present = {r[0] for r in conn.execute("SELECT id FROM t")}
    finally:
        conn.close()
    assert before, "no row was acknowledged before the lock"
    missing = sorted(before - present)
    assert not missing, f"{len(missing)} rows acknowledged before the lock are missing: {missing[:10]}"
    return {"acked_before_lock": len(before), "rows_restored": len(present), "acked_total": len(acked)}


def hot_backup_restore(tmp: Path, driver: str, volume: str, origin: Path, vg: VolumeGroup, options: dict) -> dict:
    """Back up ``volume`` (mounted at ``origin``) under a live writer, restore, check; return the manifest."""
    db, ack = origin / "app db.sqlite", tmp / "acks.txt"
    writer = start_writer(db, ack)
    try:
        cfg = write_job(tmp, driver, [volume], options,
                           f"[[jobs.j.quiesce]]\ntype = \"sqlite\"\npath = {json.dumps(str(db))}\n")
        manifest = json.loads(ok(cli(cfg, "--json", "backup", "j")))
        backup_id = manifest["id"]
        time.sleep(0.5)  # rows acknowledged after the lock exist too
    finally:
        stop(writer)
    assert manifest["driver"] == driver and manifest["volumes"][0]["snapshot"].startswith(f"{vg.name}/snapagent-j-")
    dest = tmp / "restored here"
    summary = json.loads(ok(cli(cfg, "--json", "restore", backup_id, "--to", str(dest))))
    restored = Path(summary["databases"][0]["restored"])
    assert restored.is_relative_to(dest)
    manifest["_check"] = check_restored_db(restored, ack, manifest)
    assert not [n for n in lv_names(vg) if n.startswith("snapagent-")]
    assert mounts_under(Path(options["mount_base"])) == []
    assert list(Path(options["mount_base"]).iterdir()) == []
    return manifest


def wait_for(cond, agent: subprocess.Popen, what: str, timeout: float = 120) -> None:
    """Poll ``cond()`` until true; fail when ``agent`` exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if agent.poll() is not None:
            out, err = agent.communicate()
            raise AssertionError(f"the agent exited ({agent.returncode}) before {what}:\n{out}\n{err}")
        time.sleep(0.05)
    agent.kill()
    raise AssertionError(f"timed out waiting for {what}")


def stored(tmp: Path) -> list[Path]:
    """Return the manifests in the test's directory target (a backup exists iff its manifest does)."""
    return sorted((tmp / "backups").glob("*/*/manifest.json"))


def unpack(artifact: Path, dest: Path) -> Path:
    """docs/lvm.md "Restore by hand": zstd -dc ARTIFACT | tar --extract … into the new directory ``dest``."""
    dest.mkdir()
    pipe(["zstd", "-dc", str(artifact)],
         ["tar", "--extract", "--file=-", "--directory", str(dest), "--numeric-owner", "--same-owner",
          "--preserve-permissions", "--xattrs", "--xattrs-include=*", "--acls"])
    return dest


def slow_tar(tmp: Path) -> str:
    p = tmp / "slow-tar"
    p.write_text(SLOW_TAR)
    p.chmod(0o755)
    return str(p)


# -- the tests -----------------------------------------------------------------------------------
def test_classic_hot_sqlite_backup_restore_and_restore_by_hand(lvm_vg: VolumeGroup, tmp_path: Path) -> None:
    origin = make_lv(lvm_vg, "data", "48M", "ext4", tmp_path / "origin mnt")
    base = tmp_path / "mount base"
    base.mkdir()
    m = hot_backup_restore(tmp_path, "lvm", lvm_vg.lv_ref("data"), origin, lvm_vg,
                           {"mount_base": base, "snapshot_size": "25%", "poll_interval": "0.2s"})
    vol = m["volumes"][0]
    assert vol["info"]["snapshot_type"] == "cow" and vol["info"]["cow_bytes"] == 12 << 20 and vol["info"]["fstype"] == "ext4"
    assert vol["info"]["snap_percent_max"] is not None and vol["info"]["snap_percent_max"] < 100
    assert lv_names(lvm_vg) == ["data"]
    print(f"\nclassic: freeze window {m['freeze_window_ms']:.0f} ms, max Snap% {vol['info']['snap_percent_max']}, {m['_check']}")

    # docs/lvm.md "Restore by hand": check the sha256, then zstd -dc | tar --extract
    bdir = tmp_path / "backups" / "j" / m["id"]
    art = m["artifacts"][0]
    assert run(["sha256sum", str(bdir / art["name"])]).stdout.split()[0] == art["sha256"]
    by_hand = unpack(bdir / art["name"], tmp_path / "by hand")
    conn = sqlite3.connect(f"file:{by_hand / 'app db.sqlite'}?mode=ro", uri=True)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()


def test_thin_hot_sqlite_backup_restore_on_xfs(make_vg, tmp_path: Path) -> None:
    vg = make_vg(size="256M")
    sh(["lvcreate", "-q", "-y", "-L", "96M", "-T", vg.lv_ref("pool")])
    sh(["lvcreate", "-q", "-y", "-V", "320M", "-T", vg.lv_ref("pool"), "-n", "thin"])  # XFS needs >= 300M
    origin = mkfs_mount(vg.lv_path("thin"), "xfs", tmp_path / "thin origin")
    base = tmp_path / "mount base"
    base.mkdir()
    m = hot_backup_restore(tmp_path, "lvm-thin", vg.lv_ref("thin"), origin, vg,
                           {"mount_base": base, "max_data_percent": 90})
    vol = m["volumes"][0]
    assert vol["info"]["snapshot_type"] == "thin" and vol["info"]["pool"] == "pool" and vol["info"]["fstype"] == "xfs"
    assert lv_names(vg) == ["pool", "thin"]
    print(f"\nthin/xfs: freeze window {m['freeze_window_ms']:.0f} ms, {m['_check']}")


def test_classic_xfs_origin_mounts_with_nouuid(make_vg, tmp_path: Path) -> None:
    vg = make_vg(size="448M")
    origin = make_lv(vg, "x", "320M", "xfs", tmp_path / "xfs origin")
    (origin / "hello.txt").write_text("xfs snapshot\n")
    base = tmp_path / "mnt"
    base.mkdir()
    cfg = write_job(tmp_path, "lvm", [vg.lv_ref("x")], {"mount_base": base, "snapshot_size": "32M"})
    m = json.loads(ok(cli(cfg, "--json", "backup", "j")))
    assert m["volumes"][0]["info"]["fstype"] == "xfs"
    art = tmp_path / "backups" / "j" / m["id"] / m["artifacts"][0]["name"]
    assert (unpack(art, tmp_path / "r") / "hello.txt").read_text() == "xfs snapshot\n"
    assert lv_names(vg) == ["x"] and mounts_under(base) == []


def test_cow_overflow_fails_the_backup_naming_snap_percent(lvm_vg: VolumeGroup, tmp_path: Path) -> None:
    origin = make_lv(lvm_vg, "data", "64M", "ext4", tmp_path / "origin")
    with open(origin / "payload", "wb") as f:  # 3 MiB to export: ~5 s through the slow tar
        f.write(os.urandom(3 << 20))
    os.sync()
    base = tmp_path / "mount base"
    base.mkdir()
    cfg = write_job(tmp_path, "lvm", [lvm_vg.lv_ref("data")],
                       {"mount_base": base, "snapshot_size": "4M", "poll_interval": "0.2s"},
                       tools={"tar": slow_tar(tmp_path)})
    loops = loop_devices()
    agent = subprocess.Popen([sys.executable, "-m", "snapagent", "-c", str(cfg), "backup", "j"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: mounts_under(base), agent, "the snapshot to be mounted")
    with open(origin / "flood", "wb") as f:  # 12 MiB of new blocks: three times the COW space
        for _ in range(12):
            f.write(os.urandom(1 << 20))
            f.flush()
            os.fsync(f.fileno())
    out, err = agent.communicate(timeout=300)
    assert agent.returncode == 1, f"stdout:\n{out}\nstderr:\n{err}"
    assert "Snap%" in err and "snapshot_size" in err, err
    assert stored(tmp_path) == []
    assert lv_names(lvm_vg) == ["data"]
    assert mounts_under(base) == [] and list(base.iterdir()) == []
    assert loop_devices() == loops
    print(f"\noverflow: {err.strip().splitlines()[-1]}")


def test_vg_without_room_is_refused_in_preflight(lvm_vg: VolumeGroup, tmp_path: Path) -> None:
    make_lv(lvm_vg, "big", "200M", "ext4", tmp_path / "big")
    free = lvm_vg.free_bytes()
    cfg = write_job(tmp_path, "lvm", [lvm_vg.lv_ref("big")], {"snapshot_size": "50%"})
    r = cli(cfg, "backup", "j")
    assert r.returncode == 1, r.stderr
    assert f"has {free / 2**20:.1f} MiB ({free} bytes) free" in r.stderr, r.stderr
    assert f"({100 << 20} bytes)" in r.stderr and "snapshot_size = '50%'" in r.stderr
    assert lv_names(lvm_vg) == ["big"]
    assert not list((tmp_path / "state").glob("journal/*/*.jsonl"))


def test_sigkill_mid_export_then_cleanup_leaves_nothing(lvm_vg: VolumeGroup, tmp_path: Path) -> None:
    origin = make_lv(lvm_vg, "data", "32M", "ext4", tmp_path / "origin")
    with open(origin / "payload", "wb") as f:
        f.write(os.urandom(4 << 20))
    base = tmp_path / "mount base"
    base.mkdir()
    cfg = write_job(tmp_path, "lvm", [lvm_vg.lv_ref("data")], {"mount_base": base},
                       tools={"tar": slow_tar(tmp_path)})
    loops = loop_devices()
    agent = subprocess.Popen([sys.executable, "-m", "snapagent", "-c", str(cfg), "backup", "j"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: mounts_under(base), agent, "the snapshot to be mounted")
    time.sleep(1.0)  # the export is under way
    agent.send_signal(signal.SIGKILL)
    agent.wait(30)
    left = [n for n in lv_names(lvm_vg) if n.startswith("snapagent-")]
    assert left and mounts_under(base), "the killed agent should have left its snapshot and mount"
    # docs/lvm.md: what a killed run left, seen by hand
    listing = sh(["lvs", "--noheadings", "-o", "lv_name,origin,snap_percent", lvm_vg.name]).stdout
    assert left[0] in listing
    ok(cli(cfg, "cleanup"))
    assert lv_names(lvm_vg) == ["data"]
    assert mounts_under(base) == [] and list(base.iterdir()) == []
    assert loop_devices() == loops
    assert not list((tmp_path / "state").glob("journal/*/*.jsonl"))
    assert stored(tmp_path) == []

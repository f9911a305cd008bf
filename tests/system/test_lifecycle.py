"""The lifecycle on real btrfs through the real CLI: a failure after the commit is a warning (exit 0,
the id printed, ``cleanup`` retries); a restore that is stopped — by SIGTERM or SIGKILL — leaves
nothing half-done once it (or ``cleanup``) has undone it; a forged or garbled manifest makes one
backup damaged, refused with one message, while the others stay usable."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from snapagent import manifest as M
from tests.helpers.cli import last_line, log_lines, snapagent, toml_str, write_config
from tests.helpers.snapplaces import snapdir, snapshots
from tests.helpers.wrappers import failing_tool, slow_tool

pytestmark = [pytest.mark.root, pytest.mark.btrfs]


def app_volume(subvol, rows: int = 100, big: int = 0) -> tuple[Path, Path]:
    vol = subvol("life cycle")
    db = vol / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (a)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(rows)])
    conn.commit()
    conn.close()
    if big:
        (vol / "big.bin").write_bytes(os.urandom(big))
    return vol, db


def job(vol: Path, db: Path) -> str:
    return (f'[jobs.app]\ndriver = "btrfs"\nvolumes = [{toml_str(vol)}]\ntarget = "local"\n'
            f'[[jobs.app.quiesce]]\ntype = "sqlite"\npath = {toml_str(db)}\n')


def with_tool(cfg: Path, name: str, path: Path) -> Path:
    """Return a copy of config ``cfg`` that runs ``path`` as tool ``name``."""
    out = cfg.with_name(f"{cfg.stem}-{name}.toml")
    out.write_text(cfg.read_text().replace("[agent]\n", f"[agent]\ntools.{name} = {toml_str(path)}\n", 1))
    return out


def journals(workdir: Path) -> list[Path]:
    return sorted((workdir / "state").rglob("*.jsonl"))


# -- after the commit -----------------------------------------------------------------------------
def test_failure_after_commit_is_a_warning_and_cleanup_retries(subvol, workdir):
    vol, db = app_volume(subvol)
    switch = workdir / "fail-delete"
    switch.touch()
    btrfs = failing_tool(workdir / "btrfs-wrapper", "btrfs", ["subvolume", "delete"], switch)
    cfg = with_tool(write_config(workdir, job(vol, db)), "btrfs", btrfs)
    r = snapagent("backup", "app", config=cfg)
    assert r.returncode == 0, r.stderr
    bid = last_line(r)
    assert bid.startswith("app-") and "warning: could not undo snapshot" in r.stderr, r.stderr
    assert "injected failure" in r.stderr and "`snapagent cleanup` will retry" in r.stderr
    assert not log_lines(r.stderr, "error") and "Traceback" not in r.stderr
    assert [b["id"] for b in json.loads(snapagent("list", "--json", config=cfg, check=True).stdout)] == [bid]
    assert snapshots(vol) == [f"snapagent-{bid}.0"] and len(journals(workdir)) == 1
    assert snapagent("verify", bid, config=cfg).returncode == 0

    switch.unlink()
    c = snapagent("cleanup", config=cfg, check=True)
    assert f"deleted btrfs snapshot {snapdir(vol)}/snapagent-{bid}.0" in c.stdout
    assert snapshots(vol) == [] and journals(workdir) == []
    # the next run of the job sweeps leftovers itself too
    switch.touch()
    bid2 = last_line(snapagent("backup", "app", config=cfg, check=True))
    switch.unlink()
    r = snapagent("-v", "backup", "app", config=cfg, check=True)  # -v: progress lines off a terminal
    assert "cleaned up after an earlier run: deleted btrfs snapshot" in r.stderr and bid2 not in snapshots(vol)


# -- a stopped restore ----------------------------------------------------------------------------
def _restore_until_extracting(cfg: Path, bid: str, dest: Path, marker: Path) -> subprocess.Popen:
    agent = subprocess.Popen([sys.executable, "-m", "snapagent", "-c", str(cfg), "restore", bid, "--to", str(dest),
                              "--force"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.monotonic() + 60
    while not marker.exists():
        assert agent.poll() is None, agent.communicate()
        assert time.monotonic() < end, "the restore never reached its extraction"
        time.sleep(0.02)
    return agent


def _kill_orphans(marker_arg: str) -> None:
    for p in psutil.process_iter(["cmdline"]):
        if any(marker_arg in a for a in p.info["cmdline"] or []):
            p.kill()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_stopped_restore_leaves_the_old_content_in_place(subvol, workdir, sig):
    vol, db = app_volume(subvol, big=1 << 20)
    cfg = write_config(workdir, job(vol, db))
    bid = last_line(snapagent("backup", "app", config=cfg, check=True))
    dest = workdir / "restore here"
    dest.mkdir()
    (dest / "old.txt").write_text("what was there before\n")
    marker = workdir / "extracting"
    slow = with_tool(cfg, "tar", slow_tool(workdir / "slow-tar", "tar", marker, 60, when="--extract"))
    agent = _restore_until_extracting(slow, bid, dest, marker)
    moved = [p for p in workdir.iterdir() if p.name.startswith("restore here.pre-restore-")]
    assert len(moved) == 1 and (moved[0] / "old.txt").exists() and dest.is_dir()
    agent.send_signal(sig)
    out, err = agent.communicate(timeout=60)
    _kill_orphans(str(dest))
    if sig == signal.SIGTERM:
        assert agent.returncode == 1 and "interrupted by SIGTERM" in err and "Traceback" not in err, err
    else:
        assert journals(workdir), "a killed restore must leave its journal"
        c = snapagent("cleanup", config=cfg, check=True)
        assert f"moved {moved[0]} back to {dest}" in c.stdout, c.stdout
    assert sorted(p.name for p in dest.iterdir()) == ["old.txt"]
    assert not [p for p in workdir.iterdir() if p.name.startswith("restore here.pre-restore-")]
    assert journals(workdir) == []


# -- damaged backups ------------------------------------------------------------------------------
def forge(backups: Path, bid: str, new_id: str, edit) -> Path:
    """Copy backup ``bid`` to ``new_id`` with its manifest edited by ``edit(data)`` and resealed
    with a correct checksum — what someone with write access to the target could do."""
    src, dst = backups / "app" / bid, backups / "app" / new_id
    shutil.copytree(src, dst)
    data = json.loads((dst / "manifest.json").read_text())
    data["id"] = new_id
    edit(data)
    data.pop("checksum")
    data["checksum"] = M.checksum(data)
    (dst / "manifest.json").write_text(json.dumps(data))
    return dst


def test_forged_names_never_leave_dest_and_damage_only_that_backup(subvol, workdir):
    vol, db = app_volume(subvol)
    os.symlink("/etc", vol / "etc link")
    cfg = write_config(workdir, job(vol, db))
    bid = last_line(snapagent("backup", "app", config=cfg, check=True))
    backups = workdir / "backups"
    label_id, rel_id, link_id, garbled_id = (f"app-2026010{i}T000000Z" for i in range(1, 5))
    forge(backups, bid, label_id, lambda d: d["volumes"][0].update(label="../../escaped"))
    forge(backups, bid, rel_id, lambda d: next(iter(d["quiescers"][0]["locations"].values())).update(
        relpath="../../../../etc/passwd"))
    forge(backups, bid, link_id, lambda d: next(iter(d["quiescers"][0]["locations"].values())).update(
        relpath="etc link/passwd"))
    forge(backups, bid, garbled_id, lambda d: None)
    (backups / "app" / garbled_id / "manifest.json").write_text('{"format": 2, "id": "app-')

    listed = {b["id"]: b for b in json.loads(snapagent("list", "--json", config=cfg, check=True).stdout)}
    assert set(listed) == {bid, label_id, rel_id, link_id, garbled_id}
    assert "not a safe file name" in listed[label_id]["damaged"]
    assert "not a normalised path" in listed[rel_id]["damaged"]
    assert "not valid JSON" in listed[garbled_id]["damaged"]
    assert "damaged" not in listed[bid] and "damaged" not in listed[link_id]  # that one is valid as a manifest
    text = snapagent("list", config=cfg, check=True)
    assert f"{label_id}" in text.stdout and "DAMAGED: manifest is invalid" in text.stdout
    assert "3 backup(s) damaged" in text.stderr

    for cmd in (["show"], ["verify"], ["drill"], ["restore", "--to", str(workdir / "d")]):
        for damaged in (label_id, garbled_id):
            r = snapagent(cmd[0], damaged, *cmd[1:], config=cfg)
            assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
            assert f"backup {damaged} in target 'local' is damaged" in r.stderr and "Traceback" not in r.stderr
    assert not (workdir / "d").exists() and not (backups / "escaped").exists() and not (workdir / "escaped").exists()

    # a valid manifest whose database path leads through a symlink of the restored tree
    dest = workdir / "through a link"
    r = snapagent("restore", link_id, "--to", str(dest), config=cfg)
    assert r.returncode == 1 and "leads outside" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not dest.exists(), "a refused restore removes what it wrote"

    good = workdir / "good"
    snapagent("restore", bid, "--to", str(good), config=cfg, check=True)
    assert (good / listed[bid]["volumes"][0]["label"] / "app.db").is_file()
    d = snapagent("drill", "app@latest", config=cfg, check=True)  # the newest good backup, beside damaged ones
    assert f"drill of {bid}: PASSED" in d.stdout


HOLD = """import pathlib, signal, sys
signal.signal(signal.SIGINT, lambda *a: pathlib.Path(sys.argv[1]).write_text("got SIGINT"))
print("READY", flush=True)
pathlib.Path(sys.argv[2]).touch()
sys.stdin.read()
"""


def test_ctrl_c_reaches_the_agent_not_its_children(subvol, workdir):
    """Ctrl-C in a terminal signals the whole foreground process group. The agent's children run
    in groups of their own: only the agent gets the SIGINT, and it releases its `hold` process
    itself (stdin closed) — the child never sees the signal."""
    vol, db = app_volume(subvol)
    hold, got, holding = workdir / "hold.py", workdir / "hold got SIGINT", workdir / "holding"
    hold.write_text(HOLD)
    slow = slow_tool(workdir / "slow-btrfs", "btrfs", workdir / "snapshotting", 30)
    cfg = write_config(workdir, job(vol, db) + f'[[jobs.app.quiesce]]\ntype = "command"\n'
                       f'hold = [{toml_str(sys.executable)}, {toml_str(hold)}, {toml_str(got)}, {toml_str(holding)}]\n',
                       agent=f"tools.btrfs = {toml_str(slow)}\n")
    agent = subprocess.Popen([sys.executable, "-m", "snapagent", "-c", str(cfg), "backup", "app"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    end = time.monotonic() + 60
    while not (workdir / "snapshotting").exists():  # the hold process holds, the snapshot is running
        assert agent.poll() is None and time.monotonic() < end, agent.communicate()
        time.sleep(0.02)
    assert holding.exists()
    os.killpg(agent.pid, signal.SIGINT)  # what the terminal does
    out, err = agent.communicate(timeout=60)
    assert agent.returncode == 1 and "interrupted by SIGINT" in err and "Traceback" not in err, err
    assert not got.exists(), "the hold process got the terminal's SIGINT"
    assert snapshots(vol) == [] and journals(workdir) == []


# -- what a restore restores ----------------------------------------------------------------------
CAP_SETUID = struct.pack("<IIIII", 0x02000001, 1 << 7, 0, 0, 0)  # vfs_cap_data v2: cap_setuid+ep


def test_file_capabilities_and_setuid_only_with_allow_special(subvol, workdir):
    """A file with `cap_setuid+ep` or mode 04755 in the backup is restored without them — unless
    the operator passes --allow-special."""
    vol, db = app_volume(subvol)
    capped, su = vol / "capped", vol / "su"
    capped.write_text("x")
    os.setxattr(capped, "security.capability", CAP_SETUID)
    su.write_text("x")
    os.chmod(su, 0o4755)
    cfg = write_config(workdir, job(vol, db))
    bid = last_line(snapagent("backup", "app", config=cfg, check=True))
    label = json.loads(snapagent("show", bid, "--json", config=cfg, check=True).stdout)["volumes"][0]["label"]
    plain, special = workdir / "plain", workdir / "special"
    snapagent("restore", bid, "--to", str(plain), config=cfg, check=True)
    snapagent("restore", bid, "--to", str(special), "--allow-special", config=cfg, check=True)
    with pytest.raises(OSError):
        os.getxattr(plain / label / "capped", "security.capability")
    assert os.getxattr(special / label / "capped", "security.capability") == CAP_SETUID
    assert not os.stat(plain / label / "su").st_mode & 0o4000 and os.stat(special / label / "su").st_mode & 0o4000


# -- faults fail cleanly ----------------------------------------------------------------------------
@pytest.fixture
def small_target(workdir):
    """The config's target directory on a 3 MiB tmpfs."""
    t = workdir / "backups"
    t.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(t)], check=True)
    yield t
    subprocess.run(["umount", "-l", str(t)], check=False)


def test_a_full_target_fails_with_one_message_and_keeps_nothing(subvol, workdir, small_target):
    vol, db = app_volume(subvol, big=1 << 20)
    cfg = write_config(workdir, job(vol, db))
    first = last_line(snapagent("backup", "app", config=cfg, check=True))  # 1 MiB of noise fits
    (vol / "more.bin").write_bytes(os.urandom(4 << 20))  # 5 MiB do not
    r = snapagent("backup", "app", config=cfg)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "target 'local' cannot store" in r.stderr and "No space left on device" in r.stderr, r.stderr
    assert [b["id"] for b in json.loads(snapagent("list", "--json", config=cfg, check=True).stdout)] == [first]
    assert not [p for p in (small_target / "app").iterdir() if p.name.startswith(".")]
    assert snapshots(vol) == [] and journals(workdir) == []
    # with the space the last backup needed gone, preflight refuses before taking anything
    junk = small_target / "junk"
    free = shutil.disk_usage(small_target).free
    junk.write_bytes(b"\0" * (free - (64 << 10)))
    r = snapagent("backup", "app", config=cfg)
    assert r.returncode == 1 and "free, but the last backup of job 'app'" in r.stderr, r.stderr
    assert snapshots(vol) == [] and journals(workdir) == []


@pytest.mark.parametrize("fault", ["missing", "truncated", "bit flip", "symlink", "fifo", "directory"])
def test_a_damaged_artifact_is_one_message(subvol, workdir, fault):
    vol, db = app_volume(subvol)
    cfg = write_config(workdir, job(vol, db))
    bid = last_line(snapagent("backup", "app", config=cfg, check=True))
    art = next((workdir / "backups" / "app" / bid).glob("00-*"))
    data = art.read_bytes()
    art.unlink()
    if fault == "truncated":
        art.write_bytes(data[: len(data) // 2])
    elif fault == "bit flip":
        art.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif fault == "symlink":
        (workdir / "elsewhere").write_bytes(data)
        art.symlink_to(workdir / "elsewhere")
    elif fault == "fifo":
        os.mkfifo(art)
    elif fault == "directory":
        art.mkdir()
    for cmd in (["verify", bid], ["restore", bid, "--to", str(workdir / "dest")], ["drill", bid]):
        r = snapagent(*cmd, config=cfg, timeout=60)
        assert r.returncode == 1 and "Traceback" not in r.stderr and "internal error" not in r.stderr, (cmd, r.stderr)
        assert "00-" in r.stdout + r.stderr
    assert not (workdir / "dest").exists() and journals(workdir) == []


def test_an_export_that_fails_is_one_message(subvol, workdir):
    vol, db = app_volume(subvol)
    switch = workdir / "fail"
    switch.touch()
    cfg = with_tool(write_config(workdir, job(vol, db)), "tar",
                    failing_tool(workdir / "failing-tar", "tar", ["--create"], switch))
    r = snapagent("backup", "app", config=cfg)
    assert r.returncode == 1 and "export of" in r.stderr and "injected failure" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert json.loads(snapagent("list", "--json", config=cfg, check=True).stdout) == []
    assert snapshots(vol) == [] and journals(workdir) == []
    assert not [p for p in (workdir / "backups" / "app").iterdir()]


def test_dest_that_is_a_symlink_or_not_empty_is_refused(subvol, workdir):
    vol, db = app_volume(subvol)
    cfg = write_config(workdir, job(vol, db))
    bid = last_line(snapagent("backup", "app", config=cfg, check=True))
    victim = workdir / "victim"
    victim.mkdir()
    (workdir / "dest link").symlink_to(victim)
    r = snapagent("restore", bid, "--to", str(workdir / "dest link"), config=cfg)
    assert r.returncode == 1 and "is a symlink; restore refuses to follow it" in r.stderr, r.stderr
    assert list(victim.iterdir()) == []
    (victim / "keep").write_text("x")
    r = snapagent("restore", bid, "--to", str(victim), config=cfg)
    assert r.returncode == 1 and "is not empty; use --force" in r.stderr and list(victim.iterdir()) == [victim / "keep"]
    assert journals(workdir) == []


def test_a_state_dir_that_cannot_be_written_is_refused_in_preflight(subvol, workdir):
    vol, db = app_volume(subvol)
    ro = workdir / "ro"
    ro.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], check=True)
    try:
        cfg = write_config(workdir, job(vol, db))
        cfg.write_text(cfg.read_text().replace(toml_str(workdir / "state"), toml_str(ro / "state"), 1))
        r = snapagent("backup", "app", config=cfg)
        assert r.returncode == 1 and f"state_dir {ro / 'state'} is not writable" in r.stderr, r.stderr
        assert snapshots(vol) == []
    finally:
        subprocess.run(["umount", str(ro)], check=False)

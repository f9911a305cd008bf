"""Shared fixtures: capability probes that skip with a printed reason (and fail under CI=true),
a real btrfs filesystem on a loop device, config writing, and running the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI") == "true"
sys.path.insert(0, str(ROOT / "tests"))


def need(condition: bool, reason: str) -> None:
    """Skip (printing why) when ``condition`` is false; under CI=true fail instead: CI runs every tier."""
    if condition:
        return
    msg = f"{reason}"
    print(f"\nSKIP: {msg}", file=sys.stderr)
    if IN_CI:
        pytest.fail(f"CI must run every tier, but: {msg}")
    pytest.skip(msg)


def pytest_report_header(config):
    caps = {
        "root": os.geteuid() == 0,
        "btrfs-progs": shutil.which("mkfs.btrfs") is not None,
        "tar": shutil.which("tar") is not None,
        "CI": IN_CI,
    }
    return "snapagent capabilities: " + ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in caps.items())


@pytest.fixture(scope="session")
def btrfs_root(tmp_path_factory):
    """A fresh btrfs filesystem (1 GiB, sparse file on a loop device) mounted for the session."""
    need(os.geteuid() == 0, "needs root for loop devices and mounts")
    need(shutil.which("mkfs.btrfs") is not None, "needs btrfs-progs (run scripts/bootstrap.sh --tests)")
    base = tmp_path_factory.mktemp("btrfs")
    img, mnt = base / "fs.img", base / "mnt"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(1 << 30)
    subprocess.run(["mkfs.btrfs", "-q", str(img)], check=True, capture_output=True)
    r = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True, text=True)
    need(r.returncode == 0, f"cannot mount a btrfs loop device: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.fixture
def subvol(btrfs_root):
    """Factory: create a new btrfs subvolume (unique name, may hold spaces etc.) and return its path."""
    made = []

    def make(name: str = "vol") -> Path:
        p = btrfs_root / f"{name}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["btrfs", "subvolume", "create", str(p)], check=True, capture_output=True)
        made.append(p)
        return p

    yield make
    for p in made:
        for snapdir in (p / ".snapagent-snapshots",):
            if snapdir.is_dir():
                for s in snapdir.iterdir():
                    subprocess.run(["btrfs", "subvolume", "delete", str(s)], capture_output=True)
        subprocess.run(["btrfs", "subvolume", "delete", str(p)], capture_output=True)


def toml_str(s: str) -> str:
    return json.dumps(str(s))  # a JSON string is a valid TOML basic string


@pytest.fixture
def workdir(tmp_path):
    """A directory holding the config, the state dir and the directory target of one test."""
    (tmp_path / "state").mkdir()
    return tmp_path


def write_config(workdir: Path, jobs: str, extra: str = "", agent: str = "") -> Path:
    """Write a config with the agent state and a `local` directory target under ``workdir``; return its path.

    ``agent`` adds lines to ``[agent]``; ``extra`` adds sections before the jobs."""
    cfg = workdir / "snapagent.toml"
    cfg.write_text(
        f"[agent]\nstate_dir = {toml_str(workdir / 'state')}\n{agent}\n"
        f"[targets.local]\ntype = \"directory\"\npath = {toml_str(workdir / 'backups')}\n\n{extra}\n{jobs}\n"
    )
    return cfg


def snapagent(*args: str, config: Path | None = None, check: bool = False, env: dict | None = None,
              timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real CLI (``python -m snapagent``) and return the CompletedProcess (text)."""
    argv = [sys.executable, "-m", "snapagent"]
    if config is not None:
        argv += ["-c", str(config)]
    argv += list(args)
    e = dict(os.environ)
    e.update(env or {})
    r = subprocess.run(argv, capture_output=True, text=True, env=e, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"snapagent {' '.join(args)} -> {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r

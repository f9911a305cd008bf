"""The kill matrix: SIGKILL and SIGTERM at each phase of a backup, a restore and a drill, on real
btrfs with a live SQLite writer. Each phase is held open by a slowed tool (``[agent] tools``), the
agent is signalled there, and afterwards:

- the writer commits again within ``max_freeze`` + 1 s of the signal;
- nothing of the killed run is listed — or, killed after its commit, it is complete and verifies;
- ``snapagent cleanup`` (after SIGKILL; SIGTERM needs none) leaves no snapshot, partial backup,
  journal, scratch copy, temp dir or mount;
- the next backup succeeds.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers.cli import HELPERS, last_line, snapagent, toml_str, write_config
from tests.helpers.snapplaces import snapdir as snapdir_of
from tests.helpers.wrappers import slow_tool
from tests.torture.check import record

pytestmark = [pytest.mark.root, pytest.mark.btrfs]
MAX_FREEZE = 5.0
# phase -> (tool, the argument that marks the call to slow down, extra config for the job)
PHASES = {
    "quiesce": (None, None, "pre"),
    "snapshot": ("btrfs", "snapshot", ""),
    "export": ("tar", "--create", ""),
    "commit": ("btrfs", "--version", ""),  # the manifest's tool versions: artifacts written, not committed
    "release": ("btrfs", "delete", ""),
}


class Writer:
    def __init__(self, db: Path, ack: Path):
        self.ack = ack
        self.proc = subprocess.Popen([sys.executable, str(HELPERS / "writer.py"), str(db), str(ack)],
                                     stdout=subprocess.DEVNULL)
        try:
            self.wait_acks(50, 30)
        except BaseException:
            self.stop()
            raise

    def times(self) -> list[float]:
        if not self.ack.exists():
            return []
        return [float(ln.split()[1]) for ln in self.ack.read_text().splitlines() if len(ln.split()) == 2]

    def wait_acks(self, n: int, limit: float) -> None:
        end = time.monotonic() + limit
        while len(self.times()) < n:
            assert self.proc.poll() is None and time.monotonic() < end, "the writer made no progress"
            time.sleep(0.02)

    def first_after(self, t: float, limit: float) -> float | None:
        end = time.monotonic() + limit
        while time.monotonic() < end:
            later = [x for x in self.times() if x > t]
            if later:
                return min(later)
            time.sleep(0.02)
        return None

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def app(subvol, workdir):
    vol = subvol("kill matrix")
    db = vol / "app.db"
    w = Writer(db, workdir / "acks")
    yield vol, db, w
    w.stop()


def config(workdir: Path, vol: Path, db: Path, phase: str | None = None, tools: dict | None = None) -> Path:
    pre = ""
    if phase == "quiesce":  # a second quiescer whose `pre` runs while SQLite's lock is held
        marker = workdir / "marker"
        pre = (f'[[jobs.app.quiesce]]\ntype = "command"\nname = "slow"\n'
               f'pre = [{toml_str(sys.executable)}, {toml_str(HELPERS / "slowpre.py")}, {toml_str(marker)}, "30"]\n'
               f'timeout = "60s"\n')
    agent = "".join(f"tools.{k} = {toml_str(v)}\n" for k, v in (tools or {}).items())
    cfg = write_config(workdir, f'[jobs.app]\ndriver = "btrfs"\nvolumes = [{toml_str(vol)}]\ntarget = "local"\n'
                                f'max_freeze = "{MAX_FREEZE}s"\n[[jobs.app.quiesce]]\ntype = "sqlite"\n'
                                f'path = {toml_str(db)}\n{pre}', agent=agent)
    # one file per variant: the slowed config must not replace the plain one
    return cfg.rename(cfg.with_name(f"snapagent-{phase or 'plain'}-{'-'.join(sorted(tools or {})) or 'none'}.toml"))


def leftovers(workdir: Path, vol: Path) -> dict:
    snapdir = snapdir_of(vol)
    backups = workdir / "backups" / "app"
    scratch = workdir / "state" / "drill"
    return {
        "snapshots": sorted(p.name for p in snapdir.iterdir()) if snapdir.exists() else [],
        "partials": sorted(p.name for p in backups.iterdir() if p.name.startswith(".")) if backups.exists() else [],
        "journals": sorted(p.name for p in (workdir / "state").rglob("*.jsonl")),
        "scratch": sorted(p.name for p in scratch.iterdir()) if scratch.exists() else [],
        "temps": sorted(p.name for p in Path(tempfile.gettempdir()).glob("snapagent-*")),
        "mounts": [ln for ln in Path("/proc/self/mounts").read_text().splitlines() if str(workdir) in ln],
    }


CLEAN = {"snapshots": [], "partials": [], "journals": [], "scratch": [], "temps": [], "mounts": []}


def start(cfg: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "snapagent", "-c", str(cfg), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_marker(agent: subprocess.Popen, marker: Path, limit: float = 60) -> None:
    end = time.monotonic() + limit
    while not marker.exists():
        if agent.poll() is not None:
            pytest.fail(f"the agent ended before the phase: {agent.communicate()}")
        assert time.monotonic() < end, "the phase was never reached"
        time.sleep(0.01)
    time.sleep(0.2)


def kill_orphans(*needles: str) -> None:
    """Slowed tools and hooks of a SIGKILLed agent sleep on; they hold nothing (the agent's
    lock, pipes and journal died with it) — stop them so they cannot act later."""
    for p in psutil.process_iter(["cmdline"]):
        if p.pid != psutil.Process().pid and any(n in " ".join(p.info["cmdline"] or []) for n in needles):
            p.kill()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("phase", list(PHASES))
def test_backup_killed_in_each_phase(app, workdir, phase, sig):
    vol, db, w = app
    tool, word, _ = PHASES[phase]
    marker = workdir / "marker"
    tools = {tool: slow_tool(workdir / f"slow-{tool}", tool, marker, 3 if phase == "release" else 30, when=word)} if tool else {}
    cfg = config(workdir, vol, db, phase, tools)
    agent = start(cfg, "backup", "app")
    wait_marker(agent, marker)
    hit = time.time()
    agent.send_signal(sig)
    out, err = agent.communicate(timeout=60)
    resumed = w.first_after(hit, MAX_FREEZE + 1)
    assert resumed is not None, f"the writer did not commit within max_freeze + 1 s of {sig.name} in {phase}"
    kill_orphans(str(workdir / "slow-"), str(HELPERS / "slowpre.py"))
    listed = json.loads(snapagent("list", "--json", config=config(workdir, vol, db), check=True).stdout)
    if sig == signal.SIGTERM:
        assert "Traceback" not in err
        if phase == "release":  # after the commit: the backup is kept, the run succeeds
            assert agent.returncode == 0 and len(listed) == 1, err
            assert "received after the backup was complete" in err
        else:
            assert agent.returncode == 1 and "interrupted by SIGTERM" in err and listed == [], err
            assert leftovers(workdir, vol) == CLEAN
    else:
        assert len(listed) == (1 if phase == "release" else 0), listed
        snapagent("cleanup", config=config(workdir, vol, db), check=True)
    for b in listed:
        snapagent("verify", b["id"], config=config(workdir, vol, db), check=True)
    assert leftovers(workdir, vol) == CLEAN
    print(f"\n{phase} {sig.name}: writer resumed {resumed - hit:.3f}s after the signal")
    record(kind="kill", check=f"backup killed in {phase} by {sig.name}", resumed_ms=round((resumed - hit) * 1000, 1),
           leftovers=0)
    time.sleep(1.05)  # backup ids have one-second resolution
    last_line(snapagent("backup", "app", config=config(workdir, vol, db), check=True))


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
@pytest.mark.parametrize("command", ["restore", "drill"])
def test_restore_and_drill_killed_while_extracting(app, workdir, command, sig):
    vol, db, w = app
    cfg = config(workdir, vol, db)
    bid = last_line(snapagent("backup", "app", config=cfg, check=True))
    marker = workdir / "marker"
    slow = config(workdir, vol, db, tools={"tar": slow_tool(workdir / "slow-tar", "tar", marker, 30, when="--extract")})
    dest = workdir / "dest"
    agent = start(slow, command, bid, *(["--to", str(dest)] if command == "restore" else []))
    wait_marker(agent, marker)
    assert leftovers(workdir, vol)["journals"]  # it holds something now
    agent.send_signal(sig)
    out, err = agent.communicate(timeout=60)
    kill_orphans(str(workdir / "slow-"))
    if sig == signal.SIGTERM:
        assert agent.returncode == 1 and "interrupted by SIGTERM" in err and "Traceback" not in err, err
    else:
        snapagent("cleanup", config=cfg, check=True)
    assert leftovers(workdir, vol) == CLEAN and not dest.exists()
    record(kind="kill", check=f"{command} killed while extracting by {sig.name}", leftovers=0)
    snapagent(command, bid, *(["--to", str(dest)] if command == "restore" else []), config=cfg, check=True)

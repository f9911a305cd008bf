"""The guest side of the benchmark's vm case: runs inside snapagent's test VM (qemu under TCG,
``tests/vm/test_bench_vm.py`` through the VM tier; ``bench/cases/vm.py`` boots it from the host).

Per filesystem (ZFS, LVM classic, LVM thin), with a SQLite writer committing every 2 ms on the
volume and snapagent's sqlite quiescer on it: the freeze window (from the manifest) vs the bare
snapshot command (``zfs snapshot``, ``lvcreate -s``) with the writer stopped (SIGSTOP), as the
quiescer's lock stops it during the freeze; and the writer's worst commit latency during a backup
vs during an idle window of the same length. On ZFS also a full vs an incremental ``zfs send -i``
backup at 1 % changed (``bench/cases/incremental.py``).

TCG emulates the CPU: absolute figures are several times the host's; the ratios against the bare
commands in the same VM are what carries over. snapagent runs in this process (a Python start
costs seconds under TCG; the freeze window does not include it either way).
"""

from __future__ import annotations

import contextlib
import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from bench.cases import incremental
from bench.core import ROOT, Context, Row, alternate, sh

WRITER = ROOT / "tests" / "helpers" / "writer.py"
PACE = 0.002
NOTE = "in the test VM under TCG: absolute figures are slow, the ratio to the bare command is the point"


def in_process_cli(cfg: Path) -> incremental.Cli:
    """A Cli running snapagent's main() in this process (see the module docstring)."""
    from snapagent.cli.main import main

    def cli(args: list[str]) -> tuple[int, str, str, float]:
        out, err = io.StringIO(), io.StringIO()
        t = time.perf_counter()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                rc = main(["-c", str(cfg), *args])
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else 1
        return rc, out.getvalue(), err.getvalue(), time.perf_counter() - t
    return cli


class Writer:
    """tests/helpers/writer.py on ``db``: one commit every 2 ms, each acknowledged with its time."""

    def __init__(self, db: Path, ack: Path):
        self.ack = ack
        self.proc = subprocess.Popen([sys.executable, str(WRITER), str(db), str(ack), str(PACE)])
        end = time.monotonic() + 120
        while len(self.acks()) < 50:
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"the SQLite writer on {db} did not get going")
            time.sleep(0.1)

    def acks(self) -> list[float]:
        try:
            return [float(line.split()[1]) for line in self.ack.read_text().splitlines() if len(line.split()) == 2]
        except FileNotFoundError:
            return []

    def worst_ms(self, t0: float, t1: float) -> float:
        """The longest a commit waited between ``t0`` and ``t1`` (wall clock): the widest gap
        between two acknowledgements (one of them inside), less the writer's pause."""
        times = self.acks()
        gaps = [b - a for a, b in zip(times, times[1:]) if b >= t0 and a <= t1]
        if not gaps:
            raise RuntimeError("the SQLite writer committed nothing during the measurement")
        return max(0.0, max(gaps) - PACE) * 1000

    def paused(self, fn: Callable[[], float]) -> float:
        """Run ``fn`` with the writer stopped (SIGSTOP) as a lock would block it; return what
        ``fn`` returns once the writer has committed again."""
        n = len(self.acks())
        self.proc.send_signal(signal.SIGSTOP)
        try:
            result = fn()
        finally:
            self.proc.send_signal(signal.SIGCONT)
        end = time.monotonic() + 60
        while len(self.acks()) <= n + 1 and time.monotonic() < end:
            time.sleep(0.05)
        return result

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def timed(create: list[str], undo: list[str]) -> Callable[[], float]:
    """The bare snapshot command: ``create`` timed (ms), then ``undo`` untimed."""
    def bare() -> float:
        t = time.perf_counter()
        sh(*create)
        ms = (time.perf_counter() - t) * 1000
        sh(*undo)
        return ms
    return bare


def freeze_and_latency(ctx: Context, fs: str, cfg: Path, writer: Writer, bare: Callable[[], float]) -> list[Row]:
    """Backups of job ``db`` alternated with idle windows as long as the last backup (quick: at
    most 2 s); after each idle window, the bare snapshot command ``bare`` (returns its ms). Returns
    the rows: freeze window vs the bare command, writer's worst latency during backups vs idle."""
    cli = in_process_cli(cfg)
    freeze: list[float] = []
    bare_ms: list[float] = []
    last, ended = [1.0], [0.0]

    def backup() -> float:
        time.sleep(max(0.0, ended[0] + 1.05 - time.time()))  # backup ids have one-second resolution
        t0 = time.time()
        rc, out, err, seconds = cli(["-q", "--json", "backup", "db"])
        t1 = time.time()
        if rc != 0:
            raise RuntimeError(f"{fs}: backup exited {rc}: {err.strip()[-2000:]}")
        freeze.append(json.loads(out)["freeze_window_ms"])
        last[0], ended[0] = seconds, t1
        return writer.worst_ms(t0, t1)

    def idle() -> float:
        t0 = time.time()
        time.sleep(min(last[0], 2.0) if ctx.quick else last[0])
        worst = writer.worst_ms(t0, time.time())
        # the writer is blocked during the bare command too, as by the quiescer's lock: with it
        # running, the command would compete with it for the VM's two CPUs, and lose
        bare_ms.append(writer.paused(bare))
        return worst

    during, without = alternate(backup, idle, ctx.runs, warmup=0 if ctx.quick else 1)
    freeze = freeze[-ctx.runs:]
    bare_ms = bare_ms[-ctx.runs:]
    cmd = {"zfs": "zfs snapshot", "lvm": "lvcreate -s -L", "lvm-thin": "lvcreate -s (thin)"}[fs]
    window = Row(f"freeze window, {fs}, SQLite writer every 2 ms", "ms", freeze, bare_ms, f"bare `{cmd}`, writer stopped",
                 "≤ 1.5 ×", note=NOTE)
    window.met = window.ratio is not None and window.ratio <= 1.5
    latency = Row(f"writer's worst commit latency, {fs}: during backups", "ms", during, without,
                  "no backup running")
    return [window, latency]


def sqlite_job(work: Path, driver: str, volume: str, db: Path, options: str = "") -> Path:
    """Write a config (state and target in ``work/<driver>``) with job ``db``: ``driver`` on ``volume``,
    the sqlite quiescer on ``db``; return its path."""
    work = work / driver
    work.mkdir()
    cfg = work / "snapagent.toml"
    cfg.write_text(f'[agent]\nstate_dir = {json.dumps(str(work / "state"))}\n'
                   f'[targets.local]\ntype = "directory"\npath = {json.dumps(str(work / "backups"))}\n'
                   f'[jobs.db]\ndriver = "{driver}"\nvolumes = [{json.dumps(volume)}]\ntarget = "local"\n'
                   f'max_freeze = "30s"\n[[jobs.db.quiesce]]\ntype = "sqlite"\npath = {json.dumps(str(db))}\n'
                   f'[jobs.db.options]\n{options}\n')
    cfg.chmod(0o600)
    return cfg


def zfs_rows(ctx: Context, pool: str, mountpoint: Callable[[str], Path]) -> list[Row]:
    """ZFS: freeze window, writer latency, and full vs incremental send, on datasets of ``pool``."""
    ds = f"{pool}/db"
    ctx.log(f"vm: zfs: freeze window and writer latency ({time.monotonic():.0f} s)")
    sh("zfs", "create", ds)
    db = mountpoint(ds) / "app.db"
    writer = Writer(db, ctx.work / "zfs-acks")
    bare = timed(["zfs", "snapshot", f"{ds}@bench"], ["zfs", "destroy", f"{ds}@bench"])
    try:
        rows = freeze_and_latency(ctx, "zfs", sqlite_job(ctx.work, "zfs", ds, db), writer, bare)
    finally:
        writer.stop()
    data = f"{pool}/data"
    ctx.log(f"vm: zfs: full vs incremental send ({time.monotonic():.0f} s)")
    sh("zfs", "create", data)
    files = incremental.make_data(mountpoint(data), ctx.scale(96, 8))
    sh("sync")
    work = ctx.work / "zfs-incr"
    work.mkdir()
    cfg = incremental.config(work, "zfs", data)
    backups = incremental.Backups(in_process_cli(cfg), work / "backups")
    return rows + incremental.compare(ctx, backups, files, "zfs send -i, in the test VM")


def lvm_rows(ctx: Context, vg: str, thin: bool) -> list[Row]:
    """LVM classic or thin: freeze window and writer latency on an ext4 LV of ``vg``."""
    fs = "lvm-thin" if thin else "lvm"
    lv = f"{vg}/{'thin' if thin else 'lv'}"
    ctx.log(f"vm: {fs}: freeze window and writer latency ({time.monotonic():.0f} s)")
    if thin:
        sh("lvcreate", "-q", "-y", "-L", "96M", "-T", f"{vg}/pool")
        sh("lvcreate", "-q", "-y", "-V", "64M", "-T", f"{vg}/pool", "-n", "thin")
        options, create = "max_data_percent = 95\n", ["lvcreate", "-q", "-s", "-n", "benchsnap", lv]
    else:
        sh("lvcreate", "-q", "-y", "-L", "64M", "-n", "lv", vg)
        options, create = 'snapshot_size = "32M"\n', ["lvcreate", "-q", "-s", "-L", "32M", "-n", "benchsnap", lv]
    where = ctx.work / f"{fs}-mnt"
    where.mkdir()
    sh("mkfs.ext4", "-q", f"/dev/{lv}")
    sh("mount", f"/dev/{lv}", where)
    try:
        writer = Writer(where / "app.db", ctx.work / f"{fs}-acks")
        bare = timed(create, ["lvremove", "-q", "-f", f"{vg}/benchsnap"])
        try:
            return freeze_and_latency(ctx, fs, sqlite_job(ctx.work, fs, lv, where / "app.db", options), writer, bare)
        finally:
            writer.stop()
    finally:
        subprocess.run(["umount", str(where)], capture_output=True)

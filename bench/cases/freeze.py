"""Benchmark case freeze: how long the writers are blocked, against what the kernel costs.

Rows:
- "freeze window, btrfs, no quiescer" — the manifest's window of ``snapagent backup`` of a
  subvolume without quiescers, in alternation with the bare ``btrfs subvolume snapshot -r``
  timed the same way (wall clock around the one command; its snapshots deleted afterwards).
- "SQLite on btrfs, writer every 2 ms: freeze window p50" and "… max" — the manifest's window
  of backups of a subvolume holding a WAL database under ``bench/latency_writer.py``.
- "same: window minus the snapshot command" — from the manifest's ``freeze`` split: what the
  window holds besides the kernel's work (locks, verify, release, snapagent's own overhead).
- "SQLite writer's worst commit latency during backups" — per backup, the worst latency of the
  commits that began while ``snapagent backup`` ran; baseline: the same writer's worst latency
  over an equally long stretch without a backup, in alternation. Not in ``--quick``: the same
  row for PostgreSQL (``mode = "checkpoint"``), when PostgreSQL 15 is installed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.core import ROOT, Context, Row, btrfs_volume, measure, sh, snapagent_argv

WRITER = ROOT / "bench" / "latency_writer.py"


def _config(ctx: Context, mnt: Path) -> Path:
    """A config with jobs ``plain`` (no quiescer) and ``app`` (SQLite) on two subvolumes of ``mnt``."""
    work = ctx.work / "freeze"
    (work / "state").mkdir(parents=True, exist_ok=True)
    cfg = work / "snapagent.toml"
    cfg.write_text(
        f'[agent]\nstate_dir = "{work / "state"}"\n\n'
        f'[targets.local]\ntype = "directory"\npath = "{work / "backups"}"\n\n'
        f'[jobs.plain]\ndriver = "btrfs"\nvolumes = ["{mnt / "plain"}"]\ntarget = "local"\n\n'
        f'[jobs.app]\ndriver = "btrfs"\nvolumes = ["{mnt / "app"}"]\ntarget = "local"\n'
        f'[[jobs.app.quiesce]]\ntype = "sqlite"\npath = "{mnt / "app" / "app.db"}"\n')
    return cfg


def _backup(ctx: Context, cfg: Path, job: str) -> tuple[float, float, float, dict]:
    """Run ``snapagent backup JOB``; return (start, end Unix time, window ms, the manifest's freeze record)."""
    start = time.time()
    m = measure(snapagent_argv(ctx, cfg, "backup", job))
    end = time.time()
    if m.rc != 0:
        raise RuntimeError(f"snapagent backup {job} failed: {m.stderr.strip()}")
    backup_id = m.stdout.strip().splitlines()[-1]
    shown = measure(snapagent_argv(ctx, cfg, "--json", "show", backup_id))
    doc = json.loads(shown.stdout)
    man = doc.get("manifest", doc)
    return start, end, float(man["freeze_window_ms"]), man.get("freeze") or {}


def _bare_snapshot(vol: Path, n: list[int]) -> float:
    """Time ``btrfs subvolume snapshot -r`` of ``vol`` (ms), the way an admin would run it; delete it."""
    n[0] += 1
    dest = vol.parent / f"bare-{n[0]}"
    t = time.perf_counter()
    subprocess.run(["btrfs", "subvolume", "snapshot", "-r", str(vol), str(dest)], check=True, capture_output=True)
    ms = (time.perf_counter() - t) * 1000
    # --commit-after, as snapagent releases its snapshots: neither side leaves the other an
    # uncommitted deletion to pay for in its snapshot's transaction commit
    sh("btrfs", "subvolume", "delete", "--commit-after", dest)
    return ms


def _overhead(freeze: dict) -> float:
    """What the window holds besides the snapshot commands (ms): snapagent's own cost."""
    return freeze["window_ms"] - sum(s["ms"] for s in freeze.get("steps", []) if s["phase"] == "snapshot")


def _plain(ctx: Context, cfg: Path, mnt: Path) -> list[Row]:
    windows: list[float] = []
    own: list[float] = []
    bare: list[float] = []
    n = [0]
    for i in range(ctx.runs + 1):  # the first pair warms up
        order = [0, 1] if i % 2 == 0 else [1, 0]
        for who in order:
            if who == 0:
                _, _, w, freeze = _backup(ctx, cfg, "plain")
                if i:
                    windows.append(w)
                    if freeze:
                        own.append(_overhead(freeze))
            else:
                b = _bare_snapshot(mnt / "plain", n)
                if i:
                    bare.append(b)
    ratio = (sorted(windows)[len(windows) // 2] / sorted(bare)[len(bare) // 2])
    rows = [Row("freeze window, btrfs, no quiescer", "ms", windows, bare, "btrfs subvolume snapshot -r",
                "≤ 1.5 ×", ratio <= 1.5)]
    if own:  # the manifest says how the window split
        rows.append(Row("same: window minus the snapshot command (snapagent's own part)", "ms", own))
    return rows


class _Writer:
    """``bench/latency_writer.py`` on ``db`` as a separate process."""

    def __init__(self, db: Path | str, out: Path, pg: bool = False):
        self.out = out
        self.proc = subprocess.Popen([sys.executable, str(WRITER), *(["--pg"] if pg else []), str(db), str(out), "0.002"])
        end = time.monotonic() + 30
        while not Path(str(out) + ".ready").exists():
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError("the latency writer did not start")
            time.sleep(0.01)

    def stop(self) -> list[tuple[float, float]]:
        """Stop it; return [(commit start, latency s)]."""
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        return [(float(a), float(b)) for a, b in (line.split() for line in self.out.read_text().splitlines())]


def _worst(commits: list[tuple[float, float]], start: float, end: float) -> float:
    """The worst latency (ms) of the commits that began in [start, end] (or were still waiting at start)."""
    lats = [lat for s, lat in commits if start <= s + lat and s <= end]
    return max(lats) * 1000 if lats else 0.0


def _with_writer(ctx: Context, cfg: Path, job: str, writer: "_Writer"):
    """Back ``job`` up under ``writer``, each backup followed by as long without one; return
    (windows ms, snapagent's own part ms, worst latencies ms during backups, the same without,
    commits)."""
    windows: list[float] = []
    own: list[float] = []
    busy: list[tuple[float, float]] = []
    idle: list[tuple[float, float]] = []
    try:
        time.sleep(0.5)
        _backup(ctx, cfg, job)  # warm-up
        for i in range(max(ctx.runs, 3)):
            start, end, window, freeze = _backup(ctx, cfg, job)
            windows.append(window)
            if freeze:
                own.append(_overhead(freeze))
            busy.append((start, end))
            t = time.time()
            time.sleep(end - start)  # the same writer, as long, without a backup
            idle.append((t, time.time()))
    finally:
        commits = writer.stop()
    return windows, own, [_worst(commits, s, e) for s, e in busy], [_worst(commits, s, e) for s, e in idle], commits


def _sqlite(ctx: Context, cfg: Path, mnt: Path) -> list[Row]:
    writer = _Writer(mnt / "app" / "app.db", ctx.work / "freeze" / "latencies.txt")
    windows, own, worst, calm, commits = _with_writer(ctx, cfg, "app", writer)
    p50 = sorted(windows)[len(windows) // 2]
    return [
        Row("SQLite on btrfs, writer every 2 ms: freeze window p50", "ms", windows, target="≤ 10 ms", met=p50 <= 10),
        Row("SQLite on btrfs, writer every 2 ms: freeze window max", "ms", [max(windows)]),
        *([Row("same: window minus the snapshot command (snapagent's own part)", "ms", own)] if own else []),
        Row("SQLite writer's worst commit latency during backups", "ms", worst, calm, "same writer, no backup",
            "≤ 20 ms", sorted(worst)[len(worst) // 2] <= 20,
            note=f"worst of all: {max(worst):.3g} ms; {len(commits)} commits"),
    ]


def _postgres(ctx: Context, mnt: Path) -> list[Row]:
    """The same writer row for PostgreSQL (mode checkpoint: writers are never locked; what they
    feel is the CHECKPOINT's I/O and the snapshot's). Skipped, with a note, without PostgreSQL 15."""
    sys.path.insert(0, str(ROOT))
    from tests.helpers import pg

    ok, why = pg.available()
    if not ok:
        ctx.log(f"freeze: PostgreSQL row skipped: {why}")
        return []
    sh("btrfs", "subvolume", "create", mnt / "pg")
    cluster = pg.Cluster(pg.pg_dir(mnt / "pg" / "data")).initdb().start()
    try:
        work = ctx.work / "freeze"
        cfg = work / "pg.toml"
        cfg.write_text((work / "snapagent.toml").read_text() +
                       f'\n[jobs.pg]\ndriver = "btrfs"\nvolumes = ["{mnt / "pg"}"]\ntarget = "local"\n'
                       f'[[jobs.pg.quiesce]]\ntype = "postgresql"\ndsn = "{cluster.dsn}"\nmode = "checkpoint"\n')
        writer = _Writer(cluster.dsn, work / "pg-latencies.txt", pg=True)
        _, _, worst, calm, commits = _with_writer(ctx, cfg, "pg", writer)
    finally:
        cluster.cleanup()
    return [Row("PostgreSQL writer's worst commit latency during backups", "ms", worst, calm,
                "same writer, no backup", "≤ 20 ms", sorted(worst)[len(worst) // 2] <= 20,
                note=f"worst of all: {max(worst):.3g} ms; {len(commits)} commits")]


def run(ctx: Context) -> list[Row]:
    with btrfs_volume(ctx, 512, "freeze") as mnt:
        for name in ("plain", "app"):
            sh("btrfs", "subvolume", "create", mnt / name)
        (mnt / "plain" / "data.bin").write_bytes(os.urandom(1 << 20))
        cfg = _config(ctx, mnt)
        rows = _plain(ctx, cfg, mnt)
        rows += _sqlite(ctx, cfg, mnt)
        if not ctx.quick:  # a cluster's start-up would take the quick run past a minute
            rows += _postgres(ctx, mnt)
        return rows

"""Benchmark case incremental: an incremental backup (``btrfs send -p``) after 1 % of the data
changed, against the full backup of the same subvolume — wall time, export phase, stream bytes
and stored bytes. Target: the incremental costs ≤ 5 % of the full in time and in bytes.

Data: one subvolume of 2 GiB (quick: 32 MiB) in 1 MiB files, half random, half compressible
log lines. Two jobs back the same subvolume up to a directory target (zstd): ``full`` (``mode =
"full"``, ``export = "send"``) and ``incr`` (``mode = "incremental"``: each backup sends the
difference from the previous one). Before each ``incr`` backup ~1 % of the bytes are rewritten in
64 KiB blocks at random places (untimed); ``full`` and ``incr`` alternate, and each full backup is
removed from the target after it was measured (disk space).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import time
from pathlib import Path
from typing import Callable

from bench.core import Context, Row, alternate, btrfs_volume, measure, sh, snapagent_argv

LINE = b"2026-11-22T00:00:00Z INFO request served path=/api/v1/items status=200 bytes=5123\n"
BLOCK = 64 << 10
MiB = 1 << 20
PCT = 1.0


def make_data(vol: Path, mb: int) -> list[Path]:
    """Fill ``vol`` with ``mb`` files of 1 MiB, odd ones random, even ones compressible text."""
    files = []
    text = (LINE * (MiB // len(LINE) + 1))[:MiB]
    for i in range(mb):
        p = vol / f"d{i // 64:02d}" / f"f{i:04d}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(os.urandom(MiB) if i % 2 else text)
        files.append(p)
    return files


def change(files: list[Path], pct: float, rng: random.Random) -> int:
    """Rewrite ~``pct`` % of the bytes of ``files`` in 64 KiB random blocks; return bytes written."""
    total = sum(f.stat().st_size for f in files)
    blocks = max(1, int(total * pct / 100) // BLOCK)
    for _ in range(blocks):
        f = rng.choice(files)
        with open(f, "r+b") as fh:
            fh.seek(rng.randrange(0, f.stat().st_size // BLOCK) * BLOCK)
            fh.write(os.urandom(BLOCK))
    return blocks * BLOCK


def config(work: Path, driver: str, volume: str, options: str = "") -> Path:
    """Write the config of jobs ``full`` and ``incr`` backing up ``volume`` with ``driver``
    (``options``: TOML lines of ``[jobs.<job>.options]``); return its path."""
    jobs = "".join(f'[jobs.{name}]\ndriver = "{driver}"\nvolumes = [{json.dumps(volume)}]\ntarget = "local"\n'
                   f'export = "send"\nmode = "{mode}"\n[jobs.{name}.options]\n{options}\n'
                   for name, mode in (("full", "full"), ("incr", "incremental")))
    cfg = work / "incremental.toml"
    cfg.write_text(f'[agent]\nstate_dir = {json.dumps(str(work / "state"))}\n'
                   f'[targets.local]\ntype = "directory"\npath = {json.dumps(str(work / "backups"))}\n{jobs}')
    cfg.chmod(0o600)
    return cfg


#: Runs the CLI with these arguments; returns (exit code, stdout, stderr, wall seconds).
Cli = Callable[[list[str]], "tuple[int, str, str, float]"]


def subprocess_cli(ctx: Context, cfg: Path) -> Cli:
    """A Cli running snapagent as an admin does: its own process, timed to its exit."""
    def cli(args: list[str]) -> tuple[int, str, str, float]:
        m = measure(snapagent_argv(ctx, cfg, *args))
        return m.rc, m.stdout, m.stderr, m.seconds
    return cli


class Backups:
    """Runs ``backup JOB`` through a Cli and keeps each one's figures: wall seconds, export
    seconds, stream and stored MiB, and whether it was incremental. Each backup of job ``full``
    is deleted from ``backups`` (the directory target's path) once measured."""

    def __init__(self, cli: Cli, backups: Path):
        self.cli, self.backups = cli, backups
        self.figures: dict[str, list[dict]] = {"full": [], "incr": []}
        self.last: dict[str, float] = {}

    def run(self, job: str) -> dict:
        # backup ids have one-second resolution: never two backups of one job in the same second
        time.sleep(max(0.0, self.last.get(job, 0.0) + 1.05 - time.time()))
        rc, out, err, seconds = self.cli(["-q", "--json", "backup", job])
        self.last[job] = time.time()
        if rc != 0:
            raise RuntimeError(f"backup {job} exited {rc}: {err.strip()[-2000:]}")
        man = json.loads(out)
        art = man["artifacts"][0]
        fig = {"wall": seconds, "export": man["phases_ms"].get("export", 0.0) / 1000,
               "stream": art.get("raw_size", art["size"]) / MiB, "stored": art["size"] / MiB,
               "incremental": bool(man["volumes"][0].get("incremental")), "phases": man["phases_ms"]}
        self.figures[job].append(fig)
        if job == "full":  # measured; keep the disk free for the next ones
            shutil.rmtree(self.backups / job / man["id"])
        return fig


def compare(ctx: Context, b: Backups, files: list[Path], what: str) -> list[Row]:
    """Alternate incremental backups (each after ~1 % of ``files`` was rewritten, untimed) with
    full ones; return the rows (incremental vs full: wall, export phase, stream, stored bytes).
    ``what`` names the setup in the first row's note."""
    rng = random.Random(1)
    changed: list[int] = []

    def incremental() -> float:
        changed.append(change(files, PCT, rng))
        sh("sync")
        return b.run("incr")["wall"]

    b.run("incr")  # the chain's full: every recorded backup of job incr is incremental
    alternate(incremental, lambda: b.run("full")["wall"], ctx.runs, warmup=0 if ctx.quick else 1)
    full, incr = b.figures["full"][-ctx.runs:], b.figures["incr"][-ctx.runs:]
    if not all(f["incremental"] for f in incr) or any(f["incremental"] for f in full):
        raise RuntimeError("incremental: a backup of job incr was not incremental, or one of job full was")
    for job, figs in (("incremental", incr), ("full", full)):  # where the time goes: the last one's phases
        ctx.log(f"{what}: phases of the last {job} backup (ms): "
                + ", ".join(f"{k} {v:.0f}" for k, v in figs[-1]["phases"].items()))
    total = sum(f.stat().st_size for f in files)
    note = f"{what}, {total // MiB} MiB, {100 * statistics.mean(changed) / total:.2g} % rewritten in 64 KiB blocks"
    rows = []
    for key, figure, unit in (("wall", "wall time", "s"), ("export", "export phase", "s"),
                              ("stream", "send stream", "MiB"), ("stored", "stored bytes", "MiB")):
        row = Row(f"incremental backup ({what.split()[0]}): {figure}", unit, [f[key] for f in incr],
                  [f[key] for f in full], "the full backup", "≤ 0.05 ×", note="" if rows else note)
        row.met = row.ratio is not None and row.ratio <= 0.05
        rows.append(row)
    return rows


def run(ctx: Context) -> list[Row]:
    mb = ctx.scale(2048, 32)
    with btrfs_volume(ctx, mb * 3 + 512, "incr") as mnt:
        vol = mnt / "data"
        sh("btrfs", "subvolume", "create", vol)
        ctx.log(f"incremental: writing {mb} MiB")
        files = make_data(vol, mb)
        sh("sync")
        cfg = config(ctx.work, "btrfs", str(vol))
        return compare(ctx, Backups(subprocess_cli(ctx, cfg), ctx.work / "backups"), files, "btrfs send -p")

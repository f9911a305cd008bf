"""Benchmark case incremental: an incremental backup (``btrfs send -p``) after 1 % of the data
changed, against the full backup of the same subvolume — wall time, export phase, stream bytes
and stored bytes. Target: the incremental costs ≤ 5 % of the full in time and in bytes.

Data: one subvolume of 512 MiB (quick: 32 MiB) in 1 MiB files, half random, half compressible
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


def config(work: Path, vol: Path) -> Path:
    """Write the benchmark's snapagent config (jobs ``full`` and ``incr`` on ``vol``); return its path."""
    jobs = "".join(f'[jobs.{name}]\ndriver = "btrfs"\nvolumes = [{json.dumps(str(vol))}]\ntarget = "local"\n'
                   f'export = "send"\nmode = "{mode}"\n' for name, mode in (("full", "full"), ("incr", "incremental")))
    cfg = work / "snapagent.toml"
    cfg.write_text(f'[agent]\nstate_dir = {json.dumps(str(work / "state"))}\n'
                   f'[targets.local]\ntype = "directory"\npath = {json.dumps(str(work / "backups"))}\n{jobs}')
    cfg.chmod(0o600)
    return cfg


class Backups:
    """Runs ``backup JOB`` and keeps each one's figures: wall seconds, export seconds, stream and
    stored MiB, and whether it was incremental."""

    def __init__(self, ctx: Context, cfg: Path, backups: Path):
        self.ctx, self.cfg, self.backups = ctx, cfg, backups
        self.figures: dict[str, list[dict]] = {"full": [], "incr": []}
        self.last: dict[str, float] = {}

    def run(self, job: str) -> dict:
        # backup ids have one-second resolution: never two backups of one job in the same second
        time.sleep(max(0.0, self.last.get(job, 0.0) + 1.05 - time.time()))
        m = measure(snapagent_argv(self.ctx, self.cfg, "-q", "--json", "backup", job))
        self.last[job] = time.time()
        if m.rc != 0:
            raise RuntimeError(f"backup {job} exited {m.rc}: {m.stderr.strip()[-2000:]}")
        man = json.loads(m.stdout)
        art = man["artifacts"][0]
        fig = {"wall": m.seconds, "export": man["phases_ms"].get("export", 0.0) / 1000,
               "stream": art.get("raw_size", art["size"]) / MiB, "stored": art["size"] / MiB,
               "incremental": bool(man["volumes"][0].get("incremental"))}
        self.figures[job].append(fig)
        if job == "full":  # measured; keep the disk free for the next ones
            shutil.rmtree(self.backups / job / man["id"])
        return fig


def run(ctx: Context) -> list[Row]:
    mb = ctx.scale(512, 32)
    rng = random.Random(1)
    with btrfs_volume(ctx, mb * 3 + 512, "incr") as mnt:
        vol = mnt / "data"
        sh("btrfs", "subvolume", "create", vol)
        ctx.log(f"incremental: writing {mb} MiB")
        files = make_data(vol, mb)
        sh("sync")
        b = Backups(ctx, config(ctx.work, vol), ctx.work / "backups")
        changed: list[int] = []

        def incremental() -> float:
            changed.append(change(files, PCT, rng))
            sh("sync")
            return b.run("incr")["wall"]

        # the warm-up's incr backup is the chain's full; every recorded one is incremental
        alternate(incremental, lambda: b.run("full")["wall"], ctx.runs)
    full, incr = b.figures["full"][1:], b.figures["incr"][1:]
    if not all(f["incremental"] for f in incr) or any(f["incremental"] for f in full):
        raise RuntimeError("incremental: a backup of job incr was not incremental, or one of job full was")
    pct = 100 * statistics.mean(changed) / (mb * MiB)
    note = f"btrfs send -p, {mb} MiB, {pct:.2g} % rewritten in 64 KiB blocks"
    rows = []
    for key, figure, unit in (("wall", "incremental backup: wall time", "s"),
                              ("export", "incremental backup: export phase", "s"),
                              ("stream", "incremental backup: send stream", "MiB"),
                              ("stored", "incremental backup: stored bytes", "MiB")):
        row = Row(figure, unit, [f[key] for f in incr], [f[key] for f in full], "the full backup", "≤ 0.05 ×",
                  note="" if rows else note)
        row.met = row.ratio is not None and row.ratio <= 0.05
        rows.append(row)
    return rows


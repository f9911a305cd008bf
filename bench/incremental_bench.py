#!/usr/bin/env python3
"""Incremental vs full backup on btrfs: time and bytes of a ``btrfs send -p`` backup after ~1 % of
the data changed, against the full backup of the same subvolume.

Makes a btrfs filesystem on a loop device (root), a subvolume of DATA MiB (half random, half
compressible, in 1 MiB files), takes a full backup with snapagent (``export = "send"``, ``mode =
"incremental"``, the directory target with zstd), rewrites ~PCT % of the data in 64 KiB blocks
spread over the files, takes the incremental, and prints for both: wall time of the backup
command, the export phase, the stream bytes (raw) and the stored bytes, and the ratios
incremental/full. Usage (as root):
    bench/incremental_bench.py [--mb 512] [--pct 1]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINE = b"2026-11-22T00:00:00Z INFO request served path=/api/v1/items status=200 bytes=5123\n"
BLOCK = 64 << 10


def sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


def make_data(vol: Path, mb: int) -> list[Path]:
    files = []
    for i in range(mb):
        p = vol / f"d{i // 64:02d}" / f"f{i:04d}.bin"
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(os.urandom(1 << 20) if i % 2 else (LINE * ((1 << 20) // len(LINE) + 1))[: 1 << 20])
        files.append(p)
    return files


def change(files: list[Path], pct: float, rng: random.Random) -> int:
    """Rewrite ~pct % of the bytes of ``files`` in 64 KiB blocks at random places; return bytes written."""
    total = sum(f.stat().st_size for f in files)
    blocks = max(1, int(total * pct / 100) // BLOCK)
    for _ in range(blocks):
        f = rng.choice(files)
        with open(f, "r+b") as fh:
            fh.seek(rng.randrange(0, f.stat().st_size // BLOCK) * BLOCK)
            fh.write(os.urandom(BLOCK))
    return blocks * BLOCK


def backup(cfg: Path) -> dict:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "snapagent", "-q", "-c", str(cfg), "--json", "backup", "bench"],
                       capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"backup failed: {r.stderr}")
    m = json.loads(r.stdout)
    art = m["artifacts"][0]
    return {"wall": wall, "export_s": m["phases_ms"].get("export", 0) / 1000, "raw": art["raw_size"],
            "stored": art["size"], "incremental": m["volumes"][0]["incremental"], "phases": m["phases_ms"]}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=512)
    ap.add_argument("--pct", type=float, default=1.0)
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (loop device, mount, btrfs)")
    tmp = Path(tempfile.mkdtemp(prefix="snapagent-incr-bench-"))
    img, mnt = tmp / "fs.img", tmp / "mnt"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate((a.mb * 3 + 512) << 20)
    sh("mkfs.btrfs", "-q", str(img))
    sh("mount", "-o", "loop", str(img), str(mnt))
    try:
        vol = mnt / "data"
        sh("btrfs", "subvolume", "create", str(vol))
        files = make_data(vol, a.mb)
        sh("sync")
        cfg = tmp / "snapagent.toml"
        cfg.write_text(f'[agent]\nstate_dir = "{tmp}/state"\n[targets.local]\ntype = "directory"\npath = "{tmp}/backups"\n'
                       f'[jobs.bench]\ndriver = "btrfs"\nvolumes = ["{vol}"]\ntarget = "local"\nexport = "send"\n'
                       'mode = "incremental"\n')
        full = backup(cfg)
        written = change(files, a.pct, random.Random(1))
        sh("sync")
        time.sleep(1.1)  # backup ids have one-second resolution
        incr = backup(cfg)
        assert not full["incremental"] and incr["incremental"]
        print(f"btrfs, {a.mb} MiB in {len(files)} files (half random, half compressible); "
              f"changed {written >> 10} KiB ({100 * written / (a.mb << 20):.2f} %) in 64 KiB blocks")
        print(f"{'':12} {'wall s':>8} {'export s':>9} {'stream bytes':>14} {'stored bytes':>14}")
        for name, r in (("full", full), ("incremental", incr)):
            print(f"{name:12} {r['wall']:8.2f} {r['export_s']:9.2f} {r['raw']:14,} {r['stored']:14,}")
        print(f"{'ratio':12} {incr['wall'] / full['wall']:8.3f} {incr['export_s'] / max(full['export_s'], 1e-9):9.3f} "
              f"{incr['raw'] / full['raw']:14.4f} {incr['stored'] / full['stored']:14.4f}")
        for name, r in (("full", full), ("incremental", incr)):
            print(f"phases of the {name} (ms): " + ", ".join(f"{k} {v:.0f}" for k, v in r["phases"].items()))
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        subprocess.run(["rm", "-rf", "--one-file-system", str(tmp)], capture_output=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

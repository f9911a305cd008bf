#!/usr/bin/env python3
"""Export throughput: snapagent's data path vs the equivalent shell pipeline.

snapagent: `tar` (argv, via the runner) → Python zstd (threads) + sha256 of the stored bytes →
fsync'd file (the directory target). Shell: `tar … | zstd -3 -T0 | tee FILE | sha256sum`, then
`sync FILE`. Both read the same directory (page cache warmed first). Prints seconds, MB/s and the
ratio snapagent/shell (lower is better; 1.0 = as fast as the pipeline). Usage:
    bench/export_bench.py [DIR] [--mb 512] [--runs 3]
Without DIR it makes a temp directory of mixed data (half random, half compressible).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from snapagent.targets.directory import DirectoryConfig, DirectoryTarget  # noqa: E402
from snapagent.util import tar  # noqa: E402
from snapagent.util.runner import Runner, format_argv  # noqa: E402


class _NullJournal:
    def open(self, *a, **k): pass
    def close(self, *a, **k): pass


def make_data(d: Path, mb: int) -> None:
    line = b"2026-11-22T00:00:00Z INFO request served path=/api/v1/items status=200 bytes=5123\n"
    for i in range(mb // 16):
        with open(d / f"f{i:04d}.bin", "wb") as f:
            if i % 2:
                f.write(os.urandom(16 << 20))
            else:
                f.write(line * ((16 << 20) // len(line)))


def run_snapagent(src: Path, out: Path) -> float:
    t = DirectoryTarget("bench", DirectoryConfig(path=out))
    t0 = time.perf_counter()
    w = t.begin("bench", f"b{time.time_ns()}", _NullJournal())
    proc = Runner().stream(tar.create_argv(src), mutating=False)
    w.add_artifact("data.tar", proc.stdout)
    proc.wait()
    w.commit({"id": "x"})
    return time.perf_counter() - t0


def run_shell(src: Path, out: Path) -> float:
    out.mkdir(parents=True, exist_ok=True)
    f = out / f"shell-{time.time_ns()}.tar.zst"
    pipeline = (f"{format_argv(tar.create_argv(src))} | zstd -q -3 -T0 | tee {format_argv([str(f)])} "
                f"| sha256sum >/dev/null && sync {format_argv([str(f)])}")
    t0 = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], check=True)
    return time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?")
    ap.add_argument("--mb", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="snapagent-bench-"))
    try:
        src = Path(a.dir) if a.dir else tmp / "src"
        if not a.dir:
            src.mkdir()
            make_data(src, a.mb)
        size = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
        subprocess.run(["tar", "-cf", "/dev/null", "-C", str(src), "."], check=True)  # warm the cache
        res = {"snapagent": [], "shell": []}
        for _ in range(a.runs):
            res["shell"].append(run_shell(src, tmp / "out-shell"))
            res["snapagent"].append(run_snapagent(src, tmp / "out-snapagent"))
            shutil.rmtree(tmp / "out-shell", ignore_errors=True)
            shutil.rmtree(tmp / "out-snapagent", ignore_errors=True)
        mb = size / 1e6
        print(f"export of {mb:.0f} MB ({os.cpu_count()} cores), best of {a.runs}:")
        for k, v in res.items():
            print(f"  {k:<10} {min(v):6.2f} s  {mb / min(v):7.1f} MB/s")
        print(f"  ratio snapagent/shell = {min(res['snapagent']) / min(res['shell']):.2f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark works: ``bench/run.py --quick --json F`` (the host cases; the vm case's quick mode
runs in the VM tier, tests/vm/test_bench_vm.py) exits 0, every case produced rows, every row has
numeric samples and its line in the printed table, and the incremental case's rows are there.
Figures are printed, never asserted (a loaded CI machine says nothing about speed)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench import run as bench_run
from tests.helpers.caps import need

ROOT = Path(__file__).resolve().parents[2]
INCREMENTAL = ["wall time", "export phase", "send stream", "stored bytes"]


def numeric(samples) -> bool:
    return bool(samples) and all(isinstance(v, (int, float)) and math.isfinite(v) for v in samples)


def test_bench_quick(tmp_path: Path) -> None:
    need(os.geteuid() == 0, "needs root: the benchmark makes loop-backed btrfs volumes")
    need(shutil.which("mkfs.btrfs") is not None, "needs btrfs-progs")
    out = tmp_path / "bench.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--json", str(out),
                        "--work", str(tmp_path)], capture_output=True, text=True, timeout=900, cwd=ROOT)
    print(r.stdout)
    assert r.returncode == 0, f"bench/run.py --quick exited {r.returncode}\n{r.stderr[-4000:]}"
    rows = json.loads(out.read_text())

    host_cases = [c for c in bench_run.CASES if c not in bench_run.QUICK_ELSEWHERE]
    empty = [c for c in host_cases if not any(row["case"] == c for row in rows)]
    assert not empty, f"case(s) without rows: {empty}"
    table = r.stdout.splitlines()
    for row in rows:
        assert numeric(row["ours"]), row
        assert row["base"] is None or numeric(row["base"]), row
        assert any(line.startswith(f"| {row['figure']}") for line in table), f"no table line for {row['figure']!r}"

    mine = {row["figure"]: row for row in rows if row["case"] == "incremental"}
    assert sorted(mine) == sorted(f"incremental backup (btrfs): {f}" for f in INCREMENTAL), sorted(mine)
    stream = mine["incremental backup (btrfs): send stream"]
    assert stream["base_name"] == "the full backup" and stream["median"] < stream["base_median"], stream

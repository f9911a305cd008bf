#!/usr/bin/env python3
"""snapagent's benchmark: every figure of the README's "Performance" table, each measured in
alternation with what an admin would run instead, printed as one table of medians, spreads and
ratios. Builds its own data (loop-backed btrfs volumes, a mixed file tree, live databases under
writers); needs root.

    .venv/bin/python bench/run.py            # the full run (minutes)
    .venv/bin/python bench/run.py --quick    # small data, few runs: proves the benchmark works (CI)
    .venv/bin/python bench/run.py --only freeze,startup --json out.json

Figures are printed, never asserted: a missed target is marked "missed" in the table.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.core import Context, Row, render  # noqa: E402

#: The cases in table order (modules of bench/cases/).
CASES = ["freeze", "datapath", "startup", "incremental", "vm"]
#: Cases a --quick run leaves out unless --only names them, and why.
QUICK_ELSEWHERE = {"vm": "booting the test VM costs minutes; its quick mode runs in the VM tier "
                         "(tests/vm/test_bench_vm.py)"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small data and few runs (CI)")
    ap.add_argument("--runs", type=int, help="runs per case (default 7, quick 2)")
    ap.add_argument("--only", help=f"comma-separated cases of: {', '.join(CASES)}")
    ap.add_argument("--json", type=Path, help="also write the rows as JSON to this file")
    ap.add_argument("--work", type=Path, help="scratch directory (default: a temp dir under /var/tmp)")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/run.py: run as root (loop devices, mounts, btrfs)", file=sys.stderr)
        return 2
    names = a.only.split(",") if a.only else [n for n in CASES if not (a.quick and n in QUICK_ELSEWHERE)]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        print(f"bench/run.py: --only: unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="snapagent-bench-", dir=a.work or "/var/tmp"))
    ctx = Context(quick=a.quick, runs=a.runs or (2 if a.quick else 7), work=work)
    rows: list[Row] = []
    failed: list[str] = []
    try:
        for name in CASES:
            if name not in names:
                if a.quick and not a.only and name in QUICK_ELSEWHERE:
                    ctx.log(f"== {name}: left out of --quick: {QUICK_ELSEWHERE[name]}")
                continue
            ctx.log(f"== {name}")
            try:
                case_rows = importlib.import_module(f"bench.cases.{name}").run(ctx)
                for r in case_rows:
                    r.case = name
                rows += case_rows
            except Exception:  # noqa: BLE001 - one broken case must not hide the others' figures
                failed.append(name)
                traceback.print_exc()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(render(rows))
    if a.json:
        a.json.write_text(json.dumps([r.as_dict() for r in rows], indent=1))
    if failed:
        print(f"bench/run.py: case(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

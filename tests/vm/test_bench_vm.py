"""The benchmark's vm case, measured inside the test VM (``bench/vm_guest.py``): ZFS, LVM classic
and LVM thin — freeze window vs the bare snapshot command, a SQLite writer's worst commit latency
during backups vs without, ZFS full vs incremental send at 1 % changed.

In the VM tier (CI) it runs in quick mode: it proves the benchmark works, and prints the table.
``bench/cases/vm.py`` runs it with ``--bench-vm-runs=N`` for the full figures. The rows are
written as JSON into the VM's results folder (``bench-vm.json``). Figures are printed, never
asserted.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from bench import vm_guest
from bench.cases.vm import ROWS_FILE
from bench.core import Context, render

pytestmark = pytest.mark.vm


def test_bench_vm(request: pytest.FixtureRequest, make_zpool, make_vg, tmp_path: Path) -> None:
    runs = request.config.getoption("--bench-vm-runs")
    ctx = Context(quick=not runs, runs=runs or 1, work=tmp_path)  # quick: one run each (TCG is slow)
    pool = make_zpool(size=ctx.scale(512 << 20, 256 << 20))
    rows = vm_guest.zfs_rows(ctx, pool.name, pool.mountpoint)
    rows += vm_guest.lvm_rows(ctx, make_vg(size="192M").name, thin=False)
    rows += vm_guest.lvm_rows(ctx, make_vg(size="192M").name, thin=True)
    table = render(rows)
    print("\n" + table)
    out = os.environ.get("SNAPAGENT_VM_OUT")
    if out:
        (Path(out) / ROWS_FILE).write_text(json.dumps([r.as_dict() for r in rows], indent=1))

    names = [r.figure for r in rows]
    for fs in ("zfs", "lvm", "lvm-thin"):
        assert any(n.startswith(f"freeze window, {fs},") for n in names), names
        assert any(n.startswith(f"writer's worst commit latency, {fs}:") for n in names), names
    assert any(n.startswith("incremental backup (zfs): ") for n in names), names
    for r in rows:
        assert len(r.ours) == ctx.runs and all(math.isfinite(v) for v in r.ours + (r.base or [])), r
        assert r.figure in table

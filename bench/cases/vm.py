"""Benchmark case vm: ZFS and LVM (classic and thin) inside snapagent's test VM — freeze window vs
the bare snapshot command, a SQLite writer's worst commit latency during backups vs without, and
on ZFS a full vs an incremental ``zfs send -i`` backup at 1 % changed.

Boots the VM once (``tests/vm/harness.py``, qemu under TCG; needs ``scripts/vm-setup.sh``) and runs
``tests/vm/test_bench_vm.py`` in it, which measures (``bench/vm_guest.py``) and writes its rows as
JSON into the VM's results folder; they come back here. A ``--quick`` run of ``bench/run.py``
leaves this case out (booting the VM costs minutes): CI runs its quick mode inside the VM tier.
"""

from __future__ import annotations

import dataclasses
import json

from bench.core import ROOT, Context, Row

GUEST_TEST = ROOT / "tests" / "vm" / "test_bench_vm.py"
#: What the guest test writes into the VM's results folder.
ROWS_FILE = "bench-vm.json"


def run(ctx: Context) -> list[Row]:
    from tests.vm import harness

    try:
        image = harness.find_image()
    except harness.VMUnavailable as exc:
        raise RuntimeError(f"vm: the test VM cannot boot: {exc}; {harness.SETUP_HINT}") from None
    results = ctx.work / "vm-results"
    ctx.log(f"vm: booting {image.kernel.name} (zfs {image.zfs_version}) under TCG; results in {results}")
    args = ["-q", "-s", str(GUEST_TEST), f"--bench-vm-runs={0 if ctx.quick else ctx.runs}"]
    result = harness.run_tier(image, args, results_dir=results)
    if result.exit_code != 0 or not (results / ROWS_FILE).exists():
        raise RuntimeError(f"vm: the guest's benchmark exited {result.exit_code}:\n"
                           + "\n".join(result.pytest_log.splitlines()[-40:]))
    names = {f.name for f in dataclasses.fields(Row)}
    return [Row(**{k: v for k, v in d.items() if k in names}) for d in json.loads((results / ROWS_FILE).read_text())]

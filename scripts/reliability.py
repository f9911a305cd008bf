#!/usr/bin/env python3
"""The reliability report: run the suites that try to break snapagent and print one table of what
they checked, with the figures.

    .venv/bin/python scripts/reliability.py [--backups N] [--no-vm]   # run, then print
    .venv/bin/python scripts/reliability.py --print                   # print the last run's table

Suites: torture (bank-transfer writers, every backup restored and checked: tests/torture, and
SQLite on ZFS/LVM in the test VM), the kill matrix, faults, the hostile-input corpus, the
malicious archive and manifest corpora, secrets. Figures come from the JSON lines the tests write
(results/reliability.jsonl, results/vm/reliability.jsonl) and from pytest's junit files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
LINES = [RESULTS / "reliability.jsonl", RESULTS / "vm" / "reliability.jsonl"]
JUNIT = RESULTS / "reliability-junit.xml"
SUITES = {  # report row -> junit test-file prefix
    "faults fail cleanly (full target, damaged artifacts, stopped restores, bad journals)":
        ["tests.system.test_lifecycle", "tests.unit.test_lifecycle", "tests.unit.test_held"],
    "hostile configs and arguments: exit 2, one message, nothing created, nothing executed":
        ["tests.system.test_hostile_inputs"],
    "malicious archives: refused before writing, or contained in DEST without setid":
        ["tests.unit.test_tar_corpus"],
    "forged and garbled manifests: that backup damaged, nothing outside DEST":
        ["tests.unit.test_manifest"],
}
PYTEST = [
    "tests/torture", "tests/system/test_kill_matrix.py", "tests/system/test_lifecycle.py",
    "tests/system/test_hostile_inputs.py", "tests/unit/test_tar_corpus.py", "tests/unit/test_manifest.py",
    "tests/unit/test_lifecycle.py", "tests/unit/test_held.py",
    "tests/system/test_mysql_system.py::test_password_from_option_file_only",
]


def run(backups: int, vm: bool) -> int:
    for f in LINES:
        f.unlink(missing_ok=True)
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--torture-backups={backups}",
            f"--junitxml={JUNIT}", *PYTEST]
    if vm:
        args.append("tests/vm/test_vm_tier.py")
        os.environ["SNAPAGENT_VM_PYTEST_ARGS"] = f"-k torture --torture-backups={backups}"
    return subprocess.run(args, cwd=ROOT).returncode


def junit_counts() -> dict[str, tuple[int, int]]:
    """Return {test module: (passed, total)} from the junit files of the last run."""
    out: dict[str, list[int]] = {}
    for path in (JUNIT, RESULTS / "vm" / "junit.xml"):
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError):
            continue
        for case in root.iter("testcase"):
            mod = case.get("classname", "?")
            bad = case.find("failure") is not None or case.find("error") is not None or case.find("skipped") is not None
            c = out.setdefault(mod, [0, 0])
            c[1] += 1
            c[0] += 0 if bad else 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def lines() -> list[dict]:
    out = []
    for f in LINES:
        if f.exists():
            out += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return out


def table() -> str:
    recs = lines()
    rows = [("check", "figure")]
    for r in (r for r in recs if r.get("kind") == "torture"):
        rows.append((f"torture: {r['check']}",
                     f"{r['restored']} backups restored and checked; {r['violations']} invariant violations; "
                     f"{r['acked_lost']} acknowledged commits lost; worst writer stall {r['worst_stall_ms']:.0f} ms; "
                     f"worst lock/quiesce wait {r['worst_lock_wait_ms']:.1f} ms; {r['commits']} commits"))
    kills = [r for r in recs if r.get("kind") == "kill"]
    if kills:
        resumed = [r["resumed_ms"] for r in kills if "resumed_ms" in r]
        rows.append(("kill matrix: backup (5 phases), restore, drill × SIGKILL/SIGTERM",
                     f"{len(kills)} kills; writers resumed within {max(resumed):.0f} ms (max_freeze 5 s); "
                     f"leftovers after cleanup: {sum(r['leftovers'] for r in kills)}"))
    for r in (r for r in recs if r.get("kind") == "secrets"):
        rows.append((f"secrets: {r['check']}", f"{r['hits']} hits in {r['samples']} samples of /proc/*/cmdline+environ"))
    counts = junit_counts()
    for label, mods in SUITES.items():
        got = [counts[m] for m in counts if any(m == p or m.startswith(p + ".") for p in mods)]
        if got:
            rows.append((label, f"{sum(g[0] for g in got)} of {sum(g[1] for g in got)} cases pass"))
    width = max(len(r[0]) for r in rows)
    out = [f"| {rows[0][0]:<{width}} | {rows[0][1]} |", f"| {'-' * width} | --- |"]
    out += [f"| {a:<{width}} | {b} |" for a, b in rows[1:]]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backups", type=int, default=10, help="backups per torture combination (default 10)")
    p.add_argument("--no-vm", action="store_true", help="skip the torture runs inside the test VM")
    p.add_argument("--print", action="store_true", help="only print the last run's table")
    a = p.parse_args()
    rc = 0 if a.print else run(a.backups, not a.no_vm)
    print(table())
    return rc


if __name__ == "__main__":
    sys.exit(main())

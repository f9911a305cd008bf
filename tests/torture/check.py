"""Checks of a restored bank (``bank.py``) and the figures the torture report prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from tests.torture.bank import TOTAL

BANK = Path(__file__).resolve().parent / "bank.py"
REPORT = Path(os.environ.get("SNAPAGENT_REPORT") or Path(__file__).resolve().parents[2] / "results" / "reliability.jsonl")


@dataclass
class Verdict:
    """What one restored backup showed."""

    integrity: bool
    total: int
    max_seq: int
    seq_count: int
    acked_before_lock: int
    acked_missing: int

    @property
    def ok(self) -> bool:
        return (self.integrity and self.total == TOTAL and self.seq_count == self.max_seq
                and self.acked_missing == 0 and self.acked_before_lock > 0)


def acks(ackfile: Path) -> list[tuple[int, float]]:
    out = []
    for line in ackfile.read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            out.append((int(parts[0]), float(parts[1])))
    return out


def verdict(rows: dict, integrity: bool, ackfile: Path, locked_at: float) -> Verdict:
    """Given the restored bank's figures (``total``, ``max_seq``, ``seq_count``), its integrity
    check, the writer's acknowledgements and the backup's lock time, return the Verdict."""
    before = [n for n, t in acks(ackfile) if t < locked_at]
    missing = [n for n in before if n > rows["max_seq"]]
    return Verdict(integrity, int(rows["total"]), int(rows["max_seq"]), int(rows["seq_count"]), len(before), len(missing))


BANK_SQL = ("SELECT (SELECT coalesce(sum(balance), 0) FROM accounts), (SELECT coalesce(max(n), 0) FROM seq), "
            "(SELECT count(*) FROM seq)")


def worst_stall(ackfile: Path, t0: float, t1: float) -> float:
    """Return the longest time between two acknowledgements within [t0, t1] (seconds)."""
    times = [t for _, t in acks(ackfile) if t0 <= t <= t1]
    times = [t0, *times, t1]
    return max(b - a for a, b in zip(times, times[1:]))


@dataclass
class Run:
    """Figures of one torture combination, appended to the report file as one JSON line."""

    check: str
    backups: int = 0
    restored: int = 0
    violations: int = 0
    acked_lost: int = 0
    worst_stall_ms: float = 0.0
    worst_lock_wait_ms: float = 0.0
    worst_freeze_ms: float = 0.0
    commits: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, v: Verdict, manifest: dict, stall: float) -> None:
        self.backups += 1
        self.restored += 1
        self.violations += 0 if v.ok else 1
        self.acked_lost += v.acked_missing
        self.worst_stall_ms = max(self.worst_stall_ms, round(stall * 1000, 1))
        q = (manifest.get("quiescers") or [{}])[0]
        self.worst_lock_wait_ms = max(self.worst_lock_wait_ms, float(q.get("lock_wait_ms") or q.get("quiesce_ms") or 0))
        self.worst_freeze_ms = max(self.worst_freeze_ms, float(manifest["freeze_window_ms"]))
        if not v.ok:
            self.notes.append(f"{manifest['id']}: {asdict(v)}")

    def save(self) -> None:
        record(kind="torture", **asdict(self))


def record(**fields) -> None:
    """Append one line to the reliability report (``SNAPAGENT_REPORT``, default results/reliability.jsonl)."""
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    with open(REPORT, "a") as f:
        f.write(json.dumps({"time": time.time(), **fields}) + "\n")


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class Writer:
    def __init__(self, kind: str, target: str, ack: Path, pace: float = 0.0, journal_mode: str = "wal"):
        self.ack = ack
        self.proc = subprocess.Popen([sys.executable, str(BANK), kind, target, str(ack), str(pace), journal_mode])

    def wait(self, n: int, limit: float = 60) -> None:
        end = time.monotonic() + limit
        while not self.ack.exists() or len(self.ack.read_text().splitlines()) < n:
            assert self.proc.poll() is None, "the bank writer died"
            assert time.monotonic() < end, "the bank writer made no progress"
            time.sleep(0.05)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def locked_at(manifest: dict) -> float:
    q = manifest["quiescers"][0]
    return ts(q.get("locked_at") or q["consistent_at"])



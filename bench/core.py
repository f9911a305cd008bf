"""What every benchmark case shares: measuring snapagent and its baseline in alternation, the
figures (median, spread, ratio, target), scratch btrfs volumes, running the CLI with its peak RSS,
and the table.

A case module in ``bench/cases/`` exposes ``run(ctx: Context) -> list[Row]``; ``bench/run.py``
calls each one and prints one table. Figures are printed, never asserted: a missed target is a
row marked "missed", not a failure.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Row:
    """One figure of the table.

    ``ours``: samples of snapagent; ``base``: samples of the baseline (what an admin would run
    instead), measured in alternation with ``ours``; ``target``: the goal in words ("≤ 0.9 ×",
    "≤ 10 ms"); ``met``: whether it is reached (None when there is no target).
    """

    figure: str
    unit: str
    ours: list[float]
    base: list[float] | None = None
    base_name: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""
    #: the case (module of bench/cases/) that measured it; bench/run.py sets it
    case: str = ""

    @property
    def median(self) -> float:
        return statistics.median(self.ours)

    @property
    def base_median(self) -> float | None:
        return statistics.median(self.base) if self.base else None

    @property
    def ratio(self) -> float | None:
        b = self.base_median
        return self.median / b if b else None

    def as_dict(self) -> dict:
        return {"figure": self.figure, "unit": self.unit, "ours": self.ours, "median": self.median,
                "base": self.base, "base_name": self.base_name, "base_median": self.base_median,
                "ratio": self.ratio, "target": self.target, "met": self.met, "note": self.note, "case": self.case}


@dataclass
class Context:
    """How a case runs: ``quick`` (CI: small data, few runs — proves the benchmark works, the
    figures mean little), ``runs`` per case, ``work`` a scratch directory removed afterwards."""

    quick: bool
    runs: int
    work: Path
    python: str = sys.executable
    log: Callable[[str], None] = field(default=lambda line: print(line, file=sys.stderr, flush=True))

    def scale(self, full: int, quick: int) -> int:
        """``quick`` in quick mode, else ``full`` (data sizes, counts)."""
        return quick if self.quick else full


def alternate(ours: Callable[[], float], base: Callable[[], float] | None, runs: int,
              warmup: int = 1) -> tuple[list[float], list[float] | None]:
    """Call ``ours`` and ``base`` (each returns one measured value) alternately, ``warmup`` times
    unrecorded then ``runs`` times; return (ours' samples, base's samples or None). Alternation
    spreads the machine's drift (other load, page cache, thermal) over both sides."""
    for _ in range(warmup):
        ours()
        if base:
            base()
    a: list[float] = []
    b: list[float] | None = [] if base else None
    for i in range(runs):
        # swap who goes first every other run: neither side always runs on a warmer cache
        order = [(ours, a), (base, b)] if i % 2 == 0 else [(base, b), (ours, a)]
        for fn, out in order:
            if fn is not None and out is not None:
                out.append(fn())
    return a, b


def spread(samples: list[float]) -> str:
    """min–max of ``samples`` as text."""
    return f"{fmt(min(samples))}–{fmt(max(samples))}" if len(samples) > 1 else "—"


def fmt(v: float | None) -> str:
    if v is None:
        return "—"
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def render(rows: list[Row]) -> str:
    """The rows as one Markdown table."""
    out = ["| figure | snapagent (median) | spread | baseline | baseline (median) | ratio | target | met |",
           "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        met = {True: "yes", False: "**missed**", None: "—"}[r.met]
        ratio = f"{r.ratio:.2f} ×" if r.ratio is not None else "—"
        base = f"{fmt(r.base_median)} {r.unit}" if r.base else "—"
        fig = r.figure + (f" ({r.note})" if r.note else "")
        out.append(f"| {fig} | {fmt(r.median)} {r.unit} | {spread(r.ours)} | {r.base_name or '—'} | {base} "
                   f"| {ratio} | {r.target or '—'} | {met} |")
    return "\n".join(out)


def sh(*argv: str | os.PathLike, **kw) -> subprocess.CompletedProcess:
    """Run a setup command of the benchmark itself (argv, never a shell); raise on failure."""
    return subprocess.run([os.fspath(a) for a in argv], check=True, capture_output=True, **kw)


@dataclass
class Measured:
    """A finished child: exit code, wall seconds, peak RSS (MiB, of the child and its waited-for
    children: ``ru_maxrss`` of wait4), its output."""

    rc: int
    seconds: float
    rss_mib: float
    stdout: str
    stderr: str


def measure(argv: list[str], env: dict | None = None, cwd: Path | None = None) -> Measured:
    """Run ``argv`` to completion and return its Measured (wall time and peak RSS through wait4)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t = time.perf_counter()
        p = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=cwd)
        _, status, ru = os.wait4(p.pid, 0)
        seconds = time.perf_counter() - t
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return Measured(p.returncode, seconds, ru.ru_maxrss / 1024, out.read().decode(errors="replace"),
                        err.read().decode(errors="replace"))


def snapagent_argv(ctx: Context, config: Path, *args: str) -> list[str]:
    """argv of the snapagent CLI as an admin runs it (the venv's interpreter, ``-m snapagent``)."""
    return [ctx.python, "-m", "snapagent", "-c", str(config), *args]


@contextlib.contextmanager
def btrfs_volume(ctx: Context, size_mb: int, name: str = "btrfs") -> Iterator[Path]:
    """A btrfs filesystem of ``size_mb`` MiB on a loop device, mounted; yield the mount point
    (create subvolumes in it). Unmounted and removed afterwards, whatever happened."""
    base = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=ctx.work))
    img, mnt = base / "fs.img", base / "mnt"
    mnt.mkdir()
    with open(img, "wb") as f:
        f.truncate(size_mb << 20)
    sh("mkfs.btrfs", "-q", img)
    sh("mount", "-o", "loop", img, mnt)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
        img.unlink(missing_ok=True)


def percentile(samples: list[float], p: float) -> float:
    """The ``p``-th percentile (0–100) of ``samples`` (nearest rank)."""
    s = sorted(samples)
    return s[min(len(s) - 1, max(0, round(p / 100 * len(s) + 0.5) - 1))]

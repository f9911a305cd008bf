"""Read LVM state with ``lvs`` (read-only calls) and parse it: LV facts and snapshot fill (Snap%).

Output is requested without headings, in bytes without suffix, fields separated by ``|`` (which no
LVM name may contain), under the runner's C locale.
"""

from __future__ import annotations

from dataclasses import dataclass

from snapagent.errors import CommandFailed, CommandNotFound, PreflightFailed
from snapagent.util.runner import Runner

from .names import LvRef

LV_FIELDS = ("vg_name", "lv_name", "lv_attr", "lv_size", "vg_free", "vg_extent_size", "lv_kernel_major",
             "lv_kernel_minor", "origin", "pool_lv", "data_percent", "metadata_percent", "lv_dm_path")
SEP = "|"


def lvs_argv(ref: LvRef | str, fields: tuple[str, ...]) -> list[str]:
    """Return the argv that reports ``fields`` of one LV."""
    return ["lvs", "--noheadings", "--nosuffix", "--units", "b", "--separator", SEP, "-o", ",".join(fields), str(ref)]


def snap_status_argv(ref: LvRef | str) -> list[str]:
    """Return the argv that reports the fill (Snap%) and attributes of a snapshot LV."""
    return ["lvs", "--noheadings", "--separator", SEP, "-o", "snap_percent,lv_attr", str(ref)]


def _pct(text: str) -> float | None:
    text = text.strip()
    return float(text) if text else None


@dataclass(frozen=True)
class LvInfo:
    """What ``lvs`` says about one LV (sizes in bytes, percentages None when not reported)."""

    vg: str
    lv: str
    attr: str
    size: int
    vg_free: int
    extent_size: int
    major: int
    minor: int
    origin: str
    pool: str
    data_percent: float | None
    metadata_percent: float | None
    dm_path: str

    @property
    def active(self) -> bool:
        return len(self.attr) > 4 and self.attr[4] == "a" and self.major >= 0

    @property
    def is_thin(self) -> bool:
        return self.attr[:1] == "V" and bool(self.pool)

    @property
    def is_snapshot(self) -> bool:
        return self.attr[:1] in ("s", "S")


def parse_lv(text: str) -> LvInfo:
    """Given the output of ``lvs_argv(ref, LV_FIELDS)``, return the LvInfo; raise ValueError if malformed."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) != 1:
        raise ValueError(f"expected one line from lvs, got {len(lines)}: {text!r}")
    f = [x.strip() for x in lines[0].split(SEP)]
    if len(f) != len(LV_FIELDS):
        raise ValueError(f"expected {len(LV_FIELDS)} fields from lvs, got {len(f)}: {lines[0]!r}")
    return LvInfo(f[0], f[1], f[2], int(f[3]), int(f[4]), int(f[5]), int(f[6]), int(f[7]), f[8], f[9],
                  _pct(f[10]), _pct(f[11]), f[12])


def lv_info(runner: Runner, ref: LvRef | str, volume: str | None = None) -> LvInfo:
    """Return the LvInfo of ``ref``; raise PreflightFailed naming ``volume`` when it does not exist."""
    try:
        res = runner.run(lvs_argv(ref, LV_FIELDS), mutating=False, timeout=60)
    except CommandFailed as e:
        if isinstance(e, CommandNotFound) or e.returncode is None:
            raise PreflightFailed(f"volume {volume or str(ref)!r}: {e}") from None
        raise PreflightFailed(f"volume {volume or str(ref)!r}: no such logical volume ({e.stderr.strip() or e})") from None
    try:
        return parse_lv(res.stdout)
    except ValueError as e:
        raise PreflightFailed(f"volume {volume or str(ref)!r}: cannot read lvs output: {e}") from None


def lv_exists(runner: Runner, ref: LvRef | str) -> bool:
    """Return True when LV ``ref`` exists (``lvs`` finds it)."""
    try:
        runner.run(["lvs", "--noheadings", "-o", "lv_name", str(ref)], mutating=False, timeout=60)
        return True
    except CommandFailed as e:
        if e.returncode is None:
            raise
        return False


@dataclass(frozen=True)
class SnapStatus:
    """The fill of a classic snapshot: ``percent`` (Snap%, None when not reported) and ``attr``."""

    percent: float | None
    attr: str

    @property
    def invalid(self) -> bool:
        """True when LVM marks the snapshot invalid (type ``S`` or state ``I``/``S``)."""
        return self.attr[:1] == "S" or (len(self.attr) > 4 and self.attr[4] in ("I", "S"))

    @property
    def failed(self) -> bool:
        """True when the snapshot is invalid or full (its copy-on-write space is exhausted)."""
        return self.invalid or (self.percent is not None and self.percent >= 100.0)

    def describe(self) -> str:
        pct = "?" if self.percent is None else f"{self.percent:.2f}%"
        state = "invalid" if self.invalid else ("full" if self.failed else "ok")
        return f"Snap% {pct} (lv_attr {self.attr}, {state})"


def parse_snap_status(text: str) -> SnapStatus:
    """Given the output of ``snap_status_argv``, return the SnapStatus; raise ValueError if malformed."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) != 1:
        raise ValueError(f"expected one line from lvs, got {len(lines)}: {text!r}")
    f = [x.strip() for x in lines[0].split(SEP)]
    if len(f) != 2 or not f[1]:
        raise ValueError(f"cannot parse snapshot status {lines[0]!r}")
    return SnapStatus(_pct(f[0]), f[1])


def snap_status(runner: Runner, ref: LvRef | str) -> SnapStatus:
    """Return the SnapStatus of snapshot ``ref``. Raises CommandFailed / ValueError."""
    return parse_snap_status(runner.run(snap_status_argv(ref), mutating=False, timeout=60).stdout)

"""A fake runner for the LVM unit tests: records every argv, answers from a table."""

from __future__ import annotations

from typing import Callable

from snapagent.errors import CommandFailed
from snapagent.util.runner import Result, Runner

MIB = 1 << 20


def lv_line(vg="vg0", lv="data", attr="-wi-ao----", size=100 * MIB, vg_free=128 * MIB, extent=4 * MIB,
            major=254, minor=0, origin="", pool="", data="", meta="", dm_path=None) -> str:
    """Return one line as ``lvs`` prints it for report.LV_FIELDS."""
    dm = dm_path if dm_path is not None else f"/dev/mapper/{vg.replace('-', '--')}-{lv.replace('-', '--')}"
    return "  " + "|".join(map(str, (vg, lv, attr, size, vg_free, extent, major, minor, origin, pool, data, meta, dm))) + "\n"


def lvs_info_argv(ref: str) -> tuple[str, ...]:
    from plugins.lvm.report import LV_FIELDS, lvs_argv

    return tuple(lvs_argv(ref, LV_FIELDS))


def not_found(argv) -> CommandFailed:
    return CommandFailed(list(argv), 5, f'  Failed to find logical volume "{argv[-1]}"\n')


class FakeRunner(Runner):
    """Records ``calls`` as (argv, mutating); ``answers`` maps an argv tuple to stdout, an
    exception to raise, or a callable(argv) returning either. Unknown commands print nothing."""

    def __init__(self, answers: dict | None = None, dry_run: bool = False, missing: tuple[str, ...] = ()):
        super().__init__(dry_run=dry_run, echo=lambda line: self.echoed.append(line))
        self.answers: dict[tuple[str, ...], object] = dict(answers or {})
        self.calls: list[tuple[list[str], bool]] = []
        self.echoed: list[str] = []
        self.missing = missing

    def which(self, tool: str) -> str | None:
        return None if tool in self.missing else f"/usr/sbin/{tool}"

    def run(self, argv, *, mutating, timeout=None, **kw) -> Result:
        argv = [str(a) for a in argv]
        self.calls.append((argv, mutating))
        if mutating and self.dry_run:
            self.echo("would run: " + " ".join(argv))
            return Result(argv, 0, dry_run=True)
        ans = self.answers.get(tuple(argv), "")
        if isinstance(ans, Callable) and not isinstance(ans, str):
            ans = ans(argv)
        if isinstance(ans, Exception):
            raise ans
        return Result(argv, 0, str(ans))

    def argvs(self, mutating: bool | None = None) -> list[list[str]]:
        return [a for a, m in self.calls if mutating is None or m == mutating]

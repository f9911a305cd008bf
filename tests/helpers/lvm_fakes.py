"""The LVM unit tests' fake tools: ``lvs`` lines as LVM prints them, answered from a table."""

from __future__ import annotations

from snapagent.errors import CommandFailed
from tests.helpers.fakerunner import FakeRunner

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


def lvm_runner(answers: dict | None = None, dry_run: bool = False, missing: tuple[str, ...] = (),
               stream=None) -> FakeRunner:
    """Return a FakeRunner answering from ``answers``: an argv tuple to stdout, an exception to
    raise, or a callable(argv) returning either. Unknown commands print nothing."""
    table = dict(answers or {})

    def answer(argv):
        ans = table.get(tuple(argv), "")
        return ans(argv) if callable(ans) else ans

    return FakeRunner(answer, dry_run=dry_run, missing=missing, stream=stream)

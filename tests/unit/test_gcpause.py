"""Read commands run without the cyclic collector, and give it back as it was (tests and the VM
tier run several commands in one process)."""

import gc

import pytest

from snapagent.cli import commands
from snapagent.util.gcpause import without_cyclic_gc


def test_the_collector_is_off_inside_and_restored_after_a_return_or_a_raise():
    seen = []

    @without_cyclic_gc
    def cmd(fail: bool) -> int:
        seen.append(gc.isenabled())
        if fail:
            raise RuntimeError("x")
        return 7

    assert gc.isenabled()
    assert cmd(False) == 7 and gc.isenabled()
    with pytest.raises(RuntimeError):
        cmd(True)
    assert gc.isenabled() and seen == [False, False]
    gc.disable()
    try:
        cmd(False)
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable()


def test_the_read_commands_are_the_ones_wrapped():
    wrapped = {n for n in dir(commands) if n.startswith("do_") and hasattr(getattr(commands, n), "__wrapped__")}
    assert wrapped == {"do_list", "do_show", "do_status", "do_check"}

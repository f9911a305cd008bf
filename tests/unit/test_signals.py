"""What a stopping run says: the first signal names what the run is waiting for at once; a step
of the stop that lasts longer than ``signals.SLOW`` is named as a warning; only the innermost."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest

from snapagent import signals
from snapagent.errors import Interrupted


def _stopping(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "stopping" in r.getMessage()]


def test_the_first_signal_names_what_the_run_waits_for(caplog):
    caplog.set_level(logging.INFO, logger="snapagent.signals")
    with pytest.raises(Interrupted, match="SIGINT"), signals.raising(), signals.waiting("undoing snapshot '/v'"):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)  # the handler raises long before
    assert _stopping(caplog) == ["stopping (SIGINT): undoing snapshot '/v'…"]


def test_outside_any_wait_it_names_the_release(caplog):
    with pytest.raises(Interrupted, match="SIGTERM"), signals.raising():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert _stopping(caplog) == ["stopping (SIGTERM): releasing what this run took…"]


def test_a_slow_step_of_the_stop_is_named_and_a_quick_one_only_with_v(caplog):
    caplog.set_level(logging.INFO, logger="snapagent.signals")
    with pytest.raises(Interrupted), signals.raising():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
        finally:
            with signals.shielded(raise_after=False):
                with signals.waiting("releasing sqlite /db"):
                    pass
                with signals.waiting("releasing command murodb"), \
                        signals.waiting("command murodb: waiting for its hold process to exit (killed after 5s)"):
                    time.sleep(signals.SLOW + 0.3)
    assert _stopping(caplog)[1:] == [
        f"stopping, {signals.SLOW:g}s so far: command murodb: waiting for its hold process to exit (killed after 5s)…"]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "stopping: releasing sqlite /db…" in infos


def test_nothing_is_said_while_no_signal_came(caplog):
    caplog.set_level(logging.INFO, logger="snapagent.signals")
    with signals.raising(), signals.waiting("releasing sqlite /db"):
        time.sleep(signals.SLOW + 0.1)
    assert caplog.records == []


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the lost KeyboardInterrupt
def test_a_ctrl_c_lost_in_a_finalizer_before_the_run_still_stops_it(caplog):
    """Before a run's raising(), SIGINT is Python's KeyboardInterrupt; raised inside a finalizer
    it is only printed ("Exception ignored in …") and the program goes on — the run must not."""
    old = signal.getsignal(signal.SIGINT)
    try:
        signals.remember_interrupts()

        class Slow:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGINT)  # delivered while the finalizer runs

        Slow()  # the KeyboardInterrupt dies with the finalizer
        ran = []
        with pytest.raises(Interrupted, match="SIGINT"), signals.raising():
            ran.append(True)
        assert ran == [] and signals._guard.early is None
    finally:
        signal.signal(signal.SIGINT, old)

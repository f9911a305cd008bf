"""Signals: SIGTERM, SIGINT and SIGHUP stop a run by raising ``Interrupted`` — a BaseException (as
borg's ``SignalException``), so no ``except Exception`` in code that runs while a lock is held can
swallow it — and every ``finally`` on the way out releases what was taken.

The first signal interrupts whatever the run is doing (a slow ``post`` command is killed); from then
on a signal is only logged, so the undo that follows always finishes (SIGKILL still stops
everything; ``snapagent cleanup`` then undoes from the journal). An undo that runs because of an
error, not a signal, runs ``shielded()``: a signal that arrives meanwhile is noted and the undo
finishes first. Children run in
process groups of their own (``snapagent.util.runner``): the terminal's Ctrl-C reaches only the
agent, which stops them in order.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
from typing import Iterator

from snapagent.errors import Interrupted

log = logging.getLogger("snapagent.signals")
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class _Guard:
    def __init__(self) -> None:
        self.depth = 0
        self.shield = 0
        self.caught: int | None = None
        self.old: dict[int, object] = {}

    def handler(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.caught is not None:
            log.warning("%s received while stopping: finishing the release first (SIGKILL aborts it; then run "
                        "`snapagent cleanup`)", name)
            return
        self.caught = signum
        if self.shield:
            log.warning("%s received: finishing the release in progress first", name)
            return
        raise Interrupted(f"interrupted by {name}; everything taken was released")


_guard = _Guard()


@contextlib.contextmanager
def raising() -> Iterator[None]:
    """Within the block, SIGTERM/SIGINT/SIGHUP raise Interrupted (nested uses share one state)."""
    g = _guard
    if g.depth == 0:
        g.caught = None
        g.old = {s: signal.signal(s, g.handler) for s in SIGNALS}
    g.depth += 1
    try:
        yield
    finally:
        g.depth -= 1
        if g.depth == 0:
            for s, h in g.old.items():
                signal.signal(s, h)


@contextlib.contextmanager
def shielded(raise_after: bool = True) -> Iterator[None]:
    """Run the block (a release, an undo) to its end even when a signal arrives; afterwards, with
    ``raise_after`` and nothing else propagating, raise Interrupted for a signal caught inside."""
    g = _guard
    g.shield += 1
    try:
        yield
    finally:
        g.shield -= 1
    if raise_after and g.shield == 0 and g.caught is not None and g.depth and sys.exception() is None:
        raise Interrupted(f"interrupted by {signal.Signals(g.caught).name}; everything taken was released")


def caught() -> str | None:
    """Return the name of the signal that stopped (or is stopping) this run, if any."""
    return signal.Signals(_guard.caught).name if _guard.caught is not None else None

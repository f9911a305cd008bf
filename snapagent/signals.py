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

Whoever sent the signal learns at once what the run still does before it exits: the first signal
logs ``stopping (SIGINT): WHAT…`` (a warning, shown everywhere), where WHAT is the innermost
``waiting(what)`` block the run is in, else the release of what it took; a ``waiting`` block of
the stop (the undo of a snapshot, a hold process's exit, the metrics file, a ping) that lasts
longer than ``SLOW`` logs ``stopping, 0.5s so far: WHAT…`` — so a stop that takes longer than a
moment always says why (with ``-v``, every such block is named as it starts).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from typing import Iterator

from snapagent.errors import Interrupted

log = logging.getLogger("snapagent.signals")
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
SLOW = 0.5  # seconds a step of a stopping run may take before it is named as a warning


class _Guard:
    def __init__(self) -> None:
        self.depth = 0
        self.shield = 0
        self.caught: int | None = None
        self.old: dict[int, object] = {}
        self.doing: list[str] = []
        self.early: int | None = None  # a SIGINT before the run's raising() (remember_interrupts)

    def handler(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.caught is not None:
            now = f" ({self.doing[-1]})" if self.doing else ""
            log.warning("%s received while stopping: finishing the release first%s; SIGKILL aborts it (then run "
                        "`snapagent cleanup`)", name, now)
            return
        self.caught = signum
        what = self.doing[-1] if self.doing else \
            "finishing the release in progress first" if self.shield else "releasing what this run took"
        log.warning("stopping (%s): %s…", name, what)
        if self.shield:
            return
        raise Interrupted(f"interrupted by {name}; everything taken was released")


_guard = _Guard()


@contextlib.contextmanager
def raising() -> Iterator[None]:
    """Within the block, SIGTERM/SIGINT/SIGHUP raise Interrupted (nested uses share one state)."""
    g = _guard
    early = None
    if g.depth == 0:
        g.caught = None
        g.old = {s: signal.signal(s, g.handler) for s in SIGNALS}
        early, g.early = g.early, None
    g.depth += 1
    try:
        if early is not None:  # a Ctrl-C that a finalizer swallowed before the run began
            g.handler(early, None)
        yield
    finally:
        g.depth -= 1
        if g.depth == 0:
            for s, h in g.old.items():
                signal.signal(s, h)


def remember_interrupts() -> None:
    """Until a run's ``raising()``: SIGINT raises KeyboardInterrupt as Python's own handler does,
    and is remembered — raised inside a finalizer it is lost (Python prints "Exception ignored in:
    …" and goes on, and the run would continue as if nothing was pressed), so the next
    ``raising()`` raises it again as Interrupted before its block runs."""
    _guard.early = None

    def handler(signum: int, frame) -> None:
        _guard.early = signum
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)


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


@contextlib.contextmanager
def waiting(what: str) -> Iterator[None]:
    """Within the block the run waits for ``what`` (``"undoing snapshot '/x'"``, ``"command
    murodb: waiting for its hold process to exit (killed after 5s)"``): a first signal arriving
    meanwhile names it. While the run is already stopping, entering the block logs it (INFO, -v),
    and a block still running after ``SLOW`` seconds logs it as a warning, shown everywhere."""
    g = _guard
    timer = None
    if g.caught is not None:
        log.info("stopping: %s…", what)
        def slow() -> None:
            if g.doing and g.doing[-1] == what:  # an inner block names itself: only the innermost speaks
                log.warning("stopping, %gs so far: %s…", SLOW, what)

        timer = threading.Timer(SLOW, slow)
        timer.daemon = True
        timer.start()
    g.doing.append(what)
    try:
        yield
    finally:
        g.doing.pop()
        if timer is not None:
            timer.cancel()


def caught() -> str | None:
    """Return the name of the signal that stopped (or is stopping) this run, if any."""
    return signal.Signals(_guard.caught).name if _guard.caught is not None else None

"""The steps of a lifecycle as log lines, each with its duration: ``-v`` shows them.

``with step("export /srv/app"):`` logs ``step export /srv/app: 12.3 ms`` (INFO) when the block
ends, ``step export /srv/app: failed after 1.20 s`` when it raises; ``done(what, seconds)`` logs a
step timed elsewhere (the freeze window's locks and snapshot calls are timed inside the window and
logged after it, so no log write lands between a lock and its release).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Iterator

from snapagent.util.durations import format_duration

log = logging.getLogger("snapagent.steps")


def took(seconds: float) -> str:
    """Return a duration as a step line shows it: ``0.42 ms``, ``12.3 ms``, ``1.52 s``, ``4m05s``."""
    if seconds < 0.01:
        return f"{seconds * 1000:.2f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s"
    return format_duration(seconds)


def done(what: str, seconds: float, note: str = "") -> None:
    """Log the step ``what`` that took ``seconds`` (``note``: a fact to add, e.g. a size)."""
    if log.isEnabledFor(logging.INFO):
        log.info("step %s: %s%s", what, took(seconds), f" ({note})" if note else "")


@contextlib.contextmanager
def step(what: str) -> Iterator[None]:
    """Log the block as the step ``what`` with its duration when it ends, or how long it ran
    before it failed (the exception propagates)."""
    t = time.monotonic()
    try:
        yield
    except BaseException:
        if log.isEnabledFor(logging.INFO):
            log.info("step %s: failed after %s", what, took(time.monotonic() - t))
        raise
    done(what, time.monotonic() - t)

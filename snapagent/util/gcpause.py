"""Read commands run without Python's cyclic garbage collector.

A read command (list, show, status, check) is a short process that allocates a few objects per
backup and makes no reference cycles worth finding; every pass of the collector still walks the
objects it tracks — the config's pydantic schemas, then one Stored, summary and bytes object per
backup. Measured with ``gc.callbacks`` on ``list`` over 10,000 backups: ~200 collections, ~10 % of
the command; without them the command's CPU time drops by about as much (bench/cases/startup.py).
Objects are still freed by reference counting; only cycle detection waits for the command's end.
"""

from __future__ import annotations

import functools
import gc
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


def without_cyclic_gc(fn: F) -> F:
    """Return ``fn`` running with the cyclic collector disabled, restored as it was afterwards
    (callers that run several commands in one process, like the tests, get it back)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        was = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was:
                gc.enable()
    return run  # type: ignore[return-value]

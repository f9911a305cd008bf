"""A watchdog for a streaming restic: restic retries a backend that stopped answering for up to
15 minutes; snapagent gives it ``stall_timeout`` seconds without progress, then kills it, so a
server that dies mid-upload fails the run in bounded time (nothing is stored: restic was killed
before its input ended)."""

from __future__ import annotations

import threading
import time

from snapagent.util.runner import Stream


class Stall:
    """Kills ``st``'s process when ``tick()`` was not called for ``seconds``; ``fired`` says it did.
    Use as a context manager (the thread stops on exit)."""

    def __init__(self, st: Stream, seconds: float):
        self.st = st
        self.seconds = seconds
        self.fired = False
        self._last = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="restic-stall")

    def tick(self) -> None:
        self._last = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.seconds / 4)):
            if time.monotonic() - self._last > self.seconds:
                proc = self.st.proc
                if proc is not None and proc.poll() is None:
                    self.fired = True
                    proc.kill()
                return

    def __enter__(self) -> "Stall":
        if self.st.proc is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

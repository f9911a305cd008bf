"""A watchdog for a streaming restic: restic retries a backend that stopped answering for up to
15 minutes; snapagent gives it ``stall_timeout`` seconds without progress, then kills it, so a
server that dies mid-upload fails the run in bounded time (nothing is stored: restic was killed
before its input ended)."""

from __future__ import annotations

import signal
import subprocess
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


class Refusal:
    """Kills ``st``'s process as soon as its stderr holds one of ``marks`` (lower case): a refusal
    restic would only retry — an append-only server's ``403 Forbidden`` costs ten retries with
    backoff, ~44 s, before restic gives up. ``fired`` says it did. A context manager."""

    def __init__(self, st: Stream, marks: tuple[str, ...], poll: float = 0.1, grace: float = 10.0):
        self.grace = grace
        self.st = st
        self.marks = marks
        self.poll = poll
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="restic-refusal")

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            proc = self.st.proc
            if proc is None or proc.poll() is not None:
                return
            try:
                err = self.st.stderr_so_far().lower()
            except (ValueError, OSError):  # the stream was just waited for and its file closed
                return
            if any(m in err for m in self.marks):
                self.fired = True
                # SIGINT, not SIGKILL: restic then removes its lock (an append-only server allows
                # that), so the refusal leaves no stale lock behind
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(self.grace)
                except subprocess.TimeoutExpired:
                    proc.kill()
                return

    def __enter__(self) -> "Refusal":
        if self.st.proc is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

"""One run of a job at a time: an ``flock`` on ``<state_dir>/locks/<job>.lock`` (dies with the process).

The holder writes ``<pid> <start time>`` into the file, so a second run can say who holds the job:
``job 'app' is already running (pid 4242, started 2026-12-02T09:30:00Z); lock …``. The engine
takes the lock before anything else (preflight included): a refused run touches nothing.
"""

from __future__ import annotations

import fcntl
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from snapagent.errors import JobLocked, PreflightFailed


class JobLock:
    """The job's lock. ``take()`` (or ``with``) raises JobLocked naming the holder's pid and start
    time, or PreflightFailed when the state dir cannot be written."""

    def __init__(self, state_dir: Path, job: str):
        self.state_dir = state_dir
        self.path = state_dir / "locks" / f"{job}.lock"
        self.job = job
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock without waiting; return False when another process holds it."""
        if self._fd is not None:
            return True
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.path.parent.mkdir(exist_ok=True, mode=0o700)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise PreflightFailed(f"state_dir {self.state_dir} is not writable ({e.strerror}: {e.filename})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        started = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        data = f"{os.getpid()} {started}\n".encode()
        os.pwrite(fd, data, 0)  # write, then cut: a reader never sees an empty file
        os.ftruncate(fd, len(data))
        self._fd = fd
        return True

    def holder(self) -> str:
        """``pid N, started TIME`` of the holder as it recorded itself ("pid ?" when unreadable)."""
        for _ in range(20):  # the holder may be between flock and write
            try:
                parts = self.path.read_text().split()
            except OSError:
                parts = []
            if parts:
                return f"pid {parts[0]}" + (f", started {parts[1]}" if len(parts) > 1 else "")
            time.sleep(0.01)
        return "pid ?"

    def take(self) -> "JobLock":
        """Take the lock or raise JobLocked; return self."""
        if not self.try_acquire():
            raise JobLocked(f"job {self.job!r} is already running ({self.holder()}); lock {self.path}")
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "JobLock":
        return self.take()

    def __exit__(self, *exc) -> None:
        self.release()

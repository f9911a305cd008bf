"""One run of a job at a time: an ``flock`` on ``<state_dir>/locks/<job>.lock`` (dies with the process)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from snapagent.errors import JobLocked


class JobLock:
    """Context manager holding the job's lock; raises JobLocked naming the holder's pid."""

    def __init__(self, state_dir: Path, job: str):
        self.path = state_dir / "locks" / f"{job}.lock"
        self.job = job
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock without waiting; return False when another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "JobLock":
        if not self.try_acquire():
            raise JobLocked(f"job {self.job!r} is already running (pid {self.holder()}); lock {self.path}")
        return self

    def __exit__(self, *exc) -> None:
        self.release()

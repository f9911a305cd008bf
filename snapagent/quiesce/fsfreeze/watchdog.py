"""The fsfreeze watchdog: the process that freezes and — whatever happens to the agent — thaws.

FIFREEZE is not released when the process that froze dies, so the agent never freezes itself.
It starts this watchdog (``python -m snapagent.quiesce.fsfreeze.watchdog MOUNTPOINT...``), which
moves to its own session, ignores SIGTERM/SIGINT/SIGHUP, opens the mount points, prints ``READY``
and then obeys one line at a time on stdin:

- ``freeze SECONDS`` → FIFREEZE each mount point in order; answers ``FROZEN``, or ``ERROR\\t<text>``
  after thawing what it had frozen. It thaws by itself SECONDS after freezing (the deadline).
- ``status`` → ``FROZEN`` or ``THAWED\\t<reason>``.
- ``thaw`` → FITHAW in reverse order, then ``DONE`` and exit.
- end of file (the agent released, exited or was killed: the kernel closed its pipe) → thaw, exit.

Each thaw is reported as ``THAWED\\t<reason>\\t<frozen ms>\\t<mountpoint>`` (reason: released,
deadline, agent-gone, error; ``-not-frozen`` appended when someone else had thawed it), or
``THAWFAIL\\t<error>\\t<mountpoint>``. The root filesystem is refused here too (defence in depth).
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import sys
import time

from snapagent.util.lines import LineReader, send_line
from snapagent.util.mountinfo import mount_of

FIFREEZE = 0xC0045877  # _IOWR('X', 119, int)
FITHAW = 0xC0045878  # _IOWR('X', 120, int)


class Watchdog:
    def __init__(self, mountpoints: list[str], out: int = 1):
        self.mountpoints = mountpoints
        self.out = out
        self.fds: list[int] = []
        self.frozen: list[tuple[str, int, float]] = []  # (mountpoint, fd, frozen at)
        self.deadline: float | None = None
        self.thawed_reason = "never frozen"

    def say(self, line: str) -> None:
        send_line(self.out, line)  # the agent may be gone: ignore a broken pipe

    def open(self) -> None:
        root = mount_of("/").dev
        for mp in self.mountpoints:
            if mount_of(mp).dev == root:
                raise SystemExit(f"refusing to freeze {mp}: it is on the root filesystem")
            self.fds.append(os.open(mp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))

    def freeze(self, seconds: float) -> None:
        for mp, fd in zip(self.mountpoints, self.fds):
            try:
                fcntl.ioctl(fd, FIFREEZE, 0)
            except OSError as e:
                self.thaw("error")
                self.say(f"ERROR\t{mp}: {e.strerror}")
                return
            self.frozen.append((mp, fd, time.monotonic()))
        self.deadline = time.monotonic() + seconds
        self.say("FROZEN")

    def thaw(self, reason: str) -> None:
        while self.frozen:
            mp, fd, t0 = self.frozen.pop()
            ms = round((time.monotonic() - t0) * 1000, 1)
            try:
                fcntl.ioctl(fd, FITHAW, 0)
                self.say(f"THAWED\t{reason}\t{ms}\t{mp}")
            except OSError as e:
                if e.errno == errno.EINVAL:  # not frozen (any more): someone thawed it
                    self.say(f"THAWED\t{reason}-not-frozen\t{ms}\t{mp}")
                else:
                    self.say(f"THAWFAIL\t{e.strerror}\t{mp}")
        self.deadline = None
        self.thawed_reason = reason

    def serve(self) -> int:
        reader = LineReader(0)
        while True:
            try:
                line = reader.readline(self.deadline)
            except TimeoutError:
                self.thaw("deadline")
                continue
            if line is None:
                self.thaw("agent-gone")
                return 0
            cmd, _, arg = line.strip().partition(" ")
            if cmd == "freeze" and not self.frozen:
                self.freeze(float(arg))
            elif cmd == "status":
                self.say("FROZEN" if self.frozen else f"THAWED\t{self.thawed_reason}")
            elif cmd == "thaw":
                self.thaw("released")
                self.say("DONE")
                return 0
            else:
                self.say(f"ERROR\tunknown or untimely command {line!r}")


def main(argv: list[str]) -> int:
    try:
        os.setsid()
    except OSError:
        pass  # already a session leader
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)
    wd = Watchdog(argv)
    try:
        wd.open()
    except (OSError, SystemExit) as e:
        send_line(1, f"ERROR\t{e}")
        return 2
    send_line(1, "READY")
    try:
        return wd.serve()
    finally:
        wd.thaw("agent-gone")  # whatever went wrong in here: never leave a filesystem frozen


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

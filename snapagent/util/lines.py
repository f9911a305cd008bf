"""Line-oriented talk with a child process over pipes, bounded by deadlines (no threads).

Used by the ``command`` quiescer's hold process and the ``fsfreeze`` watchdog (both directions).
"""

from __future__ import annotations

import os
import select
import time
from typing import IO

MAX_LINE = 1 << 16


class LineReader:
    """Reads lines from a pipe (a file object or a raw fd) without ever blocking past a deadline."""

    def __init__(self, f: IO[bytes] | int):
        self.fd = f if isinstance(f, int) else f.fileno()
        self.buf = b""
        self.eof = False

    def readline(self, deadline: float | None) -> str | None:
        """Return the next line (without its newline; a line longer than 64 KiB is cut), or None
        at end of file. ``deadline`` is a ``time.monotonic()`` value (None: wait forever).

        Raises TimeoutError when the deadline passes before a whole line arrived.
        """
        while True:
            i = self.buf.find(b"\n")
            if i >= 0 or len(self.buf) >= MAX_LINE:
                cut = i if i >= 0 else MAX_LINE
                line, self.buf = self.buf[:cut], self.buf[cut + (1 if i >= 0 else 0):]
                return line.decode(errors="replace")
            if self.eof:
                if self.buf:
                    line, self.buf = self.buf, b""
                    return line.decode(errors="replace")
                return None
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("no complete line before the deadline")
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self.fd, 65536)
            if chunk:
                self.buf += chunk
            else:
                self.eof = True


def send_line(f: IO[bytes] | int, line: str) -> bool:
    """Write ``line`` plus a newline to pipe ``f``; return False when the reader is gone."""
    data = (line + "\n").encode()
    try:
        if isinstance(f, int):
            os.write(f, data)
        else:
            f.write(data)
            f.flush()
        return True
    except (BrokenPipeError, OSError, ValueError):
        return False

"""The tail of what a run prints on stderr (progress, warnings, log lines), kept to send with a
failure ping while it still goes to stderr as usual."""

from __future__ import annotations

import collections
import contextlib
import logging
import sys
from typing import Iterator, TextIO


class _Tee:
    """A text stream that writes through to ``inner`` and keeps the last ``lines`` lines."""

    def __init__(self, inner: TextIO, lines: int):
        self.inner = inner
        self.lines: collections.deque[str] = collections.deque(maxlen=lines)
        self._partial = ""

    def write(self, s: str) -> int:
        text = self._partial + s
        *done, self._partial = text.split("\n")
        self.lines.extend(done)
        return self.inner.write(s)

    def flush(self) -> None:
        self.inner.flush()

    def text(self) -> str:
        return "\n".join([*self.lines, self._partial] if self._partial else self.lines)

    def __getattr__(self, name: str):  # fileno, isatty, encoding…: the real stream's
        return getattr(self.inner, name)


class _Keep(logging.Handler):
    """Keeps every log record of INFO and above as a line of ``tee`` (what stderr shows or not)."""

    def __init__(self, tee: _Tee):
        super().__init__(logging.INFO)
        self.tee = tee

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.name != "snapagent.say":
            text = f"{record.levelname.lower()}: {text}"
        self.tee.lines.extend(text.split("\n"))


@contextlib.contextmanager
def capture(lines: int = 50) -> Iterator[_Tee]:
    """Within the block, keep the last ``lines`` lines of the run's log — every log record of INFO
    and above (progress lines included, even when stderr shows only warnings, as under cron) and
    what is printed to stderr directly; yield the keeper (``.text()``)."""
    old = sys.stderr
    tee = _Tee(old, lines)
    root = logging.getLogger()
    keep = _Keep(tee)  # log handlers keep writing to the real stderr: their lines come through ``keep``
    sys.stderr = tee
    root.addHandler(keep)
    level = root.level
    if root.getEffectiveLevel() > logging.INFO:
        root.setLevel(logging.INFO)
    try:
        yield tee
    finally:
        root.setLevel(level)
        root.removeHandler(keep)
        sys.stderr = old

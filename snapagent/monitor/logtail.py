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


@contextlib.contextmanager
def capture(lines: int = 50) -> Iterator[_Tee]:
    """Within the block, keep the last ``lines`` lines written to stderr (``print(file=sys.stderr)``
    and the logging handlers that write there); yield the keeper (``.text()``)."""
    old = sys.stderr
    tee = _Tee(old, lines)
    handlers = [h for h in logging.getLogger().handlers
                if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) is old]
    sys.stderr = tee
    for h in handlers:
        h.setStream(tee)
    try:
        yield tee
    finally:
        for h in handlers:
            h.setStream(old)
        sys.stderr = old

"""Progress of long byte streams (exports, restores): the core reports it, the CLI shows it.

The core wraps a stream it copies with ``reading(stream, label, total)``. While no sink is
installed — the default: stderr is not a terminal, ``-q``, tests, library use — ``reading`` hands
back the stream itself: nothing is counted, nothing is printed, nothing is imported. The CLI
installs a sink (``install``) when stderr is a terminal; a sink makes one ``Task`` per stream.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import IO, Callable, Iterator, Protocol


class Task(Protocol):
    """One stream's progress: ``update(n)`` after n more bytes, ``close()`` at the end."""

    def update(self, n: int) -> object: ...

    def close(self) -> None: ...


#: Given a label and the expected total in bytes (None: unknown), return a Task.
Sink = Callable[[str, "int | None"], Task]

_sink: Sink | None = None


def install(sink: Sink | None) -> None:
    """Make ``sink`` show every stream's progress from now on (None: show nothing)."""
    global _sink
    _sink = sink


def enabled() -> bool:
    """Return whether progress is shown (so callers skip work only a bar needs, e.g. estimates)."""
    return _sink is not None


class _Counting:
    """A readable stream that reports every byte read from ``stream`` to ``task``."""

    def __init__(self, stream: IO[bytes], task: Task):
        self.stream = stream
        self.task = task

    def read(self, n: int = -1) -> bytes:
        data = self.stream.read(n)
        if data:
            self.task.update(len(data))
        return data

    def readable(self) -> bool:
        return True


@contextmanager
def reading(stream: IO[bytes], label: str, total: int | None = None) -> Iterator[IO[bytes]]:
    """Yield ``stream``, counted into a progress task named ``label`` expecting ``total`` bytes
    when a sink is installed (else ``stream`` itself); close the task on exit."""
    sink = _sink
    if sink is None:
        yield stream
        return
    task = sink(label, total)
    try:
        yield _Counting(stream, task)  # type: ignore[misc]
    finally:
        task.close()

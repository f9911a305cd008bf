"""The one fake runner of the unit tests: the real ``Runner`` over a fake ``Executor``.

Dry run, tool resolution, exit-code checks, timeouts and logging are the real Runner's; only
starting processes is faked. Every command that would have started is recorded as a
``snapagent.util.runner.Command`` (argv as the caller wrote it, ``mutating``, env, timeout), in
one shape for every test.

``answer`` decides what a command prints: a callable ``answer(argv)`` or a dict from an argv
tuple (exact) to the answer. An answer is stdout (str/bytes), a ``Reply`` (exit code, stdout,
stderr), or an exception: a ``CommandFailed`` becomes that exit code and stderr (``returncode``
None: a timeout); any other exception is raised from the runner. A streamed command's stdout is
``stream(argv)`` (bytes; default the answer), and what is fed to its stdin is kept in
``FakeProc.received``; when ``stream(argv)`` returns a list, that argv really runs instead (a real
tar, or a ``sleep`` standing in for a slow one).
"""

from __future__ import annotations

import io
import itertools
import os
from dataclasses import dataclass
from typing import Callable, Mapping

from snapagent.errors import CommandFailed
from snapagent.util.runner import Command, CommandTimedOut, Executor, Runner

_pids = itertools.count(90000)


@dataclass(frozen=True)
class Reply:
    """A command's exit code, stdout and stderr."""

    rc: int = 0
    stdout: str = ""
    stderr: str = ""


class _Sink(io.BytesIO):
    """A child's stdin: keeps what was written when it is closed."""

    received = b""

    def close(self) -> None:
        if not self.closed:
            self.received = self.getvalue()
        super().close()


class FakeProc:
    """Stands in for a subprocess.Popen that has already run to completion."""

    def __init__(self, argv: list[str], data: bytes, rc: int = 0):
        self.argv = argv
        self.stdout = io.BytesIO(data)
        self.stdin = _Sink()
        self.returncode = rc
        self.pid = next(_pids)

    @property
    def received(self) -> bytes:
        return self.stdin.received if self.stdin.closed else self.stdin.getvalue()

    def poll(self) -> int:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        return self.returncode

    def kill(self) -> None:
        pass

    def send_signal(self, sig: int) -> None:
        pass


class FakeExecutor(Executor):
    """Records every Command; answers as the module docstring says."""

    def __init__(self, answer: Callable[[list[str]], object] | Mapping | None = None, missing: tuple[str, ...] = (),
                 stream: Callable[[list[str]], bytes] | None = None):
        self.answer = answer
        self.missing = missing
        self.stream_data = stream
        self.calls: list[Command] = []
        self.procs: list[FakeProc] = []
        self.echoed: list[str] = []

    def which(self, name: str) -> str | None:
        if name in self.missing or os.path.basename(name) in self.missing:
            return None
        return name if name.startswith("/") else f"/usr/bin/{name}"

    def _answer(self, argv: list[str]) -> object:
        if self.answer is None:
            return ""
        if callable(self.answer):
            return self.answer(argv)
        return self.answer.get(tuple(argv), "")

    def run(self, cmd: Command) -> tuple[int, str, str]:
        self.calls.append(cmd)
        try:
            ans = self._answer(cmd.argv)
        except CommandFailed as e:
            ans = e
        if isinstance(ans, CommandFailed):
            if ans.returncode is None:
                raise CommandTimedOut()
            return ans.returncode, "", ans.stderr
        if isinstance(ans, BaseException):
            raise ans
        if isinstance(ans, Reply):
            return ans.rc, ans.stdout, ans.stderr
        return 0, ans.decode() if isinstance(ans, bytes) else str(ans or ""), ""

    def popen(self, cmd: Command, stdin, stdout, stderr, cwd):
        self.calls.append(cmd)
        data = self.stream_data(cmd.argv) if self.stream_data else self._answer(cmd.argv)
        if isinstance(data, BaseException):
            raise data
        if isinstance(data, list):
            real = Executor()
            return real.popen(Command(data, real.which(data[0]), cmd.mutating, cmd.env), stdin, stdout, stderr, cwd)
        proc = FakeProc(cmd.argv, data if isinstance(data, bytes) else str(data or "").encode())
        self.procs.append(proc)
        return proc


class FakeRunner(Runner):
    """The real Runner over a FakeExecutor (see the module docstring); ``calls``, ``argvs()`` and
    ``echoed`` (the dry-run lines) are shortcuts into the executor."""

    def __init__(self, answer=None, *, missing: tuple[str, ...] = (), dry_run: bool = False,
                 tools: Mapping[str, str] | None = None, stream: Callable[[list[str]], bytes] | None = None):
        ex = FakeExecutor(answer, missing, stream)
        super().__init__(dry_run=dry_run, tools=dict(tools or {}), echo=ex.echoed.append, executor=ex)

    @property
    def calls(self) -> list[Command]:
        return self.executor.calls

    @property
    def echoed(self) -> list[str]:
        return self.executor.echoed

    @property
    def procs(self) -> list[FakeProc]:
        return self.executor.procs

    def argvs(self, mutating: bool | None = None) -> list[list[str]]:
        """Return the argv of every command that ran (only mutating / read-only ones when asked)."""
        return [c.argv for c in self.calls if mutating is None or c.mutating == mutating]

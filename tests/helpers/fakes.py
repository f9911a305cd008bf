"""A fake command runner for unit tests: records argv, returns canned results."""

from __future__ import annotations

import io
from dataclasses import dataclass, field

from snapagent.util.runner import Result, Runner, Stream, _check_argv, format_argv


class _FakeProc:
    def __init__(self, data: bytes):
        self.stdout = io.BytesIO(data)
        self.stdin = io.BytesIO()

    def poll(self):
        return 0

    def wait(self, timeout=None):
        return 0


class FakeStream(Stream):
    def __init__(self, argv, data: bytes):
        super().__init__(argv, None, None)
        self.fake = _FakeProc(data)

    @property
    def stdout(self):
        return self.fake.stdout

    @property
    def stdin(self):
        return self.fake.stdin


@dataclass
class FakeRunner(Runner):
    """Records every call as (kind, argv, mutating); ``replies`` maps an argv prefix tuple to stdout."""

    calls: list = field(default_factory=list)
    replies: dict = field(default_factory=dict)
    echoed: list = field(default_factory=list)

    def __post_init__(self):
        self.echo = self.echoed.append

    def which(self, tool):
        return f"/usr/bin/{tool}"

    def _reply(self, argv):
        best = b""
        for prefix, out in self.replies.items():
            if tuple(argv[: len(prefix)]) == tuple(prefix):
                best = out
        return best

    def run(self, argv, *, mutating, timeout=None, input=None, ok_codes=(0,), env=None, redact=()):
        argv = _check_argv(argv)
        if mutating and self.dry_run:
            self.echo(f"would run: {format_argv(argv)}")
            return Result(argv, 0, dry_run=True)
        self.calls.append(("run", argv, mutating))
        out = self._reply(argv)
        return Result(argv, 0, out.decode() if isinstance(out, bytes) else out)

    def stream(self, argv, *, mutating, stdin=None, stdout=None, cwd=None, env=None):
        argv = _check_argv(argv)
        self.calls.append(("stream", argv, mutating))
        out = self._reply(argv)
        return FakeStream(argv, out if isinstance(out, bytes) else out.encode())

    def argvs(self):
        return [c[1] for c in self.calls]

"""The only module that runs external commands.

Control commands (short, parsed output) go through ``sh`` with ``_tty_out=False``; data streams
(tar, send/receive) through ``subprocess.Popen`` pipes. Every call is an argv list — never a shell —
and says at the call site whether it only reads or mutates, so ``--dry-run`` is structural: reads
run, mutations are printed (as a line that can be pasted into a shell) and skipped.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, Callable, Iterable, Mapping, Sequence

import sh

from snapagent.errors import CommandFailed, CommandNotFound, UsageError

log = logging.getLogger("snapagent.runner")

# Environment variables never passed to children (secrets the agent may hold).
_SECRET_ENV = ("PGPASSWORD", "MYSQL_PWD", "SNAPAGENT_SECRET")


def format_argv(argv: Sequence[str], redact: Iterable[str] = ()) -> str:
    """Given an argv, return a line that can be pasted into a POSIX shell, secrets replaced by ***."""
    text = shlex.join(str(a) for a in argv)
    for secret in redact:
        if secret:
            text = text.replace(secret, "***")
    return text


@dataclass
class Result:
    """What a finished command returned."""

    argv: list[str]
    returncode: int
    stdout: str = ""
    stderr: str = ""
    duration: float = 0.0
    dry_run: bool = False


def _check_argv(argv: Sequence[str]) -> list[str]:
    if isinstance(argv, (str, bytes)) or not argv:
        raise TypeError("argv must be a non-empty list of strings, never a shell string")
    out = []
    for a in argv:
        if not isinstance(a, (str, os.PathLike)):
            raise TypeError(f"argv element {a!r} is not a string")
        s = os.fspath(a)
        if "\x00" in s:
            raise UsageError(f"argument contains a NUL byte: {s!r}")
        out.append(s)
    return out


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the environment for a child: ours without secrets, C locale for parsable output, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _SECRET_ENV}
    env["LC_ALL"] = "C"
    if extra:
        env.update(extra)
    return env


def _wait_or_kill(proc) -> None:
    """Wait for a started ``sh`` command. When the wait is interrupted (a signal handler raised
    Interrupted), kill the command and reap it before re-raising, so no child — and no pending
    ``_timeout`` timer thread, which would delay the agent's exit — outlives the interruption."""
    try:
        proc.wait()
    except (sh.ErrorReturnCode, sh.TimeoutException):
        raise
    except BaseException:
        try:
            proc.kill()
        except ProcessLookupError:
            pass
        try:
            proc.wait()
        except Exception:  # noqa: BLE001 - it was killed: its exit status does not matter
            pass
        raise


@dataclass
class Runner:
    """Runs commands for one agent invocation.

    ``tools`` maps a tool name (argv[0]) to the path to run instead (every binary is configurable).
    ``dry_run`` makes mutating calls print instead of run; ``echo`` receives those lines.
    """

    dry_run: bool = False
    tools: Mapping[str, str] = field(default_factory=dict)
    echo: Callable[[str], None] = lambda line: log.info(line)

    def which(self, tool: str) -> str | None:
        """Return the path the runner would execute for ``tool``, or None when it is not installed."""
        configured = self.tools.get(tool, tool)
        return shutil.which(configured, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")

    def require(self, tool: str, package: str | None = None) -> str:
        """Return the path of ``tool``; raise CommandNotFound naming the package when it is missing."""
        path = self.which(tool)
        if path is None:
            hint = f" (install {package})" if package else ""
            raise CommandNotFound([tool], 127, "", f"required tool not found: {self.tools.get(tool, tool)}{hint}")
        return path

    def _resolve(self, argv: list[str]) -> list[str]:
        path = self.require(argv[0])
        return [path, *argv[1:]]

    def run(
        self,
        argv: Sequence[str],
        *,
        mutating: bool,
        timeout: float | None = None,
        input: bytes | str | None = None,
        ok_codes: Sequence[int] = (0,),
        env: Mapping[str, str] | None = None,
        redact: Iterable[str] = (),
    ) -> Result:
        """Run a control command and return its Result.

        ``mutating`` calls are skipped in dry-run mode (the command line is echoed instead).
        Raises CommandNotFound when the tool is missing, CommandFailed (with stderr) when the exit
        code is not in ``ok_codes`` or ``timeout`` seconds pass.
        """
        argv = _check_argv(argv)
        shown = format_argv(argv, redact)
        if mutating and self.dry_run:
            self.echo(f"would run: {shown}")
            return Result(argv, 0, dry_run=True)
        full = self._resolve(argv)
        start = time.monotonic()
        try:
            proc = sh.Command(full[0])(
                *full[1:],
                _tty_out=False,
                _tty_in=False,
                _in=input,
                _env=child_env(env),
                _timeout=timeout,
                _ok_code=list(ok_codes),
                _return_cmd=True,
                _decode_errors="replace",
                _bg=True,
                _bg_exc=False,
            )
            _wait_or_kill(proc)
            rc, out, err = proc.exit_code, proc.stdout, proc.stderr
        except sh.ErrorReturnCode as e:
            rc, out, err = e.exit_code, e.stdout, e.stderr
        except sh.TimeoutException:
            dur = time.monotonic() - start
            log.warning("run: %s -> timed out after %.3fs", shown, dur)
            raise CommandFailed(argv, None, f"timed out after {timeout}s")
        dur = time.monotonic() - start
        out_s = out.decode(errors="replace") if isinstance(out, bytes) else (out or "")
        err_s = err.decode(errors="replace") if isinstance(err, bytes) else (err or "")
        log.debug("run: %s -> rc=%s in %.3fs", shown, rc, dur)
        if rc not in ok_codes:
            raise CommandFailed(argv, rc, err_s)
        return Result(argv, rc, out_s, err_s, dur)

    def stream(
        self,
        argv: Sequence[str],
        *,
        mutating: bool,
        stdin: int | IO[bytes] | None = subprocess.DEVNULL,
        stdout: int | IO[bytes] | None = subprocess.PIPE,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> "Stream":
        """Start a data-path command (tar, send, receive) and return its Stream.

        The caller reads ``stream.stdout`` / writes ``stream.stdin`` and must call ``stream.wait()``.
        In dry-run mode a mutating stream is echoed and a Stream with no process is returned.
        """
        argv = _check_argv(argv)
        if mutating and self.dry_run:
            self.echo(f"would run: {format_argv(argv)}")
            return Stream(argv, None, None)
        full = self._resolve(argv)
        errfile = tempfile.TemporaryFile()
        log.debug("stream: %s", format_argv(argv))
        proc = subprocess.Popen(full, stdin=stdin, stdout=stdout, stderr=errfile, cwd=cwd, env=child_env(env))
        return Stream(argv, proc, errfile)


class Stream:
    """A running data-path command; ``wait()`` raises CommandFailed with its stderr on failure."""

    def __init__(self, argv: list[str], proc: subprocess.Popen | None, errfile):
        self.argv = argv
        self.proc = proc
        self._errfile = errfile
        self._start = time.monotonic()

    @property
    def stdout(self) -> IO[bytes]:
        assert self.proc is not None and self.proc.stdout is not None
        return self.proc.stdout

    @property
    def stdin(self) -> IO[bytes]:
        assert self.proc is not None and self.proc.stdin is not None
        return self.proc.stdin

    def feed(self, src: IO[bytes], chunk: int = 1 << 20) -> None:
        """Copy ``src`` into the command's stdin until EOF (or until the command stops reading;
        ``wait()`` then reports why). A dry-run Stream ignores the data."""
        if self.proc is None:
            return
        try:
            while data := src.read(chunk):
                self.stdin.write(data)
        except BrokenPipeError:
            pass

    def stderr_text(self) -> str:
        if self._errfile is None:
            return ""
        self._errfile.seek(0)
        return self._errfile.read().decode(errors="replace")

    def wait(self, timeout: float | None = None, ok_codes: Sequence[int] = (0,)) -> int:
        """Wait for the command; return its exit code or raise CommandFailed (stderr attached)."""
        if self.proc is None:
            return 0
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None and not f.closed:
                try:
                    f.close()
                except BrokenPipeError:
                    pass
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise CommandFailed(self.argv, None, self.stderr_text())
        log.debug("stream: %s -> rc=%s in %.3fs", format_argv(self.argv), rc, time.monotonic() - self._start)
        err = self.stderr_text()
        self._errfile.close()
        if rc not in ok_codes:
            raise CommandFailed(self.argv, rc, err)
        return rc

    def kill(self) -> None:
        """Kill the command (idempotent) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        self.kill()

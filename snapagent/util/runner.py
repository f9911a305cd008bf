"""The only module that runs external commands.

Every call is an argv list — never a shell — and says at the call site whether it only reads or
mutates, so ``--dry-run`` is structural: reads run, mutations are printed (as a line that can be
pasted into a shell) and skipped.

Three paths, each chosen by measurement (``/bin/true`` on a 2-core machine, medians):

- **A command with a timeout** runs through ``subprocess.Popen`` + ``communicate(timeout=…)``
  (0.9 ms). ``sh``'s ``_timeout=`` costs ~105 ms per command: its timer thread polls every 0.1 s,
  and the call returns only when that thread notices the exit. Every command inside the freeze
  window has a timeout (bounded by ``max_freeze``): driver snapshot calls (btrfs, zfs, lvcreate),
  fsfreeze, command hooks — so the window costs what the kernel costs. On the timeout the whole
  process group is killed (SIGKILL) and reaped at once.
- **A control command without a timeout** runs through ``sh`` with ``_tty_out=False`` (4.7 ms, no
  timer thread): the project's chosen process library, kept where its few milliseconds do not
  matter (queries outside the freeze window).
- **Data streams** (tar, send/receive) run through ``subprocess.Popen`` pipes (``Runner.stream``).

Path resolution (``which``, 0.08 ms) is not cached: a tool installed or removed between runs of a
long-lived process is seen. Both control paths start the child in its own process group and kill
and reap it when the wait is interrupted (a signal handler raising Interrupted).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from typing import IO, Callable, Iterable, Iterator, Mapping, Sequence

from snapagent.errors import CommandFailed, CommandNotFound, UsageError

log = logging.getLogger("snapagent.runner")

# Environment variables never passed to children (secrets the agent may hold).
#: What a child inherits of the agent's environment: these names, and names with these prefixes
#: (the volume managers read their own settings from the environment). Nothing else — not a
#: password a wrapper exported, not a token of the shell that started the agent.
CHILD_ENV = ("PATH", "HOME", "USER", "LOGNAME", "TZ", "TMPDIR", "LANG")
CHILD_ENV_PREFIXES = ("LVM_", "DM_", "ZFS_", "ZPOOL_", "SNAPAGENT_")
_NEVER = ("SNAPAGENT_SECRET",)


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


@dataclass(frozen=True)
class Ran:
    """A control command as ``Runner.recording`` saw it: its line (secrets redacted), when it
    started (``time.monotonic()``) and how long it took (seconds, failed or not)."""

    line: str
    start: float
    seconds: float


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
    """Return the environment for a child: the allow-listed part of ours (``CHILD_ENV``,
    ``CHILD_ENV_PREFIXES``), the C locale for parsable output, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if (k in CHILD_ENV or k.startswith(CHILD_ENV_PREFIXES)) and k not in _NEVER}
    env["LC_ALL"] = "C"
    if extra:
        env.update(extra)
    return env


@dataclass(frozen=True)
class Command:
    """One command about to run: ``argv`` as the caller wrote it (``argv[0]`` a tool name),
    ``path`` the binary that runs, and how. Built by the Runner, handed to its Executor."""

    argv: list[str]
    path: str
    mutating: bool
    env: Mapping[str, str]
    timeout: float | None = None
    input: bytes | str | None = None
    #: Start it in a session of its own (a process that must outlive the agent's terminal).
    new_session: bool = False


class CommandTimedOut(Exception):
    """Raised by an Executor when a command ran past its timeout (it was killed)."""


class Executor:
    """What actually starts processes; the Runner decides everything else (dry run, resolution,
    errors, logging). Tests put a fake one under a real Runner.

    Every child starts in its own process group: the terminal's Ctrl-C reaches the agent only,
    which then stops its children in order instead of having them die mid-step.
    """

    def which(self, name: str) -> str | None:
        """Return the path of executable ``name`` (or of the path ``name``), or None."""
        return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")

    def run(self, cmd: Command) -> tuple[int, str, str]:
        """Run ``cmd`` to completion; return (exit code, stdout, stderr). Raise CommandTimedOut
        (the command's process group was killed at ``cmd.timeout`` and reaped)."""
        if cmd.timeout is not None:
            return _run_timed(cmd)
        import sh  # here, not at the top: read-only commands never start a child (start-up time)

        try:
            proc = sh.Command(cmd.path)(
                *cmd.argv[1:], _tty_out=False, _tty_in=False, _in=cmd.input, _env=dict(cmd.env),
                _ok_code=list(range(256)), _return_cmd=True, _decode_errors="replace",
                _new_group=True, _bg=True, _bg_exc=False)
            _wait_or_kill(proc)
            rc, out, err = proc.exit_code, proc.stdout, proc.stderr
        except sh.ErrorReturnCode as e:  # killed by a signal
            rc, out, err = e.exit_code, e.stdout, e.stderr
        return rc, _text(out), _text(err)

    def popen(self, cmd: Command, stdin, stdout, stderr, cwd: str | None) -> subprocess.Popen:
        """Start ``cmd`` with the given stdio; return the process."""
        return subprocess.Popen([cmd.path, *cmd.argv[1:]], stdin=stdin, stdout=stdout, stderr=stderr, cwd=cwd,
                                env=dict(cmd.env), start_new_session=cmd.new_session,
                                process_group=None if cmd.new_session else 0)


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def _run_timed(cmd: Command) -> tuple[int, str, str]:
    """Run ``cmd`` through subprocess with its own timer (``communicate(timeout=…)``: a select on
    the pipes, no polling); on the timeout kill its process group and raise CommandTimedOut; when
    the wait is interrupted (Interrupted, KeyboardInterrupt) kill and reap it, then re-raise."""
    data = cmd.input.encode() if isinstance(cmd.input, str) else cmd.input
    proc = subprocess.Popen([cmd.path, *cmd.argv[1:]], stdin=subprocess.DEVNULL if data is None else subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(cmd.env),
                            start_new_session=cmd.new_session, process_group=None if cmd.new_session else 0)
    try:
        out, err = proc.communicate(data, timeout=cmd.timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise CommandTimedOut() from None
    except BaseException:
        _kill_group(proc)
        raise
    return proc.returncode, _text(out), _text(err)


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s process group (it leads it: its children die with it) and reap it. A
    descendant that left the group and still holds the pipes is not waited for."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.communicate(timeout=2)
    except (subprocess.TimeoutExpired, ValueError):
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                f.close()
        proc.wait()


def _wait_or_kill(proc) -> None:
    """Wait for a started ``sh`` command. When the wait is interrupted (a signal handler raised
    Interrupted), kill the command and reap it before re-raising, so no child outlives the
    interruption."""
    import sh

    try:
        proc.wait()
    except sh.ErrorReturnCode:
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
    ``executor`` starts the processes (a fake one in unit tests).
    """

    dry_run: bool = False
    tools: Mapping[str, str] = field(default_factory=dict)
    echo: Callable[[str], None] = lambda line: log.info(line)
    executor: Executor = field(default_factory=Executor)
    _ran: list["Ran"] | None = field(default=None, init=False, repr=False)

    @contextlib.contextmanager
    def recording(self) -> Iterator[list["Ran"]]:
        """Within the block, append a Ran for every control command started (the freeze
        telemetry times each snapshot call this way, whatever the driver). Not re-entrant."""
        self._ran = ran = []
        try:
            yield ran
        finally:
            self._ran = None

    def which(self, tool: str) -> str | None:
        """Return the path the runner would execute for ``tool``, or None when it is not installed."""
        return self.executor.which(self.tools.get(tool, tool))

    def require(self, tool: str, package: str | None = None) -> str:
        """Return the path of ``tool``; raise CommandNotFound naming the package when it is missing."""
        path = self.which(tool)
        if path is None:
            hint = f" (install {package})" if package else ""
            raise CommandNotFound([tool], 127, "", f"required tool not found: {self.tools.get(tool, tool)}{hint}")
        return path

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
        cmd = Command(argv, self.require(argv[0]), mutating, child_env(env), timeout, input)
        start = time.monotonic()
        try:
            rc, out, err = self.executor.run(cmd)
        except CommandTimedOut:
            log.warning("run: %s -> timed out after %.3fs", shown, time.monotonic() - start)
            raise CommandFailed(argv, None, f"timed out after {timeout}s") from None
        finally:
            dur = time.monotonic() - start
            if self._ran is not None:
                self._ran.append(Ran(shown, start, dur))
        log.debug("run: %s -> rc=%s in %.3fs", shown, rc, dur)
        if rc not in ok_codes:
            raise CommandFailed(argv, rc, err)
        return Result(argv, rc, out, err, dur)

    def stream(
        self,
        argv: Sequence[str],
        *,
        mutating: bool,
        stdin: int | IO[bytes] | None = subprocess.DEVNULL,
        stdout: int | IO[bytes] | None = subprocess.PIPE,
        cwd: str | None = None,
        env: Mapping[str, str] | None = None,
        new_session: bool = False,
    ) -> "Stream":
        """Start a data-path command (tar, send, receive) and return its Stream.

        The caller reads ``stream.stdout`` / writes ``stream.stdin`` and must call ``stream.wait()``.
        In dry-run mode a mutating stream is echoed and a Stream with no process is returned.
        ``new_session`` starts it in a session of its own (else in a process group of its own).
        """
        argv = _check_argv(argv)
        if mutating and self.dry_run:
            self.echo(f"would run: {format_argv(argv)}")
            return Stream(argv, None, None)
        cmd = Command(argv, self.require(argv[0]), mutating, child_env(env), new_session=new_session)
        errfile = tempfile.TemporaryFile()
        log.debug("stream: %s", format_argv(argv))
        proc = self.executor.popen(cmd, stdin, stdout, errfile, cwd)
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

    def stderr_so_far(self) -> str:
        """What the command wrote to stderr until now (while it runs; the file offset it writes at
        is left alone)."""
        if self._errfile is None or self._errfile.closed:
            return ""
        return os.pread(self._errfile.fileno(), 1 << 20, 0).decode(errors="replace")

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

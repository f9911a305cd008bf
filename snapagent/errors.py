"""The one error hierarchy of snapagent.

Every error carries its exit code; ``cli.main`` is the only place that turns them into exit codes.
The class docstring is the default message. ``Interrupted`` (a signal) is a BaseException on purpose.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class SnapagentError(Exception):
    """snapagent failed."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str | None = None):
        super().__init__(message or (self.__doc__ or "").strip())

    @property
    def message(self) -> str:
        return str(self)


class UsageError(SnapagentError):
    """Bad command-line usage."""

    exit_code = EXIT_USAGE


class ConfigError(UsageError):
    """The configuration is invalid."""


class OperationFailed(SnapagentError):
    """The operation failed."""


class PreflightFailed(OperationFailed):
    """A preflight check failed; nothing was touched."""


class JobLocked(OperationFailed):
    """Another run of this job is in progress."""


class FreezeOverrun(OperationFailed):
    """The freeze window exceeded max_freeze; the snapshot was abandoned."""


class QuiesceFailed(OperationFailed):
    """A quiescer could not take its lock."""


class SnapshotFailed(OperationFailed):
    """A snapshot could not be created, or became invalid."""


class ExportFailed(OperationFailed):
    """Exporting a snapshot failed."""


class TargetFailed(OperationFailed):
    """The target could not store or read the backup (full, failing, not writable)."""


class VerifyFailed(OperationFailed):
    """A backup failed verification."""


class NotFound(OperationFailed):
    """No such backup."""


class RestoreRefused(OperationFailed):
    """The restore was refused; nothing was written."""


class BackupDamaged(OperationFailed):
    """The backup's manifest cannot be trusted; other backups are not affected."""


class Interrupted(BaseException):
    """Interrupted by a signal; everything taken was released.

    A BaseException, like KeyboardInterrupt: a catch-all ``except Exception`` never swallows it.
    """

    exit_code = EXIT_FAILED

    def __init__(self, message: str | None = None):
        super().__init__(message or (self.__doc__ or "").strip().splitlines()[0])


class CommandFailed(OperationFailed):
    """An external command failed.

    Carries ``argv``, ``returncode`` and ``stderr`` so drivers can parse it into a typed error.
    """

    def __init__(self, argv: list[str], returncode: int | None, stderr: str, message: str | None = None):
        from snapagent.util.runner import format_argv

        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        tail = stderr.strip().splitlines()[-5:] if stderr else []
        rc = "timed out" if returncode is None else f"exit {returncode}"
        super().__init__(message or f"command failed ({rc}): {format_argv(argv)}" + ("\n  " + "\n  ".join(tail) if tail else ""))


class CommandNotFound(CommandFailed):
    """A required external tool is not installed."""

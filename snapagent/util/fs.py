"""Small filesystem helpers for atomic, durable writes."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """fsync directory ``path`` so renames and creations in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically: temp file → fsync → rename → fsync dir. The file gets
    exactly ``mode``, whatever the umask."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # exactly ``mode``, whatever the umask (units must be 0644)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def is_within(path: Path, root: Path) -> bool:
    """Return True when ``path`` (resolved) is ``root`` or lies below it."""
    try:
        Path(os.path.realpath(path)).relative_to(os.path.realpath(root))
        return True
    except ValueError:
        return False


def widen_pipe(stream: object, size: int = 1 << 20) -> None:
    """When ``stream`` is a pipe, make its buffer ``size`` bytes (the default is 64 KiB): a writer
    of 1 MiB chunks then hands one over and goes on producing the next (decompressing it) while
    the reader drains it, instead of waiting in 64 KiB steps — the two run side by side. Anything
    else, or a kernel refusing, is left as it is."""
    try:
        fd = stream.fileno()  # type: ignore[attr-defined]
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, size)
    except (AttributeError, ValueError, OSError):  # no fileno (a test's fake), or over pipe-max-size
        pass


def syncfs(paths: list[Path]) -> None:
    """Flush every filesystem holding one of ``paths`` to disk (``syncfs(2)``, once per
    filesystem): what a restore wrote survives a crash once it says it is done. Raise OSError."""
    import ctypes  # only restores need it

    libc = ctypes.CDLL(None, use_errno=True)
    seen: set[int] = set()
    for p in paths:
        fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
        try:
            dev = os.fstat(fd).st_dev
            if dev not in seen:
                seen.add(dev)
                if libc.syncfs(fd) != 0:
                    e = ctypes.get_errno()
                    raise OSError(e, os.strerror(e), str(p))
        finally:
            os.close(fd)

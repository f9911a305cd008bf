"""Small filesystem helpers for atomic, durable writes."""

from __future__ import annotations

import fcntl
import os
import stat
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

#: how often ``flushing`` hands what was written to the disk (seconds)
FLUSH_EVERY = 0.25


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
    seen: set[int] = set()
    for p in paths:
        fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
        try:
            dev = os.fstat(fd).st_dev
            if dev not in seen:
                seen.add(dev)
                _syncfs(fd, p)
        finally:
            os.close(fd)


def _syncfs(fd: int, path: Path) -> None:
    """syncfs(2) of the filesystem of open ``fd``; raise OSError naming ``path``."""
    import ctypes  # only restores need it

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syncfs(fd) != 0:  # ctypes releases the GIL for the call
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))


class FlushFailed(OSError):
    """A flush of ``flushing`` failed (errno, strerror and filename of the failure)."""


@contextmanager
def flushing(path: Path | None) -> Iterator[None]:
    """While the body writes below directory ``path``, flush its filesystem (``syncfs``) every
    ``FLUSH_EVERY`` seconds in a thread: the disk writes while the body is still producing, instead of
    all at the end — the kernel starts writing back only when a tenth of the memory is dirty, and
    then throttles the writer. ``None``: do nothing. Raise FlushFailed after the body when a flush
    failed (a writeback error reported once is not reported again to a later ``syncfs``)."""
    if path is None:
        yield
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    every = FLUSH_EVERY
    stop = threading.Event()
    failed: list[OSError] = []

    def run() -> None:
        while not stop.wait(every):
            try:
                _syncfs(fd, path)
            except OSError as e:
                failed.append(e)
                return

    thread = threading.Thread(target=run, name="snapagent-flush", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()  # a flush in progress ends first: its error is not lost
        os.close(fd)
    if failed:
        e = failed[0]
        raise FlushFailed(e.errno, e.strerror, e.filename)

"""A small ext4 filesystem on a loop device, for fsfreeze tests. Only ever freeze these."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def ext4_loop(base: Path, size_mb: int = 64, image: str = "ext4.img") -> Iterator[Path]:
    """Create ``base/image``, mount it (ext4) at ``base/mnt`` and yield that; on exit thaw it
    (whatever happened) and unmount it."""
    img, mnt = base / image, base / "mnt"
    mnt.mkdir(parents=True)
    with open(img, "wb") as f:
        f.truncate(size_mb << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True, capture_output=True)
    subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], check=True, capture_output=True)
    try:
        yield mnt
    finally:
        subprocess.run(["fsfreeze", "-u", str(mnt)], capture_output=True)  # never leave it frozen
        subprocess.run(["umount", str(mnt)], capture_output=True)
        img.unlink(missing_ok=True)


def write_takes(mnt: Path, limit: float = 30.0) -> float | None:
    """Write a file on ``mnt`` in a thread; return the seconds it took, or None when it
    did not finish within ``limit`` (the filesystem is frozen; the thread completes after a thaw)."""
    done = threading.Event()
    t0 = time.monotonic()

    def write():  # no fsync: on a frozen filesystem the write itself blocks (sb_start_write)
        with open(mnt / f"probe-{time.monotonic_ns()}", "wb") as f:
            f.write(b"x" * 4096)
        done.set()

    threading.Thread(target=write, daemon=True).start()
    if done.wait(limit):
        return time.monotonic() - t0
    return None


def is_frozen(mnt: Path, probe: float = 0.5) -> bool:
    """Return True when a write to ``mnt`` does not complete within ``probe`` seconds."""
    return write_takes(mnt, probe) is None


def was_frozen(mnt: Path) -> bool:
    """Thaw ``mnt``; return True when it was frozen (a definite answer, unlike a write probe)."""
    r = subprocess.run(["fsfreeze", "-u", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0 and "Invalid argument" not in r.stderr:
        raise RuntimeError(f"fsfreeze -u {mnt}: {r.stderr.strip()}")
    return r.returncode == 0

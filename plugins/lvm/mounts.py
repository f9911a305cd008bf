"""Private read-only mounts of snapshot LVs, and their removal.

A snapshot ``vg/<snap>`` is mounted at ``<base>/<snap>/root``: ``<base>/<snap>`` is created with
mode 0700 so only root can reach the snapshot's files while they are exported. The mount options
are ``ro`` plus ``nouuid`` for XFS (a snapshot carries its origin's UUID, which XFS otherwise
refuses to mount twice) plus the job's ``mount_options``.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from pathlib import Path

from snapagent.errors import CommandFailed
from snapagent.util import mountinfo
from snapagent.util.runner import Runner

log = logging.getLogger("snapagent.lvm")


def mount_base(configured: Path | None) -> Path:
    """Return the directory under which snapshots are mounted (configured, else the temp dir)."""
    return configured if configured is not None else Path(tempfile.gettempdir())


def mount_point(base: Path, snap_lv: str) -> Path:
    """Return the private mount point of snapshot LV ``snap_lv`` under ``base``."""
    return base / snap_lv / "root"


def mount_options(fstype: str, extra: list[str] | tuple[str, ...] = ()) -> str:
    """Return the ``-o`` value for a read-only snapshot mount of a ``fstype`` filesystem."""
    opts = ["ro"]
    if fstype == "xfs":
        opts.append("nouuid")
    opts += [o for o in extra if o not in opts]
    return ",".join(opts)


def mount_argv(device: str, mnt: Path, fstype: str, options: str) -> list[str]:
    """Return the argv mounting ``device`` at ``mnt`` (``--source``/``--target``: no name is taken as an option)."""
    argv = ["mount"]
    if fstype:
        argv += ["-t", fstype]
    return argv + ["-o", options, "--source", device, "--target", str(mnt)]


def make_dirs(mnt: Path) -> None:
    """Create the private parent (0700) and the mount point ``mnt``; existing ones are reused."""
    mnt.parent.mkdir(mode=0o700, parents=False, exist_ok=True)
    os.chmod(mnt.parent, 0o700)
    mnt.mkdir(mode=0o700, exist_ok=True)


def remove_dirs(mnt: Path) -> None:
    """Remove mount point ``mnt`` and its private parent when they are empty and not mounted."""
    for d in (mnt, mnt.parent):
        try:
            if mountinfo.mounted_at(d) is None:
                d.rmdir()
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("could not remove %s: %s", d, e)
            return


def unmount(runner: Runner, mnt: Path, tries: int = 3) -> bool:
    """Unmount ``mnt`` if it is mounted (retrying briefly while busy) and remove its directories.

    Return True when something was unmounted. Raises CommandFailed when it stays mounted."""
    did = False
    for attempt in range(tries):
        if mountinfo.mounted_at(mnt) is None:
            break
        try:
            runner.run(["umount", str(mnt)], mutating=True, timeout=120)
            did = True
        except CommandFailed:
            if attempt == tries - 1:
                raise
            time.sleep(0.5 * (attempt + 1))
    if not runner.dry_run:
        remove_dirs(mnt)
    return did

"""Where the btrfs driver keeps its snapshots: never inside a volume it protects.

``options.snapshot_dir`` unset (the default), per volume: ``<A>/.snapagent-snapshots`` where A is
the nearest ancestor directory of the volume on the same btrfs filesystem (the same superblock in
mountinfo: btrfs can only snapshot within one filesystem) that is not inside any of the job's
volumes — usually the volume's parent. A volume that is a mount root (``subvol=pgdata`` mounted
at it) has no such ancestor: its snapshots go to ``.snapagent-snapshots`` in the filesystem's
top-level subvolume (subvolid=5), mounted for the run at a private directory under
``/run/snapagent/btrfs`` (0700) — journaled as ``mount`` before it is made, so the end of the run,
or ``snapagent cleanup`` after a kill, unmounts it; the snapshots then are visible nowhere. Such a
snapshot's manifest record says so (``info.place = "top-level"``, ``info.fs_path``): a later run
finds a kept one again under its own mount. The top-level subvolume itself, as a volume, is the
one case with no place outside it: its snapshots stay in ``<volume>/.snapagent-snapshots``
(nested subvolumes are never part of its snapshots; tar exports exclude the directory).

``options.snapshot_dir`` set: that absolute directory on the same filesystem (the engine's
preflight and ``config check`` refuse one inside a volume or a database's data, see
``snapagent.places``).

Old default (before this layout): ``<volume>/.snapagent-snapshots``. Snapshots found there (the
kept parent of an incremental chain) are still used and released; the directory is removed once
empty.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from snapagent.errors import CommandFailed, SnapshotFailed
from snapagent.util import mountinfo
from snapagent.util.fs import is_within
from snapagent.util.runner import Runner

log = logging.getLogger("snapagent.btrfs")

DIRNAME = ".snapagent-snapshots"
MOUNT_BASE = Path("/run/snapagent/btrfs")
OWNER = {"kind": "driver", "name": "btrfs"}


def old_default(volume: str | Path) -> Path:
    """Return where snapshots of ``volume`` lived before: inside it."""
    return Path(volume) / DIRNAME


def _entries() -> list[mountinfo.MountEntry]:
    return mountinfo.read()


def fs_path(volume: Path, entries: list[mountinfo.MountEntry]) -> tuple[mountinfo.MountEntry, str]:
    """Return (the mount ``volume`` lies on, ``volume``'s path inside its filesystem, "/" being
    the top-level subvolume)."""
    real = mountinfo.existing(volume)
    m = mountinfo.find_mount(real, entries)
    rel = os.path.relpath(real, m.mount_point)
    return m, os.path.normpath(os.path.join(m.root, "" if rel == "." else rel))


def parent_place(volume: Path, volumes: list[Path], entries: list[mountinfo.MountEntry]) -> Path | None:
    """Return ``<A>/.snapagent-snapshots`` for the nearest ancestor A of ``volume`` on the same
    filesystem and outside every one of ``volumes``; None when there is none (a mount root)."""
    m, _ = fs_path(volume, entries)
    for a in Path(os.path.realpath(volume)).parents:
        if mountinfo.find_mount(mountinfo.existing(a), entries).dev != m.dev:
            return None
        if not any(a == v or is_within(a, v) for v in volumes):
            return a / DIRNAME
    return None


def mount_toplevel(runner: Runner, journal, source: str) -> Path:
    """Mount the top-level subvolume of the btrfs filesystem on ``source`` at a new private
    directory (journaled first); return it. Raise SnapshotFailed."""
    if runner.dry_run:
        mnt = MOUNT_BASE / "top-XXXXXX"
    else:
        MOUNT_BASE.mkdir(mode=0o700, parents=True, exist_ok=True)
        for d in (MOUNT_BASE.parent, MOUNT_BASE):
            os.chmod(d, 0o700)
        mnt = Path(tempfile.mkdtemp(prefix="top-", dir=MOUNT_BASE))
    if journal:
        journal.open("mount", str(mnt), OWNER, source=source)
    try:
        runner.run(["mount", "-t", "btrfs", "-o", "subvolid=5,nodev,nosuid,noexec", "--source", source,
                    "--target", str(mnt)], mutating=True, timeout=60)
    except CommandFailed as e:
        raise SnapshotFailed(f"mounting the top-level subvolume of {source} at {mnt} failed: "
                             f"{e.stderr.strip() or e}") from None
    return mnt


def unmount(runner: Runner, mnt: Path) -> bool:
    """Unmount a top-level mount made by ``mount_toplevel`` and remove its directory; return True
    when it was mounted. Raise CommandFailed when it stays mounted."""
    was = mountinfo.mounted_at(mnt) is not None
    if was:
        runner.run(["umount", str(mnt)], mutating=True, timeout=120)
    if not runner.dry_run:
        try:
            mnt.rmdir()
        except FileNotFoundError:
            pass
    return was


def remove_old_dir(runner: Runner, volume: str) -> None:
    """Remove ``<volume>/.snapagent-snapshots`` (the old default place) when it is empty."""
    d = old_default(volume)
    if runner.dry_run or not d.is_dir() or d.is_symlink():
        return
    try:
        d.rmdir()
        log.info("btrfs: removed the empty old snapshot directory %s", d)
    except OSError:
        pass  # not empty: a kept parent is still there; released with its chain


def via_toplevel(runner: Runner, source: str, fs_path: str, delete) -> bool:
    """Mount the top-level subvolume of ``source`` for a moment (unjournaled: ``cleanup`` itself
    runs this, and unmounts in any case), call ``delete(path)`` on ``fs_path`` in it; return its
    answer (False: nothing there)."""
    mnt = mount_toplevel(runner, None, source)
    try:
        return bool(delete(mnt / fs_path.lstrip("/")))
    finally:
        unmount(runner, mnt)

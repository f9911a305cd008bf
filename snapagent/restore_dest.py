"""Restore's cheap checks of DEST, made before any artifact is read.

``precheck`` looks at DEST and at manifests only — never at an artifact — so a restore that
cannot succeed is refused in milliseconds instead of after verifying every artifact (hours on a
large backup). It refuses (RestoreRefused, naming DEST and the fix):

- a directory DEST that is a symlink, exists and is not a directory, is not empty (without
  ``--force``), or is a mount point with ``--force`` (which renames DEST aside: a mount point
  cannot be renamed); whose parent does not exist (restore creates DEST, never its parents, so
  a failed restore leaves nothing behind); whose filesystem is mounted read-only; that we may
  not write to; that the driver cannot restore into (``RestoreDirectoryCheck``: a btrfs send
  stream needs btrfs);
- a dataset DEST the driver refuses (``DatasetPrecheck``: a new, valid name in an existing pool);
- not enough space: the sum of the uncompressed sizes (the manifest's ``raw_size``) of every
  artifact the restore extracts — each volume's chain and the quiescers' extra artifacts —
  against the space available on DEST's filesystem (``statvfs``: the blocks available to
  unprivileged users, so the root reserve stays free) or in the dataset's pool.

The space figure is an estimate: a tar stream is a little larger than the files' data (512-byte
headers), but many tiny files take whole blocks on disk, and a compressing filesystem stores less;
``--no-space-check`` skips it. A path restore (``--path``) checks no space (it extracts a part).
Every manifest records ``raw_size`` (the first format did too), so no backup lacks the figure.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from pathlib import Path

from snapagent import catalog
from snapagent.config import Config
from snapagent.errors import RestoreRefused
from snapagent.plugin.driver import DatasetPrecheck, DatasetRestore, Driver, RestoreDirectoryCheck
from snapagent.plugin.target import Stored
from snapagent.util import mountinfo


@dataclass(frozen=True)
class DestCheck:
    """What ``precheck`` found: DEST as shown, the bytes the restore needs (None: not checked)
    and those free where it writes (None: unknown)."""

    dest: str
    need: int | None = None
    free: int | None = None


def mib(n: int) -> str:
    """Return ``n`` bytes as a figure in MiB (``1,234.5 MiB``)."""
    return f"{n / (1 << 20):,.1f} MiB"


def needed_bytes(config: Config, stored: Stored) -> int:
    """Return the uncompressed size of every artifact a whole restore of ``stored`` extracts: each
    link of each volume's chain (manifests only; raise what ``catalog.chain`` raises) and the
    quiescers' extra artifacts."""
    m = stored.manifest
    seen: set[tuple[str, str]] = set()
    total = 0
    for vol in m.volumes:
        for link, item in catalog.chain(config, stored, vol):
            if (link.id, item.artifact) not in seen:
                seen.add((link.id, item.artifact))
                total += link.manifest.artifact(item.artifact).raw_size
    for q in m.quiescers:
        total += sum(m.artifact(extra.artifact).raw_size for extra in q.artifacts)
    return total


def precheck(config: Config, driver: Driver, stored: Stored, dest: Path | str, force: bool = False,
             whole: bool = True, space: bool = True, arg: str = "--to") -> DestCheck:
    """Check DEST for a restore of ``stored`` by ``driver`` before any artifact is read: a
    dataset when the driver says the backup restores into one (``whole`` restores only), else a
    directory (see the module docstring); ``space``: also the estimated size against the free
    space. Return what was found; raise RestoreRefused naming ``arg`` (what the user calls
    DEST), DEST and the fix."""
    m = stored.manifest
    if whole and isinstance(driver, DatasetPrecheck):
        found = driver.check_dataset(str(dest), m, force)
        if found is not None:
            need = needed_bytes(config, stored) if space else None
            _check_space(f"{arg} {dest}", need, found.free, found.where)
            return DestCheck(str(dest), need, found.free)
    elif whole and isinstance(driver, DatasetRestore):
        return DestCheck(str(dest))  # a driver without DatasetPrecheck: prepare_dataset decides
    path = Path(os.path.abspath(dest))
    shown = f"{arg} {path}"
    place = _directory_place(path, force, shown)
    if isinstance(driver, RestoreDirectoryCheck):
        try:
            for v in m.volumes:
                driver.check_restore_directory(path / v.label, v.format)
        except RestoreRefused as e:
            raise RestoreRefused(f"{shown}: {e}") from None
    st = os.statvfs(place)
    if st.f_flag & os.ST_RDONLY:
        raise RestoreRefused(f"{shown}: {place} is on a read-only filesystem "
                             f"(mounted at {mountinfo.mount_of(place).mount_point}); restore somewhere writable")
    if not os.access(place, os.W_OK | os.X_OK):
        raise RestoreRefused(f"{shown}: {place} is not writable for uid {os.getuid()} (its permissions, ACLs "
                             "or an immutable attribute); restore somewhere writable")
    need = needed_bytes(config, stored) if space and whole else None
    free = st.f_bavail * st.f_frsize
    _check_space(shown, need, free, f"the filesystem of {place}")
    return DestCheck(str(path), need, free)


def _directory_place(dest: Path, force: bool, shown: str) -> Path:
    """Return the directory a restore into ``dest`` writes in (DEST itself, or its parent when it
    creates DEST); raise RestoreRefused for a DEST it cannot be."""
    if dest.is_symlink():
        raise RestoreRefused(f"{shown}: is a symlink; restore refuses to follow it (name the real directory)")
    if dest.exists():
        if not dest.is_dir():
            raise RestoreRefused(f"{shown}: exists and is not a directory; name a new or empty directory")
        if not any(dest.iterdir()):
            return dest
        if not force:
            raise RestoreRefused(f"{shown}: is not empty; use --force to move its content aside "
                                 f"({dest}.pre-restore-…), or name a new or empty directory")
        if mountinfo.mounted_at(os.path.realpath(dest)) is not None:
            raise RestoreRefused(f"{shown}: is a mount point, which --force cannot move aside; "
                                 "restore into a new directory inside it, or empty it first")
    parent = dest.parent
    if not parent.is_dir():
        raise RestoreRefused(f"{shown}: its parent {parent} does not exist or is not a directory; "
                             f"create it first (mkdir -p -- {shlex.quote(str(parent))}) or name another place")
    return parent


def _check_space(shown: str, need: int | None, free: int | None, where: str) -> None:
    if need is not None and free is not None and need > free:
        raise RestoreRefused(f"{shown}: the restore needs about {mib(need)} (the backup's uncompressed size), "
                             f"but {where} has {mib(free)} free; free some space or restore elsewhere "
                             "(--no-space-check restores anyway, e.g. onto a compressing filesystem)")

"""Restore side of the ZFS driver (its DatasetRestore capability): ``zfs receive`` into a new
dataset, tar extraction into a directory, scratch datasets for drills.

For a ``send`` backup, ``restore ID --to DEST`` takes DEST as the name of a NEW dataset: it is
created (its parents too; journaled, so a failed or killed restore destroys it again) and every
volume is received as ``DEST/<label>``, the chain's full stream first, then each incremental in
order (``-F`` rolls the copy back to its last snapshot, which only matters if something touched it
between two receives). A received ``mountpoint`` property is ignored (``-x mountpoint``), so the
copy mounts below DEST's mountpoint, never over the live data. A ``tar`` backup restores into a
directory exactly as every other driver's.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import IO, Any

from snapagent.errors import CommandFailed, OperationFailed, RestoreRefused
from snapagent.manifest import Manifest, Volume
from snapagent.plugin.driver import DatasetDest, DatasetSpace, DirectoryDest, PreparedDataset, VolumeDest
from snapagent.util import tar
from snapagent.util.tar import ScanReport

from .names import dataset_problem, pool_of
from .zfscmd import Zfs, ZfsCommandFailed, classify

CHUNK = 1 << 20
OWNER = {"kind": "driver", "name": "zfs"}


class ZfsRestoreMixin:
    """check_dataset / prepare_dataset / drill_dataset / restore of ZfsDriver."""

    zfs: Zfs

    def prepare_dataset(self, dest: str, manifest: Manifest, force: bool) -> PreparedDataset | None:
        """For a send backup: check that DEST names a new dataset of an existing pool, rename an
        existing one aside when ``force`` (``DEST.pre-restore-<time>``), create it (both journaled);
        return it. For tar: None (DEST is a directory). Raises RestoreRefused (nothing written)."""
        if self.check_dataset(dest, manifest, force) is None:
            return None
        dest = dest.rstrip("/")
        journal = self.journal  # type: ignore[attr-defined]
        moved = None
        if self.zfs.exists(dest) is not None:
            moved = f"{dest}.pre-restore-{time.strftime('%Y%m%dT%H%M%S')}"
            if journal:
                journal.open("renamed", moved, OWNER, back_to=dest)
            _or_fail(self.zfs.rename, dest, moved)
        if journal:
            journal.open("dataset", dest, OWNER)
        _or_fail(self.zfs.create, dest)
        if self.runner.dry_run:  # type: ignore[attr-defined]
            return PreparedDataset(dest, Path("/nonexistent-dry-run"), moved)
        mountpoint = _or_fail(self.zfs.list, [dest], ["mountpoint"])[0]["mountpoint"]
        return PreparedDataset(dest, Path(mountpoint), moved)

    def check_dataset(self, dest: str, manifest: Manifest, force: bool) -> DatasetSpace | None:
        """For a send backup, read only: check that DEST names a new dataset of an existing pool
        (an existing one only with ``force``); return the space available in its nearest existing
        ancestor (what ``zfs create -p`` would create it in). For tar: None (DEST is a directory).
        Raises RestoreRefused (nothing read, nothing written)."""
        if manifest.export_format != "send":
            return None
        dest = dest.rstrip("/")
        if why := dataset_problem(dest):
            raise RestoreRefused(
                f"backup {manifest.id} holds `zfs send` streams, so --to names a NEW ZFS dataset "
                f"(e.g. tank/restored); {dest!r} is not one: {why}")
        pool = pool_of(dest)
        if self.zfs.exists(pool) is None:
            raise RestoreRefused(f"--to {dest!r}: pool {pool!r} does not exist (zpool list)")
        if self.zfs.exists(dest) is not None and not force:
            raise RestoreRefused(f"dataset {dest!r} already exists; choose a new name, or use --force to "
                                 f"rename it aside to {dest}.pre-restore-<time>")
        parent = dest
        while "/" in parent and self.zfs.exists(parent) is None:
            parent = parent.rsplit("/", 1)[0]
        avail = _or_fail(self.zfs.list, [parent], ["available"])[0]["available"]
        return DatasetSpace(int(avail) if avail.isdigit() else None, f"zfs dataset {parent}")

    def drill_dataset(self, manifest: Manifest, unique: str) -> str | None:
        """For a send backup: return a new scratch dataset ``<drill_parent>/<unique>`` (creating
        drill_parent if needed); for tar: None (drill uses a scratch directory)."""
        if manifest.export_format != "send":
            return None
        parent = self.options.drill_parent or f"{pool_of(manifest.volumes[0].volume)}/snapagent-drill"  # type: ignore[attr-defined]
        if self.zfs.exists(parent) is None:
            _or_fail(self.zfs.create, parent)
        return f"{parent}/{unique}"

    def restore(self, stream: IO[bytes], fmt: str, dest: VolumeDest, record: Volume, scan: ScanReport | None,
                allow_special: bool = False) -> Path:
        """Receive (send, into a DatasetDest) or extract (tar, into a DirectoryDest) one link of a
        volume's chain; return the restored files' directory."""
        runner = self.runner  # type: ignore[attr-defined]
        if fmt == "tar":
            if not isinstance(dest, DirectoryDest):
                raise RestoreRefused("a tar export restores into a directory")
            dest.path.mkdir(mode=0o700, exist_ok=record.parent is not None)
            tar.extract(runner, stream, dest.path, scan, allow_special)
            return dest.path
        if fmt != "send" or not isinstance(dest, DatasetDest):
            raise RestoreRefused(f"zfs cannot restore format {fmt!r} into {dest}")
        argv = Zfs.receive_argv(dest.name, incremental=record.parent is not None)
        recv = runner.stream(argv, mutating=True, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        try:
            recv.feed(stream, CHUNK)
            recv.wait()
        except CommandFailed as e:
            raise OperationFailed(f"zfs receive into {dest.name!r} failed: {classify(e.stderr).reason}") from None
        finally:
            recv.kill()
        if runner.dry_run:
            return Path("/nonexistent-dry-run")
        row = _or_fail(self.zfs.list, [dest.name], ["name", "mounted", "mountpoint", "canmount"])[0]
        if row["mounted"] != "yes" and row["canmount"] == "on" and row["mountpoint"].startswith("/"):
            _or_fail(self.zfs.mount, dest.name)
        return Path(row["mountpoint"])


def undo_dataset(zfs: Zfs, kind: str, name: str, record: dict[str, Any]) -> str:
    """Undo a restore's ``dataset`` (destroy it with what is below it) or ``renamed`` (rename it
    back to ``back_to`` when that name is free again)."""
    if kind == "dataset":
        if zfs.exists(name) is None:
            return f"zfs dataset {name} already gone"
        _or_fail(zfs.destroy_dataset, name)
        return f"destroyed zfs dataset {name}"
    back = record["back_to"]
    if zfs.exists(name) is None:
        return f"zfs dataset {name} is gone"
    if zfs.exists(back) is not None:
        return f"left zfs dataset {name}: {back} exists again"
    _or_fail(zfs.rename, name, back)
    return f"renamed zfs dataset {name} back to {back}"


def _or_fail(fn, *args):
    try:
        return fn(*args)
    except ZfsCommandFailed as e:
        raise OperationFailed(str(e)) from None

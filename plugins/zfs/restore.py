"""Restore side of the ZFS driver: ``zfs receive`` into a new dataset, tar extraction, drill space.

For a ``send`` backup, ``restore ID --to DEST`` takes DEST as the name of a NEW dataset: it is
created (its parents too) and every volume is received as ``DEST/<label>``, the chain's full stream
first, then each incremental in order (``-F`` rolls the copy back to its last snapshot, which only
matters if something touched it between two receives). A received ``mountpoint`` property is
ignored (``-x mountpoint``), so the copy mounts below DEST's mountpoint, never over the live data.
A ``tar`` backup restores into a directory exactly as every other driver's.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import IO

from snapagent.util import tar
from snapagent.errors import CommandFailed, OperationFailed, RestoreRefused

from .names import dataset_problem, pool_of
from .zfscmd import Zfs, ZfsCommandFailed

CHUNK = 1 << 20


class ZfsRestoreMixin:
    """restore / prepare_destination / drill_destination / discard of ZfsDriver."""

    zfs: Zfs

    def prepare_destination(self, dest: str, manifest: dict, force: bool) -> tuple[str, str | None, Path] | None:
        """For a send backup: check that DEST names a new dataset of an existing pool, rename an
        existing one aside when ``force`` (``DEST.pre-restore-<time>``), create it; return
        (DEST, moved-aside name or None, DEST's mountpoint). For tar: None (DEST is a directory).
        Raises RestoreRefused (nothing written)."""
        if manifest.get("export_format") != "send":
            return None
        dest = dest.rstrip("/")
        if why := dataset_problem(dest):
            raise RestoreRefused(
                f"backup {manifest['id']} holds `zfs send` streams, so --to names a NEW ZFS dataset "
                f"(e.g. tank/restored); {dest!r} is not one: {why}")
        pool = pool_of(dest)
        if self.zfs.exists(pool) is None:
            raise RestoreRefused(f"--to {dest!r}: pool {pool!r} does not exist (zpool list)")
        moved = None
        if self.zfs.exists(dest) is not None:
            if not force:
                raise RestoreRefused(f"dataset {dest!r} already exists; choose a new name, or use --force to "
                                     f"rename it aside to {dest}.pre-restore-<time>")
            moved = f"{dest}.pre-restore-{time.strftime('%Y%m%dT%H%M%S')}"
            self._zfs_or_fail(self.zfs.rename, dest, moved)
        self._zfs_or_fail(self.zfs.create, dest)
        if self.runner.dry_run:  # type: ignore[attr-defined]
            return dest, moved, Path("/nonexistent-dry-run")
        mountpoint = self._zfs_or_fail(self.zfs.list, [dest], ["mountpoint"])[0]["mountpoint"]
        return dest, moved, Path(mountpoint)

    def drill_destination(self, manifest: dict, unique: str) -> str | None:
        """For a send backup: return a new scratch dataset ``<drill_parent>/<unique>`` (creating
        drill_parent if needed); for tar: None (drill uses a scratch directory)."""
        if manifest.get("export_format") != "send":
            return None
        parent = self.options.drill_parent or f"{pool_of(manifest['volumes'][0]['volume'])}/snapagent-drill"
        if self.zfs.exists(parent) is None:
            self._zfs_or_fail(self.zfs.create, parent)
        return f"{parent}/{unique}"

    def discard(self, path: Path | str) -> None:
        """Destroy a drill's scratch dataset (a str from drill_destination) or remove a directory."""
        if isinstance(path, str):
            if self.zfs.exists(path) is not None:
                self._zfs_or_fail(self.zfs.destroy_dataset, path)
            return
        super().discard(path)  # type: ignore[misc]

    def restore(self, stream: IO[bytes], fmt: str, dest: Path | str, item: dict, allow_special: bool = False) -> Path:
        """Receive (send) or extract (tar) one link of a volume's chain; return the restored files'
        directory. For send, ``dest`` is the dataset name ``DEST/<label>``."""
        if fmt == "tar":
            dest = Path(dest)
            dest.mkdir(mode=0o700, exist_ok=bool(item.get("parent")))
            tar.extract(self.runner, stream, dest, item["_scan"], allow_special)  # type: ignore[attr-defined]
            return dest
        if fmt != "send":
            raise RestoreRefused(f"zfs cannot restore format {fmt!r}")
        dataset = str(dest)
        argv = Zfs.receive_argv(dataset, incremental=bool(item.get("parent")))
        recv = self.runner.stream(argv, mutating=True, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)  # type: ignore[attr-defined]
        try:
            recv.feed(stream, CHUNK)
            recv.wait()
        except CommandFailed as e:
            from .zfscmd import classify

            raise OperationFailed(f"zfs receive into {dataset!r} failed: {classify(e.stderr).reason}") from None
        finally:
            recv.kill()
        if self.runner.dry_run:  # type: ignore[attr-defined]
            return Path("/nonexistent-dry-run")
        row = self._zfs_or_fail(self.zfs.list, [dataset], ["name", "mounted", "mountpoint", "canmount"])[0]
        if row["mounted"] != "yes" and row["canmount"] == "on" and row["mountpoint"].startswith("/"):
            self._zfs_or_fail(self.zfs.mount, dataset)
        return Path(row["mountpoint"])

    @staticmethod
    def _zfs_or_fail(fn, *args):
        try:
            return fn(*args)
        except ZfsCommandFailed as e:
            raise OperationFailed(str(e)) from None

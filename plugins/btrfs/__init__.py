"""btrfs driver: read-only snapshots of subvolumes, exported as tar or ``btrfs send`` streams
(full, or in ``mode = "incremental"`` ``btrfs send -p`` from the previous backup's kept snapshot:
``incremental.py``).

Snapshots live in ``<subvolume>/<snapshot_dir>/<name>`` (default ``.snapagent-snapshots``, excluded
from tar exports). btrfs cannot snapshot several subvolumes atomically; the engine holds every
quiescer across all of them. A ``send`` backup restores with ``btrfs receive`` onto btrfs only
(``check_restore_directory``); restored subvolumes are removed with ``discard``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import IO, Iterator

from snapagent.config import Strict
from snapagent.errors import CommandFailed, ExportFailed, OperationFailed, PreflightFailed, RestoreRefused, SnapshotFailed
from snapagent.manifest import Volume
from snapagent.plugin.driver import DirectoryDest, Driver, Snapshot, VolumeDest
from snapagent.plugin.helpers import first_lines, stream_of
from snapagent.util import tar
from snapagent.util.names import check_component
from snapagent.util.runner import Runner
from snapagent.util.tar import ScanReport

from .incremental import BtrfsChainMixin

BTRFS_SUPER_MAGIC = 0x9123683E
OWNER = {"kind": "driver", "name": "btrfs"}


class BtrfsOptions(Strict):
    snapshot_dir: str = ".snapagent-snapshots"  # relative: inside each subvolume; absolute: one place

    def dir_for(self, volume: Path) -> Path:
        p = Path(self.snapshot_dir)
        return p if p.is_absolute() else volume / p


def _fs_magic(path: Path) -> int | None:
    """Return the filesystem magic of ``path`` (statfs f_type), or None when it cannot be read."""
    import ctypes

    class Statfs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 120)]

    libc = ctypes.CDLL(None, use_errno=True)  # the C library already loaded (find_library would run ldconfig)
    buf = Statfs()
    if libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        return None
    return buf.f_type & 0xFFFFFFFF


class BtrfsDriver(BtrfsChainMixin, Driver):
    name = "btrfs"
    atomic = False
    export_formats = ("tar", "send")
    Options = BtrfsOptions

    def __init__(self, runner: Runner, options: BtrfsOptions | None = None):
        super().__init__(runner, options)
        self._links: dict[Path, Path] = {}

    # -- preflight ------------------------------------------------------------------------------
    @classmethod
    def volume_refusal(cls, volume: str) -> str | None:
        if not Path(volume).is_absolute():
            return (f"{volume!r} is relative; btrfs volumes are absolute subvolume paths (a relative one "
                    "would depend on the directory snapagent is started in)")
        return None

    def preflight(self, volumes: list[str]) -> list[Path]:
        """Check tools, that each volume is a btrfs subvolume (and its snapshot_dir on btrfs);
        return the volumes as directories. Raise PreflightFailed naming the volume."""
        try:
            self.runner.require("btrfs", "btrfs-progs")
            self.runner.require("tar", "tar")
        except CommandFailed as e:
            raise PreflightFailed(str(e)) from None
        for vol in volumes:
            p = Path(vol)
            if not p.is_absolute():
                raise PreflightFailed(f"volume {vol!r}: btrfs volumes are absolute subvolume paths")
            if not p.is_dir():
                raise PreflightFailed(f"volume {vol!r}: no such directory")
            if _fs_magic(p) != BTRFS_SUPER_MAGIC:
                raise PreflightFailed(f"volume {vol!r}: not on a btrfs filesystem")
            if os.stat(p).st_ino not in (256, 2):  # 256: subvolume root; 2: empty subvolume
                raise PreflightFailed(f"volume {vol!r}: not a btrfs subvolume (create it with `btrfs subvolume create`)")
            sdir = self.options.dir_for(p)
            if sdir.exists() and _fs_magic(sdir) != BTRFS_SUPER_MAGIC:
                raise PreflightFailed(f"volume {vol!r}: snapshot_dir {sdir} is not on btrfs")
        return [Path(v) for v in volumes]

    # -- snapshots ------------------------------------------------------------------------------
    def _snap_path(self, volume: str, name: str, index: int) -> Path:
        sdir = self.options.dir_for(Path(volume))
        # several volumes may share an absolute snapshot_dir: suffix the index
        return sdir / (f"{name}.{index}" if Path(self.options.snapshot_dir).is_absolute() else name)

    def snapshot(self, volumes: list[str], name: str, deadline: float) -> list[Snapshot]:
        snaps: list[Snapshot] = []
        for i, vol in enumerate(volumes):
            path = self._snap_path(vol, name, i)
            if not self.runner.dry_run:
                path.parent.mkdir(mode=0o700, exist_ok=True)
            if self.journal:
                self.journal.open("snapshot", str(path), OWNER, volume=vol)
            remaining = max(0.1, deadline - time.monotonic())
            try:
                self.runner.run(["btrfs", "subvolume", "snapshot", "-r", vol, str(path)], mutating=True, timeout=remaining)
            except CommandFailed as e:
                raise SnapshotFailed(f"btrfs snapshot of {vol!r} failed: {e.stderr.strip() or e}") from None
            snaps.append(Snapshot(vol, str(path), name, {"path": str(path)}))
        return snaps

    def release(self, snap: Snapshot) -> None:
        self._delete(self.runner, Path(snap.handle))
        if self.journal:
            self.journal.close("snapshot", snap.handle)

    @staticmethod
    def _delete(runner: Runner, path: Path) -> bool:
        if not runner.dry_run and not path.exists():
            return False
        runner.run(["btrfs", "subvolume", "delete", "--commit-after", str(path)], mutating=True, timeout=120)
        return True

    @classmethod
    def undo(cls, record: dict, runner: Runner) -> str:
        """Delete the snapshot (``snapshot``) or the received subvolume (``received``) of a record."""
        path = Path(record["key"])
        kind = record.get("kind")
        if kind not in ("snapshot", "received"):
            raise OperationFailed(f"btrfs: unknown journal record {kind!r}")
        what = "snapshot" if kind == "snapshot" else "received subvolume"
        if cls._delete(runner, path):
            return f"deleted btrfs {what} {path}"
        return f"btrfs {what} {path} already gone"

    # -- export ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def export(self, snap: Snapshot, fmt: str, base: Volume | None = None) -> Iterator[IO[bytes]]:
        if fmt == "tar":
            excludes = []
            if not Path(self.options.snapshot_dir).is_absolute():
                excludes.append(self.options.snapshot_dir)
            argv = tar.create_argv(Path(snap.handle), excludes)
        elif fmt == "send":
            argv = self.send_argv(snap, base)
        else:
            raise ExportFailed(f"btrfs cannot export {fmt!r}")
        with stream_of(self.runner, argv, snap.volume) as stream:
            yield stream

    # -- restore --------------------------------------------------------------------------------
    def check_restore_directory(self, dest: Path, fmt: str) -> None:
        if fmt != "send":
            return
        probe = dest
        while not probe.exists():
            probe = probe.parent
        if _fs_magic(probe) != BTRFS_SUPER_MAGIC:
            raise RestoreRefused(f"a btrfs send stream can only be received on btrfs; {probe} is not "
                                 "(restore to a directory on btrfs, or use export = \"tar\")")

    def restore(self, stream: IO[bytes], fmt: str, dest: VolumeDest, record: Volume, scan: ScanReport | None,
                allow_special: bool = False) -> Path:
        if not isinstance(dest, DirectoryDest):
            raise RestoreRefused("btrfs restores into a directory")
        path = dest.path
        if fmt == "tar":
            path.mkdir(mode=0o700)
            tar.extract(self.runner, stream, path, scan, allow_special)
            return path
        if fmt != "send":
            raise RestoreRefused(f"btrfs cannot restore format {fmt!r}")
        try:
            name = check_component(Path(record.snapshot).name)
        except ValueError as e:
            raise RestoreRefused(f"the backup names its snapshot unsafely: {e}") from None
        parent = path.parent
        self.check_restore_directory(parent, fmt)
        received = parent / name
        if self.journal:
            self.journal.open("received", str(received), OWNER)
        recv = self.runner.stream(["btrfs", "receive", "-e", "--chroot", "--", str(parent)], mutating=True, stdin=subprocess.PIPE,
                                  stdout=subprocess.DEVNULL)
        try:
            recv.feed(stream)
            recv.wait()
        finally:
            recv.kill()
        self.received_link(path, received)  # finish_chain makes DEST/<label> of the newest link
        return received

    @classmethod
    def discard(cls, path: Path, runner: Runner) -> None:
        """Remove a restored tree holding subvolumes (``btrfs receive`` makes them): delete every
        subvolume below ``path``, deepest first (read-only ones included), then the rest."""
        subvols = []
        for d, dirs, _ in os.walk(path):
            for name in dirs:
                p = Path(d) / name
                if not p.is_symlink() and _is_subvolume(p):
                    subvols.append(p)
        if _is_subvolume(path):
            subvols.append(path)
        for sv in sorted(subvols, key=lambda p: len(p.parts), reverse=True):
            runner.run(["btrfs", "subvolume", "delete", str(sv)], mutating=True, timeout=120)
        if path.exists() and not runner.dry_run:
            shutil.rmtree(path)

    def tool_versions(self) -> dict[str, str]:
        return first_lines(self.runner, {"btrfs": ["btrfs", "--version"], "tar": ["tar", "--version"]}, timeout=10)


def _is_subvolume(p: Path) -> bool:
    """True when directory ``p`` is the root of a btrfs subvolume (inode 256, its own device)."""
    try:
        st, parent = os.lstat(p), os.lstat(p.parent)
    except OSError:
        return False
    return st.st_ino == 256 and st.st_dev != parent.st_dev and _fs_magic(p) == BTRFS_SUPER_MAGIC

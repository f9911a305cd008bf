"""btrfs driver: read-only snapshots of subvolumes, exported as tar or ``btrfs send`` streams.

Snapshots live in ``<subvolume>/<snapshot_dir>/<name>`` (default ``.snapagent-snapshots``, excluded
from tar exports). btrfs cannot snapshot several subvolumes atomically; the engine holds every
quiescer across all of them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from pathlib import Path
from typing import IO, Iterator

from snapagent.util import tar
from snapagent.config import Strict
from snapagent.plugin.driver import Driver, Snapshot
from snapagent.errors import CommandFailed, ExportFailed, OperationFailed, PreflightFailed, RestoreRefused, SnapshotFailed
from snapagent.util.runner import Runner

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
    import ctypes.util

    class Statfs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 120)]

    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    buf = Statfs()
    if libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        return None
    return buf.f_type & 0xFFFFFFFF


class BtrfsDriver(Driver):
    name = "btrfs"
    atomic = False
    export_formats = ("tar", "send")
    Options = BtrfsOptions

    # -- preflight ------------------------------------------------------------------------------
    def preflight(self, volumes: list[str]) -> None:
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

    def volume_root(self, volume: str) -> Path:
        return Path(volume)

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
        path = Path(record["key"])
        if record.get("kind") != "snapshot":
            raise OperationFailed(f"btrfs: unknown journal record {record.get('kind')!r}")
        if cls._delete(runner, path):
            return f"deleted btrfs snapshot {path}"
        return f"btrfs snapshot {path} already gone"

    # -- export ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def export(self, snap: Snapshot, fmt: str, parent: dict | None = None) -> Iterator[IO[bytes]]:
        if fmt == "tar":
            excludes = []
            if not Path(self.options.snapshot_dir).is_absolute():
                excludes.append(self.options.snapshot_dir)
            argv = tar.create_argv(Path(snap.handle), excludes)
        elif fmt == "send":
            argv = ["btrfs", "send"]
            if parent and parent.get("path") and Path(parent["path"]).exists():
                argv += ["-p", parent["path"]]
            argv += ["--", snap.handle]
        else:
            raise ExportFailed(f"btrfs cannot export {fmt!r}")
        with self.stream_export(argv, snap) as stream:
            yield stream

    # -- restore --------------------------------------------------------------------------------
    def check_restore_dest(self, dest: Path, fmt: str) -> None:
        if fmt != "send":
            return
        probe = dest
        while not probe.exists():
            probe = probe.parent
        if _fs_magic(probe) != BTRFS_SUPER_MAGIC:
            raise RestoreRefused(f"a btrfs send stream can only be received on btrfs; {probe} is not "
                                 "(restore to a directory on btrfs, or use export = \"tar\")")

    def restore(self, stream: IO[bytes], fmt: str, dest: Path, item: dict, allow_special: bool = False) -> Path:
        if fmt == "tar":
            dest.mkdir(mode=0o700)
            tar.extract(self.runner, stream, dest, item["_scan"], allow_special)
            return dest
        if fmt != "send":
            raise RestoreRefused(f"btrfs cannot restore format {fmt!r}")
        parent = dest.parent
        self.check_restore_dest(parent, fmt)
        recv = self.runner.stream(["btrfs", "receive", "-e", "--", str(parent)], mutating=True, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
        try:
            recv.feed(stream)
            recv.wait()
        finally:
            recv.kill()
        received = parent / Path(item["snapshot"]).name
        # the received subvolume is read-only; make a writable one under the requested name
        self.runner.run(["btrfs", "subvolume", "snapshot", str(received), str(dest)], mutating=True)
        self.runner.run(["btrfs", "subvolume", "delete", str(received)], mutating=True)
        return dest

    def discard(self, path: Path) -> None:
        if path.is_dir() and not path.is_symlink() and os.stat(path).st_ino == 256:
            self.runner.run(["btrfs", "subvolume", "delete", str(path)], mutating=True)
        else:
            super().discard(path)

    def tool_versions(self) -> dict[str, str]:
        return self.first_lines({"btrfs": ["btrfs", "--version"], "tar": ["tar", "--version"]}, timeout=10)



"""What the classic and the thin LVM drivers share: volumes ``vg/lv``, where they are mounted,
the journaled snapshot → private read-only mount → tar export → unmount → ``lvremove -f`` cycle,
undo after a killed run, and tar restore.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import IO, Any, ClassVar, Iterator

from snapagent.errors import CommandFailed, ExportFailed, OperationFailed, PreflightFailed, RestoreRefused, SnapshotFailed
from snapagent.manifest import Volume
from snapagent.plugin.driver import DirectoryDest, Driver, Snapshot, VolumeDest
from snapagent.plugin.helpers import first_lines
from snapagent.util import mountinfo, tar
from snapagent.util.runner import Runner
from snapagent.util.tar import ScanReport

from . import mounts
from .monitor import SnapWatch
from .names import LvRef, parse_volume, snapshot_name
from .report import LvInfo, lv_exists, lv_info

log = logging.getLogger("snapagent.lvm")


class LvmDriverBase(Driver):
    """Shared LVM driver; subclasses define the snapshot command and their preflight checks."""

    atomic = False  # one lvcreate per LV; the engine holds every quiescer across all of them
    export_formats = ("tar",)
    TOOLS: ClassVar[tuple[str, ...]] = ("lvs", "lvcreate", "lvremove", "mount", "umount", "tar")

    def __init__(self, runner: Runner, options: Any = None):
        super().__init__(runner, options)
        self._infos: dict[str, LvInfo] = {}
        self._mounts: dict[str, mountinfo.MountEntry] = {}
        #: (name, volumes, [(volume, handle, lvcreate argv, mount entry)]) made by prepare_snapshot
        self._prepared: tuple[str, list[str], list[tuple[str, str, list[str], Any]]] | None = None

    @classmethod
    def owner(cls) -> dict[str, str]:
        return {"kind": "driver", "name": cls.name}

    @classmethod
    def configured_places(cls, options: Any) -> list[tuple[str, str]]:
        """SnapshotPlaces: a configured ``mount_base`` (snapshots are mounted below it while exported)."""
        base = getattr(options, "mount_base", None)
        return [("options.mount_base", str(base))] if base is not None else []

    # -- preflight ------------------------------------------------------------------------------
    def preflight(self, volumes: list[str]) -> list[Path]:
        """Check names (ConfigError), tools, that each LV exists, is of this driver's kind and is
        mounted, and the driver's space policy (PreflightFailed with the numbers); return where
        each LV is mounted."""
        refs = [parse_volume(v) for v in volumes]
        for tool in self.TOOLS:
            try:
                self.runner.require(tool, "tar" if tool == "tar" else ("mount" if "mount" in tool else "lvm2"))
            except CommandFailed as e:
                raise PreflightFailed(str(e)) from None
        base = mounts.mount_base(self.options.mount_base)
        if not base.is_dir():
            raise PreflightFailed(f"options.mount_base {str(base)!r} is not a directory")
        for vol, ref in zip(volumes, refs):
            info = lv_info(self.runner, ref, vol)
            self.check_kind(vol, info)
            if not info.active:
                raise PreflightFailed(f"volume {vol!r}: the logical volume is not active (lvchange -ay {ref})")
            entry = mountinfo.find_device(info.major, info.minor)
            if entry is None:
                raise PreflightFailed(f"volume {vol!r}: {info.dm_path or ref} (device {info.major}:{info.minor}) "
                                      "is not mounted; snapagent backs up the files of a mounted LV")
            self._infos[vol], self._mounts[vol] = info, entry
        self.check_space(volumes)
        return [self.volume_root(v) for v in volumes]

    def check_kind(self, volume: str, info: LvInfo) -> None:
        """Raise PreflightFailed when ``info`` is not an LV this driver can snapshot."""

    def check_space(self, volumes: list[str]) -> None:
        """Raise PreflightFailed when the snapshots would not fit (uses the infos of preflight)."""

    def _lookup(self, volume: str) -> tuple[LvInfo, mountinfo.MountEntry]:
        if volume not in self._infos:
            info = lv_info(self.runner, parse_volume(volume), volume)
            entry = mountinfo.find_device(info.major, info.minor) if info.active else None
            if entry is None:
                raise PreflightFailed(f"volume {volume!r}: not mounted")
            self._infos[volume], self._mounts[volume] = info, entry
        return self._infos[volume], self._mounts[volume]

    def volume_root(self, volume: str) -> Path:
        """Return where LV ``volume`` is mounted (found by its device number in mountinfo)."""
        return Path(self._lookup(volume)[1].mount_point)

    # -- snapshots ------------------------------------------------------------------------------
    def create_argv(self, ref: LvRef, snap_lv: str, volume: str) -> list[str]:
        """Return the lvcreate argv making snapshot ``snap_lv`` of ``ref``."""
        raise NotImplementedError

    def prepare_snapshot(self, volumes: list[str], name: str) -> None:
        """Look every volume up (``lvs``, mountinfo), build the ``lvcreate`` argv and journal the
        snapshot before the first lock is taken: the freeze window holds only the ``lvcreate``s."""
        plan = []
        for i, vol in enumerate(volumes):
            ref = parse_volume(vol)
            snap_lv = snapshot_name(name, i, len(volumes))
            handle = f"{ref.vg}/{snap_lv}"
            entry = self._lookup(vol)[1]
            plan.append((vol, handle, self.create_argv(ref, snap_lv, vol), entry))
            if self.journal:
                self.journal.open("snapshot", handle, self.owner(), volume=vol, origin=ref.lv)
        self._prepared = (name, list(volumes), plan)

    def snapshot(self, volumes: list[str], name: str, deadline: float) -> list[Snapshot]:
        if self._prepared is None or self._prepared[:2] != (name, list(volumes)):
            self.prepare_snapshot(volumes, name)
        assert self._prepared is not None
        plan, self._prepared = self._prepared[2], None
        snaps: list[Snapshot] = []
        for vol, handle, argv, entry in plan:
            remaining = max(0.1, deadline - time.monotonic())
            try:
                self.runner.run(argv, mutating=True, timeout=remaining)
            except CommandFailed as e:
                raise SnapshotFailed(f"LVM snapshot of {vol!r} failed: {e.stderr.strip() or e}") from None
            snaps.append(Snapshot(vol, handle, name, {"lv": handle, "fstype": entry.fstype, **self.snapshot_info(vol)}))
        return snaps

    def snapshot_info(self, volume: str) -> dict[str, Any]:
        """Return extra facts about the snapshot of ``volume`` for the manifest."""
        return {}

    def release(self, snap: Snapshot) -> None:
        """Unmount ``snap`` if it is still mounted, ``lvremove -f`` it, close its journal entry."""
        self._unmount(self._mount_point(snap))
        self._remove(self.runner, snap.handle, snap.volume)
        if self.journal:
            self.journal.close("snapshot", snap.handle)

    @staticmethod
    def _remove(runner: Runner, handle: str, origin: str | None) -> bool:
        """``lvremove -f`` snapshot ``handle`` if it exists and is a snapshot of ``origin``; return
        True when it was removed. Raises OperationFailed for an LV that is not our snapshot."""
        ref = parse_volume(handle)
        if not runner.dry_run and not lv_exists(runner, ref):
            return False
        if not runner.dry_run and origin is not None:
            info = lv_info(runner, ref)
            if info.origin != parse_volume(origin).lv:
                raise OperationFailed(f"{handle} is not a snapshot of {origin} (origin {info.origin!r}); not removing it")
        runner.run(["lvremove", "-f", str(ref)], mutating=True, timeout=120)
        return True

    @classmethod
    def undo(cls, record: dict, runner: Runner) -> str:
        """Undo an open ``mount`` (umount, remove its private directory) or ``snapshot`` (lvremove)."""
        kind, key = record.get("kind"), record["key"]
        if kind == "mount":
            did = mounts.unmount(runner, Path(key))
            return f"unmounted {key}" if did else f"mount {key} already gone"
        if kind == "snapshot":
            origin = f"{key.split('/', 1)[0]}/{record['origin']}" if record.get("origin") else None
            if cls._remove(runner, key, origin):
                return f"removed LVM snapshot {key}"
            return f"LVM snapshot {key} already gone"
        raise OperationFailed(f"{cls.name}: unknown journal record {kind!r}")

    # -- export ---------------------------------------------------------------------------------
    def activate(self, snap: Snapshot) -> None:
        """Make the snapshot's device available (thin snapshots skip activation by default)."""

    def watch(self, snap: Snapshot) -> SnapWatch | None:
        """Return a SnapWatch for ``snap`` (classic snapshots), or None."""
        return None

    def raise_if_failed(self, snap: Snapshot, watch: SnapWatch | None) -> None:
        """Raise SnapshotFailed when ``watch`` saw (or a last poll sees) the snapshot fail."""

    def check_after_export(self, snap: Snapshot) -> None:
        """Raise SnapshotFailed when the snapshot is not (or cannot be shown to be) intact after
        its export completed."""

    @contextlib.contextmanager
    def export(self, snap: Snapshot, fmt: str, base: Volume | None = None) -> Iterator[IO[bytes]]:
        """Mount ``snap`` read-only at a private place, stream it as tar, unmount. A classic
        snapshot's fill is watched meanwhile; one that fills up or becomes invalid raises
        SnapshotFailed (its content cannot be trusted)."""
        if fmt != "tar":
            raise ExportFailed(f"{self.name} cannot export {fmt!r} (only tar)")
        mnt = self._mount_point(snap)
        watch = self.watch(snap)
        self._mount(snap, mnt, watch)
        proc = None
        try:
            proc = self.runner.stream(tar.create_argv(mnt), mutating=False)
            if watch is not None:
                watch.on_fail = proc.kill
                watch.start()
            try:
                yield proc.stdout
                proc.wait()
            except CommandFailed as e:
                self.raise_if_failed(snap, watch)
                raise ExportFailed(f"export of {snap.volume!r} (snapshot {snap.handle}) failed: {e}") from None
            self.raise_if_failed(snap, watch)
            self.check_after_export(snap)
        finally:
            if watch is not None:
                watch.stop()
                snap.info["snap_percent_max"] = watch.max_percent
            if proc is not None:
                proc.kill()
            self._unmount(mnt)

    def _mount_point(self, snap: Snapshot) -> Path:
        return mounts.mount_point(mounts.mount_base(self.options.mount_base), snap.handle.split("/", 1)[1])

    def _mount(self, snap: Snapshot, mnt: Path, watch: SnapWatch | None) -> None:
        """Journal, create and mount ``mnt`` read-only from ``snap``; raise ExportFailed (or
        SnapshotFailed when the snapshot already overflowed)."""
        if self.journal:
            self.journal.open("mount", str(mnt), self.owner(), lv=snap.handle)
        try:
            self.activate(snap)
            info = lv_info(self.runner, snap.handle)
            device = info.dm_path or f"/dev/{snap.handle}"
            fstype = snap.info.get("fstype", "")
            mounts.make_dirs(mnt)
            opts = mounts.mount_options(fstype, self.options.mount_options)
            self.runner.run(mounts.mount_argv(device, mnt, fstype, opts), mutating=True, timeout=120)
        except (CommandFailed, PreflightFailed, OSError) as e:
            self._unmount(mnt)
            self.raise_if_failed(snap, watch)
            raise ExportFailed(f"cannot mount snapshot {snap.handle} of {snap.volume!r}: {e}") from None

    def _unmount(self, mnt: Path) -> None:
        """Unmount ``mnt`` and close its journal entry; on failure leave it open for the undo."""
        try:
            mounts.unmount(self.runner, mnt)
        except CommandFailed as e:
            log.error("could not unmount %s (cleanup will retry): %s", mnt, e)
            return
        if self.journal:
            self.journal.close("mount", str(mnt))

    # -- restore --------------------------------------------------------------------------------
    def restore(self, stream: IO[bytes], fmt: str, dest: VolumeDest, record: Volume, scan: ScanReport | None,
                allow_special: bool = False) -> Path:
        if fmt != "tar" or not isinstance(dest, DirectoryDest):
            raise RestoreRefused(f"{self.name} restores format tar into a directory, not {fmt!r}")
        dest.path.mkdir(mode=0o700)
        tar.extract(self.runner, stream, dest.path, scan, allow_special)
        return dest.path

    def tool_versions(self) -> dict[str, str]:
        return first_lines(self.runner, {"lvm": ["lvs", "--version"], "tar": ["tar", "--version"]})

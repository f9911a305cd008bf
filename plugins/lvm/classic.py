"""Classic (copy-on-write) LVM snapshots: ``lvcreate -s -n <name> -L <size> vg/lv``.

The COW size follows ``options.snapshot_size`` (percent of the origin, or a size), rounded up to
whole extents; preflight refuses when a volume group cannot hold the snapshots of the job. While a
snapshot is exported its fill (Snap%) is polled; a snapshot that fills up or becomes invalid fails
the backup (its content can no longer be trusted) and nothing is stored.
"""

from __future__ import annotations

from typing import Any

from snapagent.errors import CommandFailed, PreflightFailed, SnapshotFailed
from snapagent.plugin.driver import Snapshot

from .base import LvmDriverBase
from .monitor import SnapWatch
from .names import LvRef
from .options import LvmOptions
from .report import LvInfo, snap_status
from .sizing import room_problems, snapshot_bytes


class LvmDriver(LvmDriverBase):
    name = "lvm"
    Options = LvmOptions

    def check_kind(self, volume: str, info: LvInfo) -> None:
        if info.is_snapshot:
            raise PreflightFailed(f"volume {volume!r} is itself a snapshot (of {info.origin!r})")
        if info.is_thin:
            raise PreflightFailed(f"volume {volume!r} is a thin volume (pool {info.pool!r}): use driver \"lvm-thin\"")

    def size_for(self, volume: str) -> int:
        """Return the COW size in bytes for ``volume``'s snapshot under the size policy."""
        info = self._lookup(volume)[0]
        return snapshot_bytes(self.options.policy, info.size, info.extent_size)

    def check_space(self, volumes: list[str]) -> None:
        wanted: dict[str, list[tuple[str, int]]] = {}
        free: dict[str, int] = {}
        for vol in volumes:
            info = self._infos[vol]
            wanted.setdefault(info.vg, []).append((vol, self.size_for(vol)))
            free[info.vg] = info.vg_free
        problems = room_problems(wanted, free)
        if problems:
            raise PreflightFailed("\n".join(problems) + f"\n(options.snapshot_size = {self.options.snapshot_size!r}: "
                                  "lower it, or add room with vgextend / lvreduce)")

    def create_argv(self, ref: LvRef, snap_lv: str, volume: str) -> list[str]:
        return ["lvcreate", "-s", "-n", snap_lv, "-L", f"{self.size_for(volume)}b", str(ref)]

    def snapshot_info(self, volume: str) -> dict[str, Any]:
        return {"snapshot_type": "cow", "cow_bytes": self.size_for(volume)}

    # -- Snap% ----------------------------------------------------------------------------------
    def watch(self, snap: Snapshot) -> SnapWatch | None:
        return SnapWatch(lambda: snap_status(self.runner, snap.handle), self.options.poll_interval)

    def raise_if_failed(self, snap: Snapshot, watch: SnapWatch | None) -> None:
        if watch is None:
            return
        watch.check_now()
        if watch.failure is not None:
            raise SnapshotFailed(self._overflow_message(snap, watch.failure.describe()))

    def check_after_export(self, snap: Snapshot) -> None:
        """The export is complete only if the snapshot is still valid now (Snap% read definitively)."""
        try:
            st = snap_status(self.runner, snap.handle)
        except (CommandFailed, ValueError) as e:
            raise SnapshotFailed(f"snapshot {snap.handle} of {snap.volume!r} cannot be checked (Snap% unknown): {e}") from None
        if st.failed:
            raise SnapshotFailed(self._overflow_message(snap, st.describe()))

    def _overflow_message(self, snap: Snapshot, status: str) -> str:
        return (f"snapshot {snap.handle} of {snap.volume!r} overflowed or became invalid during export: {status}; "
                f"its copy-on-write space ({snap.info.get('cow_bytes', '?')} bytes, options.snapshot_size = "
                f"{self.options.snapshot_size!r}) was too small for the writes meanwhile; nothing was stored")

"""Thin LVM snapshots: ``lvcreate -s -kn -n <name> vg/lv`` (no size: blocks come from the pool).

Thin snapshots are created with the activation-skip flag off (``-kn``) and activated with
``lvchange -ay -K`` before they are mounted. Preflight refuses when the thin pool's data or
metadata usage is above ``options.max_data_percent`` / ``max_metadata_percent``: a full pool stops
the origin's writes, not just the snapshot.
"""

from __future__ import annotations

from typing import Any

from snapagent.errors import CommandFailed, ExportFailed, PreflightFailed
from snapagent.plugin.driver import Snapshot

from .base import LvmDriverBase
from .names import LvRef
from .options import LvmThinOptions
from .report import LvInfo, lv_info


class LvmThinDriver(LvmDriverBase):
    name = "lvm-thin"
    Options = LvmThinOptions
    TOOLS = LvmDriverBase.TOOLS + ("lvchange",)

    def check_kind(self, volume: str, info: LvInfo) -> None:
        if not info.is_thin:
            raise PreflightFailed(f"volume {volume!r} is not a thin volume (lv_attr {info.attr}): use driver \"lvm\"")

    def check_space(self, volumes: list[str]) -> None:
        seen: set[str] = set()
        problems = []
        opts = self.options
        for vol in volumes:
            info = self._infos[vol]
            pool = f"{info.vg}/{info.pool}"
            if pool in seen:
                continue
            seen.add(pool)
            p = lv_info(self.runner, pool, vol)
            data, meta = p.data_percent, p.metadata_percent
            if data is None or meta is None:
                problems.append(f"thin pool {pool} (of {vol!r}): usage unknown (is the pool active?)")
                continue
            if data > opts.max_data_percent:
                problems.append(f"thin pool {pool} (of {vol!r}) data is {data:.2f}% full, above "
                                f"options.max_data_percent = {opts.max_data_percent:g}%")
            if meta > opts.max_metadata_percent:
                problems.append(f"thin pool {pool} (of {vol!r}) metadata is {meta:.2f}% full, above "
                                f"options.max_metadata_percent = {opts.max_metadata_percent:g}%")
        if problems:
            raise PreflightFailed("\n".join(problems) + "\n(extend the pool with lvextend, or free space in it)")

    def create_argv(self, ref: LvRef, snap_lv: str, volume: str) -> list[str]:
        return ["lvcreate", "-s", "-kn", "-n", snap_lv, str(ref)]

    def snapshot_info(self, volume: str) -> dict[str, Any]:
        return {"snapshot_type": "thin", "pool": self._infos[volume].pool if volume in self._infos else None}

    def activate(self, snap: Snapshot) -> None:
        try:
            self.runner.run(["lvchange", "-ay", "-K", snap.handle], mutating=True, timeout=120)
        except CommandFailed as e:
            raise ExportFailed(f"cannot activate thin snapshot {snap.handle}: {e}") from None

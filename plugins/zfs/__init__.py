"""OpenZFS driver: atomic snapshots of datasets, exported as ``zfs send`` streams (full, then
incremental from a held base) or as tar of ``<mountpoint>/.zfs/snapshot/<name>``.

All volumes of a job that live in one pool are snapshotted by ONE ``zfs snapshot a@n b@n`` call,
which ZFS makes atomic. Datasets of different pools are refused in preflight unless
``cross_pool = true`` (then one call per pool; atomicity across pools is impossible). Restore of a
send backup receives into a NEW dataset named by ``--to`` (see ``restore.py``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import IO, Iterator

from snapagent.errors import CommandFailed, CommandNotFound, ExportFailed, OperationFailed, PreflightFailed, SnapshotFailed
from snapagent.manifest import Volume
from snapagent.plugin.driver import Driver, Snapshot
from snapagent.plugin.helpers import first_lines, stream_of
from snapagent.util import tar
from snapagent.util.runner import Runner

from .names import dataset_of, dataset_problem, is_below, pool_of, snapshot_of
from .options import ZfsOptions
from .restore import ZfsRestoreMixin, undo_dataset
from .zfscmd import HOLD_TAG, Zfs, ZfsCommandFailed

log = logging.getLogger("snapagent.zfs")
OWNER = {"kind": "driver", "name": "zfs"}
_PROPS = ["name", "type", "mounted", "mountpoint", "available"]


def _explain(e: ZfsCommandFailed) -> str:
    """Return a user-facing sentence for a failed zfs call."""
    p = e.problem
    if p.kind == "no-module":
        return "the ZFS kernel module is not loaded (modprobe zfs) or /dev/zfs is missing"
    if p.kind == "no-dataset" and p.subject:
        return f"dataset {p.subject!r} does not exist"
    if p.kind == "no-space":
        return f"out of space ({p.reason})"
    if p.kind == "permission":
        return f"permission denied ({p.reason}); run as root or `zfs allow` snapshot,send,hold,release,destroy"
    return str(e)


class ZfsDriver(ZfsRestoreMixin, Driver):
    name = "zfs"
    atomic = True
    export_formats = ("send", "tar")
    Options = ZfsOptions

    def __init__(self, runner: Runner, options: ZfsOptions | None = None):
        super().__init__(runner, options)
        self.zfs = Zfs(runner)
        self._mountpoints: dict[str, str] = {}
        self._prepared: tuple[str, list[str]] | None = None  # (name, volumes) journaled by prepare_snapshot

    # -- preflight ------------------------------------------------------------------------------
    def preflight(self, volumes: list[str]) -> list[Path]:
        """Check tools, names, pools, existence, type, mounts and free space; take nothing; return
        each dataset's mountpoint. Raises PreflightFailed (ConfigError for a name ZFS can never
        accept) naming the dataset."""
        from snapagent.errors import ConfigError

        try:
            self.runner.require("zfs", "zfsutils-linux")
            self.runner.require("tar", "tar")
        except CommandNotFound as e:
            raise PreflightFailed(str(e)) from None
        for vol in volumes:
            if why := dataset_problem(vol):
                raise ConfigError(f"volumes: {vol!r} is not a valid ZFS dataset name: {why}")
        pools = list(dict.fromkeys(pool_of(v) for v in volumes))
        if len(pools) > 1 and not self.options.cross_pool:
            raise PreflightFailed(
                f"volumes span pools {', '.join(map(repr, pools))}: ZFS snapshots are atomic only within one "
                "pool; split the job, or set options.cross_pool = true (one snapshot call per pool)")
        if self.options.recursive:
            for a in volumes:
                for b in volumes:
                    if is_below(a, b):
                        raise PreflightFailed(f"volume {a!r} lies below {b!r}, which is snapshotted recursively; list only {b!r}")
        try:
            rows = self.zfs.list(volumes, _PROPS)
        except ZfsCommandFailed as e:
            raise PreflightFailed(_explain(e)) from None
        found = {r["name"]: r for r in rows}
        for vol in volumes:
            r = found.get(vol)
            if r is None:
                raise PreflightFailed(f"dataset {vol!r} does not exist")
            if r["type"] != "filesystem":
                raise PreflightFailed(f"dataset {vol!r} is a {r['type']}, not a filesystem")
            if r["mounted"] != "yes" or not r["mountpoint"].startswith("/"):
                raise PreflightFailed(f"dataset {vol!r} is not mounted (mountpoint {r['mountpoint']}); "
                                      "snapagent reads its files through the mountpoint")
            if int(r["available"]) < self.options.min_free:
                raise PreflightFailed(f"dataset {vol!r} has {int(r['available']) >> 20} MiB available, less than "
                                      f"options.min_free ({self.options.min_free >> 20} MiB)")
            self._mountpoints[vol] = r["mountpoint"]
        return [Path(self._mountpoints[v]) for v in volumes]

    def _mountpoint(self, volume: str) -> Path:
        if volume not in self._mountpoints:
            try:
                self._mountpoints[volume] = self.zfs.list([volume], ["mountpoint"])[0]["mountpoint"]
            except ZfsCommandFailed as e:
                raise PreflightFailed(_explain(e)) from None
        return Path(self._mountpoints[volume])

    # -- snapshots ------------------------------------------------------------------------------
    def _groups(self, volumes: list[str]) -> dict[str, list[str]]:
        """Return {pool: its volumes}: one atomic ``zfs snapshot`` call per pool."""
        groups: dict[str, list[str]] = {}
        for v in volumes:
            groups.setdefault(pool_of(v), []).append(v)
        return groups

    def prepare_snapshot(self, volumes: list[str], name: str) -> None:
        """Journal every snapshot before the first lock is taken: the freeze window then holds
        only the ``zfs snapshot`` calls."""
        self._prepared = (name, list(volumes))
        if self.journal:
            for v in volumes:
                self.journal.open("snapshot", snapshot_of(v, name), OWNER, volume=v, recursive=self.options.recursive)

    def snapshot(self, volumes: list[str], name: str, deadline: float) -> list[Snapshot]:
        """One ``zfs snapshot`` call per pool (one call in all unless cross_pool); each snapshot is
        journaled before the call (by ``prepare_snapshot``). Raises SnapshotFailed with zfs's reason."""
        if self._prepared != (name, list(volumes)):
            self.prepare_snapshot(volumes, name)
        self._prepared = None
        rec = self.options.recursive
        snaps: dict[str, Snapshot] = {}
        for gi, (pool, vols) in enumerate(self._groups(volumes).items()):
            names = [snapshot_of(v, name) for v in vols]
            try:
                self.zfs.snapshot(names, rec, timeout=max(0.1, deadline - time.monotonic()))
            except ZfsCommandFailed as e:
                raise SnapshotFailed(f"zfs snapshot of {', '.join(map(repr, vols))} failed: {_explain(e)}") from None
            for v, s in zip(vols, names):
                snaps[v] = Snapshot(v, s, name, {"dataset": v, "pool": pool, "atomic_group": gi, "recursive": rec})
        return [snaps[v] for v in volumes]

    def release(self, snap: Snapshot) -> None:
        """Destroy ``snap`` (deferred while someone else's hold or clone keeps it). Idempotent."""
        self._destroy(self.zfs, snap.handle, bool(snap.info.get("recursive")))
        if self.journal:
            self.journal.close("snapshot", snap.handle)

    @staticmethod
    def _destroy(zfs: Zfs, snap: str, recursive: bool, release_hold: bool = False) -> str:
        """Destroy ``snap`` (``-d``: deferred while someone else's hold or clone keeps it), first
        releasing snapagent's own hold when ``release_hold``; return what happened."""
        try:
            if release_hold:
                zfs.release(snap, recursive)
            zfs.destroy_snapshot(snap, recursive)
        except ZfsCommandFailed as e:
            if e.kind == "no-dataset":
                return "already gone"
            raise OperationFailed(f"cannot destroy snapshot {snap!r}: {_explain(e)}") from None
        return "destroyed (deferred while someone else holds or clones it)"

    # -- IncrementalBase ------------------------------------------------------------------------
    @classmethod
    def incremental_refusal(cls, fmt: str, options: ZfsOptions | None) -> str | None:
        if fmt != "send":
            return f'export = "{fmt}" is always a full copy; incremental needs export = "send" (zfs send -i)'
        if options is not None and options.incremental is False:
            return 'options.incremental = false contradicts mode = "incremental" (drop the option)'
        return None

    def keeps_base(self, fmt: str) -> bool:
        return self.incremental_refusal(fmt, self.options) is None

    def keep(self, snap: Snapshot) -> None:
        """Hold ``snap`` (tag ``snapagent``) as the next incremental's base; close its journal entry."""
        try:
            self.zfs.hold(snap.handle, bool(snap.info.get("recursive")))
        except ZfsCommandFailed as e:
            raise OperationFailed(f"cannot hold snapshot {snap.handle!r}: {_explain(e)}") from None
        if self.journal:
            self.journal.close("snapshot", snap.handle)

    def release_base(self, record: Volume) -> None:
        """Release the hold on a previous backup's base and destroy it — only snapagent's own
        snapshot of that very volume, with the guid the record names."""
        snap, guid = record.snapshot, record.info.get("guid")
        if dataset_of(snap) != record.volume or not snap.split("@", 1)[-1].startswith("snapagent-") or not guid:
            log.warning("zfs: not releasing %r: the record does not name a snapshot of snapagent's", snap)
            return
        found = self.zfs.exists(snap, snapshot=True)
        if found is None or found["guid"] != str(guid):
            return
        recursive = bool(record.info.get("recursive"))
        if self.journal:  # a run killed while releasing it: `snapagent cleanup` finishes the job
            self.journal.open("snapshot", snap, OWNER, volume=record.volume, recursive=recursive)
        self._destroy(self.zfs, snap, recursive, release_hold=True)
        if self.journal:
            self.journal.close("snapshot", snap)

    @classmethod
    def undo(cls, record: dict, runner: Runner) -> str:
        """Undo a record of a killed run: destroy a ``snapshot`` (releasing snapagent's hold
        first), destroy a ``dataset`` a restore or drill created, rename a ``renamed`` dataset back."""
        kind, key = record.get("kind"), record["key"]
        if kind == "snapshot":
            what = cls._destroy(Zfs(runner), key, bool(record.get("recursive")), release_hold=True)
            return f"zfs snapshot {key}: {what}"
        if kind in ("dataset", "renamed"):
            return undo_dataset(Zfs(runner), kind, key, record)
        raise OperationFailed(f"zfs: unknown journal record {kind!r}")

    # -- export ---------------------------------------------------------------------------------
    def _describe(self, snap: Snapshot) -> None:
        """Record guid and createtxg of ``snap`` in its manifest info (read-only, after the freeze)."""
        try:
            row = self.zfs.list([snap.handle], ["name", "guid", "createtxg"], snapshots=True)[0]
        except (ZfsCommandFailed, IndexError) as e:
            raise ExportFailed(f"snapshot {snap.handle!r} is gone: {e}") from None
        snap.info.update(guid=row["guid"], createtxg=int(row["createtxg"]))

    def _base(self, snap: Snapshot, parent: Volume | None) -> str | None:
        """Return the previous backup's snapshot to send incrementally from, or None (full send)."""
        if parent is None:
            return None
        base = parent.snapshot
        why = None
        if dataset_of(base) != snap.volume:
            why = "it is of another dataset"
        elif bool(parent.info.get("recursive")) != bool(snap.info.get("recursive")):
            why = "options.recursive changed"
        else:
            found = self.zfs.exists(base, snapshot=True)
            if found is None:
                why = "it no longer exists"
            elif not parent.info.get("guid") or found["guid"] != str(parent.info["guid"]):
                why = "its guid changed (a different snapshot of the same name)"
        if why:
            log.warning("zfs: full send of %s: the previous base %s cannot be used: %s", snap.volume, base, why)
            snap.info["full_reason"] = f"its base {base} cannot be used: {why}"
            return None
        return base

    @contextlib.contextmanager
    def export(self, snap: Snapshot, fmt: str, base: Volume | None = None) -> Iterator[IO[bytes]]:
        self._describe(snap)
        if fmt == "send":
            base = self._base(snap, base)
            if base:
                snap.info["parent_snapshot"] = base
            argv = Zfs.send_argv(snap.handle, base, bool(snap.info.get("recursive")), self.options.send_flags())
        elif fmt == "tar":
            if snap.info.get("recursive"):
                raise ExportFailed("a recursive zfs snapshot can only be exported as `send` (tar shows no child datasets)")
            path = self._mountpoint(snap.volume) / ".zfs" / "snapshot" / snap.name
            if not path.is_dir():  # the lookup mounts the snapshot (automount)
                raise ExportFailed(f"snapshot directory {path} is not accessible")
            argv = tar.create_argv(path)
        else:
            raise ExportFailed(f"zfs cannot export {fmt!r} (choose: {', '.join(self.export_formats)})")
        with stream_of(self.runner, argv, snap.volume) as stream:
            yield stream

    def tool_versions(self) -> dict[str, str]:
        out = {}
        try:
            out["zfs"] = self.zfs.version()
        except (CommandFailed, IndexError):
            out["zfs"] = "?"
        return {**out, **first_lines(self.runner, {"tar": ["tar", "--version"]}, timeout=10)}


__all__ = ["ZfsDriver", "ZfsOptions", "HOLD_TAG"]

"""Incremental chains of the btrfs driver (its IncrementalBase and ChainRestore capabilities).

Backup: in ``mode = "incremental"`` the read-only snapshot of each backup is kept (its journal
record closed after the commit, so it outlives the run) as the parent of the next backup's
``btrfs send -p PARENT SNAP``; the older parent is deleted after that commit. A parent is used
only when it is still snapagent's snapshot of the same volume with the UUID recorded when it was
exported, and still read-only; otherwise the export is full (``info.full_reason`` says why).

Restore: an incremental stream is received next to the subvolume received from its parent (btrfs
finds the parent by its received UUID); each link is kept until the next one is received, then
deleted; ``finish_chain`` snapshots the newest received link writable as ``DEST/<label>`` and
deletes it. Every received subvolume is journaled (``received``) before it exists.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from snapagent.errors import CommandFailed, ExportFailed, OperationFailed, RestoreRefused
from snapagent.manifest import Volume
from snapagent.plugin.driver import DirectoryDest, Snapshot, VolumeDest
from snapagent.util import mountinfo
from snapagent.util.runner import Runner

from . import places

log = logging.getLogger("snapagent.btrfs")


def subvolume_facts(runner: Runner, path: str) -> dict[str, Any]:
    """Return {uuid, readonly} of subvolume ``path`` (``btrfs subvolume show``, a read).
    Raise CommandFailed."""
    out = runner.run(["btrfs", "subvolume", "show", "--", path], mutating=False, timeout=60).stdout
    facts: dict[str, Any] = {"uuid": None, "readonly": False}
    for line in out.splitlines()[1:]:
        key, _, value = line.strip().partition(":")
        if key == "UUID":
            facts["uuid"] = value.strip()
        elif key == "Flags":
            facts["readonly"] = "readonly" in value
    return facts


class BtrfsChainMixin:
    """keeps_base / keep / release_base / parent choice / finish_chain of BtrfsDriver."""

    runner: Runner
    options: Any
    journal: Any
    _links: dict[Path, Path]  # restore: DEST/<label> -> the newest link received for it

    @classmethod
    def incremental_refusal(cls, fmt: str, options: Any) -> str | None:
        if fmt != "send":
            return f'export = "{fmt}" is always a full copy; incremental needs export = "send" (btrfs send -p)'
        return None

    def keeps_base(self, fmt: str) -> bool:
        return self.incremental_refusal(fmt, self.options) is None

    def keep(self, snap: Snapshot) -> None:
        """Keep ``snap`` (read-only already) as the next parent: close its journal record."""
        if self.journal:
            self.journal.close("snapshot", snap.handle)

    def _ours(self, volume: str, snapshot: str) -> str | None:
        """Return why ``snapshot`` is not snapagent's snapshot of ``volume`` (None: it is): it must
        be named ``snapagent-…`` in a snapshot place (the configured one, a default one, or the old
        default inside the volume)."""
        p = Path(snapshot)
        configured = self.options.snapshot_dir
        place = p.parent == Path(configured) if configured else p.parent.name == places.DIRNAME
        if not (place or p.parent == places.old_default(volume)) or not p.name.startswith("snapagent-"):
            return f"{snapshot} is not a snapshot snapagent made of {volume}"
        return None

    def _where(self, record: Volume) -> str:
        """Return where the snapshot ``record`` kept is now: a top-level one under this run's mount
        of the volume's filesystem top-level (mounted, journaled, on first use)."""
        if record.info.get("place") != "top-level":
            return record.snapshot
        m, _ = places.fs_path(Path(record.volume), mountinfo.read())
        rel = str(record.info.get("fs_path", "")).lstrip("/")
        return str(self._toplevel(m) / rel)  # type: ignore[attr-defined]

    def release_base(self, record: Volume) -> None:
        """Delete the parent an earlier backup kept — only snapagent's own snapshot of that volume
        with the UUID the record names (wherever it was kept: old default place too). Idempotent."""
        snap = self._where(record)
        if why := self._ours(record.volume, snap):
            log.warning("btrfs: not releasing %r: %s", snap, why)
            return
        if not Path(snap).exists():
            return
        uuid = record.info.get("uuid")
        if uuid and self._facts(snap)["uuid"] != uuid:
            log.warning("btrfs: not releasing %r: its UUID is not the one backup recorded", snap)
            return
        if self.journal:  # a run killed while deleting it: `snapagent cleanup` finishes the job
            self.journal.open("snapshot", snap, {"kind": "driver", "name": "btrfs"}, volume=record.volume,
                              **self._findable(Path(snap)))  # type: ignore[attr-defined]
        self._delete(self.runner, Path(snap), record.volume)  # type: ignore[attr-defined]
        if self.journal:
            self.journal.close("snapshot", snap)

    def _facts(self, path: str) -> dict[str, Any]:
        try:
            return subvolume_facts(self.runner, path)
        except CommandFailed as e:
            raise ExportFailed(f"btrfs subvolume show {path}: {e.stderr.strip() or e}") from None

    def _parent(self, snap: Snapshot, base: Volume | None) -> str | None:
        """Return the previous backup's snapshot to ``send -p`` from, or None (a full send; why
        is recorded in ``snap.info["full_reason"]``)."""
        if base is None:
            return None
        parent = self._where(base)
        why = None
        if base.volume != snap.volume:
            why = "it is of another volume"
        elif why := self._ours(snap.volume, parent):
            pass
        elif not Path(parent).is_dir():
            why = "it no longer exists"
        else:
            facts = self._facts(parent)
            if not base.info.get("uuid") or facts["uuid"] != base.info["uuid"]:
                why = "its UUID changed (a different subvolume of the same name)"
            elif not facts["readonly"]:
                why = "it is no longer read-only (it may have changed since)"
        if why:
            log.warning("btrfs: full send of %s: the previous parent %s cannot be used: %s", snap.volume, parent, why)
            snap.info["full_reason"] = f"its parent {parent} cannot be used: {why}"
            return None
        snap.info.update(parent_snapshot=parent, parent_uuid=base.info["uuid"])
        return parent

    def send_argv(self, snap: Snapshot, base: Volume | None) -> list[str]:
        """Return the ``btrfs send`` argv of ``snap`` (``-p`` from a usable parent), recording the
        snapshot's UUID (what the next backup checks its parent by)."""
        if not self.runner.dry_run:
            snap.info["uuid"] = self._facts(snap.handle)["uuid"]
        parent = self._parent(snap, base)
        return ["btrfs", "send", *(["-p", parent] if parent else []), "--", snap.handle]

    # -- restore of a chain ---------------------------------------------------------------------
    def received_link(self, dest: Path, received: Path) -> None:
        """Remember ``received`` as the newest link restored for ``dest``; delete the one before
        it (the newest link is the parent the next incremental stream needs, the older not)."""
        older = self._links.get(dest)
        self._links[dest] = received
        if older is not None:
            self._drop(older)

    def _drop(self, received: Path) -> None:
        self._delete(self.runner, received)  # type: ignore[attr-defined]
        if self.journal:
            self.journal.close("received", str(received))

    def finish_chain(self, dest: VolumeDest, record: Volume) -> Path:
        """Make the newest received link writable as ``dest`` and delete it (a tar restore
        already wrote ``dest``: nothing to do). Return ``dest``."""
        if not isinstance(dest, DirectoryDest):
            raise RestoreRefused("btrfs restores into a directory")
        received = self._links.pop(dest.path, None)
        if received is None:
            return dest.path
        try:
            # the received subvolume is read-only; make a writable one under the requested name
            self.runner.run(["btrfs", "subvolume", "snapshot", str(received), str(dest.path)], mutating=True)
        except CommandFailed as e:
            raise OperationFailed(f"btrfs snapshot of the received {received}: {e.stderr.strip() or e}") from None
        self._drop(received)
        return dest.path

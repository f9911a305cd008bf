"""Finding backups across every configured target: all of them, one by id or ``JOB@latest``, its
copies in several targets (``locations``, ``copies``), and the chain an incremental backup
needs. A damaged backup is listed as such and refused by id; it never hides the others."""

from __future__ import annotations

import logging
from typing import Callable, TypeVar

from snapagent.config import Config
from snapagent.errors import BackupDamaged, NotFound, TargetFailed, UsageError, VerifyFailed
from snapagent.manifest import Volume
from snapagent.plugin.target import Damaged, Stored, listing_order
from snapagent.util.names import BACKUP_ID_RE

LATEST = "@latest"
log = logging.getLogger("snapagent.catalog")
T = TypeVar("T")


def each_readable(tgts: list, read: Callable[[object], T]) -> list[T]:
    """Return ``read(target)`` for each target that can be read. With several targets, one that
    cannot (an offsite server down: TargetFailed) is skipped with a warning naming it, so the
    backups of the others stay usable; a single (or explicitly named) target's failure is raised."""
    out = []
    for t in tgts:
        try:
            out.append(read(t))
        except TargetFailed as e:
            if len(tgts) == 1:
                raise
            log.warning("target %r cannot be read, going on without it: %s", t.name, e)
    return out


def listing(config: Config, job: str | None = None) -> list[Stored | Damaged]:
    """Return every backup (of ``job``) in every readable target, good and damaged, oldest first."""
    out: list[Stored | Damaged] = []
    for found in each_readable(list(config.all_targets()), lambda t: t.list(job)):
        out.extend(found)
    return sorted(out, key=listing_order)


def targets(config: Config, source: str | None = None) -> list:
    """Return every target, or only target ``source``; raise UsageError naming ``--from``."""
    if source is None:
        return list(config.all_targets())
    if source not in config.targets:
        raise UsageError(f"--from: unknown target {source!r} (defined: {', '.join(sorted(config.targets)) or 'none'})")
    return [config.target(source)]


def by_backup(config: Config, job: str | None = None) -> list[list[Stored | Damaged]]:
    """Return every backup (of ``job``) as the list of its copies (target order), oldest first."""
    rows: dict[str, list[Stored | Damaged]] = {}
    for b in listing(config, job):
        rows.setdefault(b.id, []).append(b)
    order = {t: i for i, t in enumerate(config.targets)}
    return [sorted(r, key=lambda b: order.get(b.target.name, len(order))) for r in rows.values()]


def locations(config: Config, backup_id: str, source: str | None = None) -> list[Stored | Damaged]:
    """Return backup ``backup_id`` in each target holding it (only ``source`` if given), in the
    order of the config's targets. Raise UsageError for a malformed id or unknown target."""
    if not BACKUP_ID_RE.match(backup_id):
        raise UsageError(f"ID: {backup_id!r} is not a backup id (JOB-YYYYMMDDTHHMMSSZ as `snapagent list` shows, "
                         "or JOB@latest)")
    return [b for b in each_readable(targets(config, source), lambda t: t.get(backup_id)) if b is not None]


def copies(config: Config, backup_id: str, source: str | None = None) -> list[Stored]:
    """Return the good copies of ``backup_id`` (or of the newest backup of J for ``J@latest``), in
    target order (only in ``source`` if given). Raise UsageError, NotFound, or BackupDamaged when
    every copy's manifest is damaged."""
    if backup_id.endswith(LATEST):
        job = config.job(backup_id[: -len(LATEST)]).name
        good = [b for found in each_readable(targets(config, source), lambda t: t.list(job))
                for b in found if isinstance(b, Stored)]
        if not good:
            raise NotFound(f"job {job!r} has no backups yet" + (f" in target {source!r}" if source else ""))
        backup_id = max(good, key=listing_order).id
    found = locations(config, backup_id, source)
    good = [b for b in found if isinstance(b, Stored)]
    if good:
        return good
    damaged = [b for b in found if isinstance(b, Damaged)]
    if damaged:
        d = damaged[0]
        raise BackupDamaged(f"backup {backup_id} in target {d.target.name!r} is damaged: {d.reason} "
                            f"({d.location}); other backups are not affected")
    where = f"in target {source!r}" if source else "in any target"
    raise NotFound(f"no backup {backup_id!r} {where} (see `snapagent list`)")


def find(config: Config, backup_id: str, source: str | None = None, prefer: str | None = None) -> Stored:
    """Return backup ``backup_id`` (or the newest of job J for ``J@latest``) from the first target
    holding a good copy (``prefer`` first; only ``source`` if given). Raise UsageError for a
    malformed id or unknown target, NotFound, or BackupDamaged naming why its manifest cannot be
    trusted."""
    good = copies(config, backup_id, source)
    return next((b for b in good if b.target.name == prefer), good[0])


def chain(config: Config, stored: Stored, vol: Volume) -> list[tuple[Stored, Volume]]:
    """Return [(backup, volume record)] from the full export to ``vol`` of ``stored``: one element
    unless the volume was exported incrementally; each parent is read from its child's target
    when that holds a good copy. Raise NotFound (a parent is gone),
    BackupDamaged (a parent's manifest cannot be trusted) or VerifyFailed (the chain loops), in
    one line naming the backup that needs the parent and the parent."""
    out = [(stored, vol)]
    seen = {stored.id}
    while vol.parent:
        pid, child = vol.parent, out[-1][0].id
        of = "" if child == stored.id else f" (in the chain of {stored.id})"
        if pid in seen:
            raise VerifyFailed(f"backup chain of {stored.id} loops at {pid}")
        seen.add(pid)
        try:
            parent = find(config, pid, prefer=out[-1][0].target.name)
        except NotFound:
            raise NotFound(f"backup {child}{of} is incremental on {pid}, which is missing from every target; "
                           f"{stored.id} cannot be restored") from None
        except BackupDamaged as e:
            raise BackupDamaged(f"backup {child}{of} is incremental on {pid}, which is damaged: "
                                f"{str(e).removeprefix(f'backup {pid} ')}") from None
        vol = parent.manifest.volume(vol.volume)
        if vol is None:
            raise NotFound(f"backup {child}{of} is incremental on {pid}, which holds no volume {out[-1][1].volume!r}")
        out.append((parent, vol))
    return list(reversed(out))

"""Finding backups across every configured target: all of them, one by id or ``JOB@latest``, and
the chain an incremental backup needs. A damaged backup is listed as such and refused by id;
it never hides the others."""

from __future__ import annotations

from snapagent.config import Config
from snapagent.errors import BackupDamaged, NotFound, UsageError, VerifyFailed
from snapagent.manifest import Volume
from snapagent.plugin.target import Damaged, Stored, listing_order
from snapagent.util.names import BACKUP_ID_RE

LATEST = "@latest"


def listing(config: Config, job: str | None = None) -> list[Stored | Damaged]:
    """Return every backup (of ``job``) in every target, good and damaged, oldest first."""
    out: list[Stored | Damaged] = []
    for target in config.all_targets():
        out.extend(target.list(job))
    return sorted(out, key=listing_order)


def find(config: Config, backup_id: str) -> Stored:
    """Return backup ``backup_id`` (or the newest of job J for ``J@latest``) from the first target
    holding it. Raise UsageError for a malformed id, NotFound, or BackupDamaged naming why its
    manifest cannot be trusted."""
    if backup_id.endswith(LATEST):
        job = config.job(backup_id[: -len(LATEST)]).name
        good = [b for b in listing(config, job) if isinstance(b, Stored)]
        if not good:
            raise NotFound(f"job {job!r} has no backups yet")
        return good[-1]
    if not BACKUP_ID_RE.match(backup_id):
        raise UsageError(f"ID: {backup_id!r} is not a backup id (JOB-YYYYMMDDTHHMMSSZ as `snapagent list` shows, "
                         "or JOB@latest)")
    damaged = None
    for target in config.all_targets():
        b = target.get(backup_id)
        if isinstance(b, Stored):
            return b
        if isinstance(b, Damaged):
            damaged = damaged or b
    if damaged is not None:
        raise BackupDamaged(f"backup {backup_id} in target {damaged.target.name!r} is damaged: {damaged.reason} "
                            f"({damaged.location}); other backups are not affected")
    raise NotFound(f"no backup {backup_id!r} in any target (see `snapagent list`)")


def chain(config: Config, stored: Stored, vol: Volume) -> list[tuple[Stored, Volume]]:
    """Return [(backup, volume record)] from the full export to ``vol`` of ``stored``: one element
    unless the volume was exported incrementally. Raise NotFound (a parent is gone),
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
            parent = find(config, pid)
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

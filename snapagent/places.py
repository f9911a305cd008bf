"""Where a driver puts snapshots (or mounts them) in the file tree, checked against the data they
protect: a directory there is seen by everything that walks that data (``pg_basebackup`` fails on
a root-owned 0700 directory in PGDATA; ``du``, other backup tools and the database's own checks
trip on it). ``refusals`` is the one check: ``config check`` runs it on the paths the config names
(no filesystem access), the backup's preflight again on the resolved paths the driver and the
quiescers report (``SnapshotPlaces``, ``Quiescer.files()``).
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from snapagent.util.fs import is_within


def _inside(path: str | Path, root: str | Path, resolve: bool) -> bool:
    if resolve:
        return is_within(Path(path), Path(root))
    p, r = os.path.normpath(str(path)), os.path.normpath(str(root))
    return p == r or p.startswith(r.rstrip("/") + "/")


def refusals(job_key: str, places: list[tuple[str, str]], roots: list[tuple[str, Path]],
             resolve: bool = False) -> list[str]:
    """Given the ``places`` a job's options configure ((key, path)) and the ``roots`` of what the
    job protects ((what, directory): its volumes, each database's data directory), return one
    message per place that lies inside one of them (a relative place lies inside every volume),
    naming the key and a better place. ``resolve``: compare real paths (preflight), else the
    paths as written (config check, nothing touched)."""
    out = []
    for key, place in places:
        where = f"{job_key}.{key}"
        if not PurePosixPath(place).is_absolute():
            out.append(f"{where}: {place!r} is relative, so it lies inside every volume, where everything that "
                       "walks the data finds it; remove the key (by default snapshots are kept outside every "
                       "volume) or name an absolute directory outside the volumes")
            continue
        inside = [(what, root) for what, root in roots if _inside(place, root, resolve)]
        if not inside:
            continue
        what, root = min(inside, key=lambda wr: len(str(wr[1])))  # the outermost: the better place is outside all
        better = Path(os.path.normpath(str(root))).parent / PurePosixPath(place).name
        out.append(f"{where}: {place} lies inside {what} ({root}), where everything that walks the data "
                   f"(pg_basebackup, du, other backup tools) finds it; remove the key (by default snapshots "
                   f"are kept outside every volume) or use a directory outside it, e.g. {better}")
    return out

"""What a restore that failed part-way says about what it wrote.

A restore journals everything it takes before taking it (DEST, content moved aside by ``--force``,
received subvolumes, datasets); on failure ``restore.Scope.end`` gives it all back. ``report``
then writes one line: either that everything was removed (and the previous content moved back),
or exactly what is left where, for ``snapagent cleanup``. A restore that ran out of space is one
line too (``ran_out_of_space``), with the estimate and the free space the precheck saw.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Any

from snapagent.errors import CommandFailed, OperationFailed
from snapagent.restore_dest import DestCheck, mib

log = logging.getLogger("snapagent.restore")
NO_SPACE = "No space left on device"


def out_of_space(e: BaseException) -> bool:
    """Return True when ``e`` (an OSError, or a failed tool's stderr) says the disk is full."""
    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(e, CommandFailed):
        return NO_SPACE in e.stderr or "Disk quota exceeded" in e.stderr
    return NO_SPACE in str(e)


def ran_out_of_space(found: DestCheck, e: BaseException) -> OperationFailed:
    """Return the one-line error of a restore into ``found.dest`` that filled its filesystem."""
    figures = ""
    if found.need is not None and found.free is not None:
        figures = f": it needs about {mib(found.need)} and {mib(found.free)} was free when it started"
    elif found.free is not None:
        figures = f": {mib(found.free)} was free when it started (the space check was skipped)"
    what = f"{os.path.basename(e.argv[0])}: " if isinstance(e, CommandFailed) and e.argv else ""
    return OperationFailed(f"restore into {found.dest} ran out of space ({what}no space left on device){figures}")


def describe(rec: dict[str, Any]) -> str:
    """Return where the thing an open restore record names is, in words."""
    kind, key = rec.get("kind"), rec.get("key")
    if kind == "dir":
        return f"{key} ({'what was restored into it' if rec.get('keep') else 'partly restored'})"
    if kind == "renamed":
        return f"{key} (the previous content of {rec.get('back_to')}, not moved back)"
    if kind == "dataset":
        return f"zfs dataset {key} (partly received)"
    if kind == "received":
        return f"{key} (a received subvolume)"
    return f"{kind} {key}"


def report(dest: str, taken: list[dict[str, Any]], left: list[dict[str, Any]]) -> None:
    """Log one line after a failed restore into ``dest``: ``taken`` is what its journal held open
    before the undo, ``left`` what is still open after it."""
    if left:
        log.error("restore failed part-way and left %s; `snapagent cleanup` removes it (and moves previous content back)",
                  "; ".join(describe(r) for r in left))
    elif taken:
        back = [r for r in taken if r.get("kind") == "renamed"]
        log.warning("restore failed part-way: removed what it wrote to %s%s", dest,
                    f"; its previous content is back in place (from {back[0]['key']})" if back else "")

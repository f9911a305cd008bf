"""The drill lifecycle: restore a backup into scratch space, let each quiescer check its database
there (start a throwaway server, run its own integrity check, count rows), then remove it all.

The scratch copy (a directory under ``scratch_dir``, or a scratch dataset), and everything the
probes take — temp directories, bind mounts, ACL entries, server processes — is journaled before
it is taken (``<state_dir>/journal/_drill``) and given back on every exit: success, failure,
SIGTERM/SIGINT/SIGHUP; after a SIGKILL, ``snapagent cleanup`` gives it back. ``--keep`` keeps the
scratch copy (servers are stopped all the same).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from snapagent import registry, signals
from snapagent.config import Config
from snapagent.journal import DRILL_GROUP
from snapagent.plugin.driver import DatasetRestore
from snapagent.plugin.quiescer import RestoreContext
from snapagent.restore import Scope, check_copies, driver_for, restore_into
from snapagent.util import logfields
from snapagent.util.runner import Runner


def drill(config: Config, runner: Runner, backup_id: str, keep: bool = False,
          say: Callable[[str], None] = lambda s: None, source: str | None = None) -> dict[str, Any]:
    """Restore ``backup_id`` into scratch space and run the probes of its quiescers.

    Returns {id, ok, probes: [...], restore_seconds, scratch, volumes}; ``scratch`` is where the
    copy was kept (``keep``), else None. Raises what ``restore`` raises; a failing probe is a
    result (``ok`` False), not an error. ``source``: read from this target only (default: the
    first with a good copy).
    """
    checked = check_copies(config, runner, backup_id, source, say=say)
    stored = checked.stored
    m = stored.manifest
    logfields.bind(job=m.job, backup_id=m.id)
    unique = f"{m.id}.{os.getpid()}"
    with signals.raising():
        scope = Scope.start(config, runner, DRILL_GROUP, unique)
        dest: str = ""
        try:
            driver = driver_for(config, m, runner)
            dataset = driver.drill_dataset(m, unique) if isinstance(driver, DatasetRestore) else None
            if dataset:
                dest = dataset
            else:
                scratch_root = config.agent.scratch_dir or (config.agent.state_dir / "drill")
                scratch_root.mkdir(parents=True, exist_ok=True, mode=0o700)
                dest = str(scratch_root / unique)
            t = time.monotonic()
            restored = restore_into(config, runner, checked, dest, False, False, scope, say)
            restore_s = time.monotonic() - t
            ctx = RestoreContext(runner, config, scope.held, say)
            probes = []
            for q, rec in zip(m.quiescers, restored.records):
                plugin = registry.discover("quiescer").get(q.type)
                if plugin is None:
                    probes.append({"name": q.type, "ok": False, "message": f"quiescer plugin {q.type!r} not installed"})
                    continue
                for p in plugin.load().drill(rec, restored.locate, ctx):
                    probes.append({"name": p.name, "ok": p.ok, "message": p.message, **p.details})
        finally:
            scope.end(keep=lambda rec: keep and rec["kind"] in ("dir", "dataset") and rec["key"] == dest)
    return {"id": m.id, "ok": all(p["ok"] for p in probes), "probes": probes, "restore_seconds": round(restore_s, 3),
            "scratch": dest if keep else None, "volumes": restored.summary["volumes"]}

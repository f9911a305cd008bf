"""The drill lifecycle: restore a backup into scratch space, let each quiescer check its database
there (start a throwaway server, run its own integrity check, count rows; a command hook runs its
``probe``), then remove it all. A drill that probed nothing does not pass: a restore whose
checksums match proves the bytes came back, not that the application can use them.

The scratch copy (a directory under ``scratch_dir``, or a scratch dataset), and everything the
probes take — temp directories, bind mounts, ACL entries, server processes — is journaled before
it is taken (``<state_dir>/journal/_drill``) and given back on every exit: success, failure,
SIGTERM/SIGINT/SIGHUP; after a SIGKILL, ``snapagent cleanup`` gives it back. ``--keep`` keeps the
scratch copy (servers are stopped all the same).
"""

from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

from snapagent import catalog, registry, restore_dest, signals
from snapagent.config import Config
from snapagent.journal import DRILL_GROUP
from snapagent.manifest import Manifest, QuiescerRecord
from snapagent.plugin.driver import DatasetRestore
from snapagent.plugin.quiescer import DrillScene, RestoreContext
from snapagent.restore import Restored, Scope, check_copies, driver_for, restore_into
from snapagent.util import logfields
from snapagent.util.runner import Runner


def drill(config: Config, runner: Runner, backup_id: str, keep: bool = False,
          say: Callable[[str], None] = lambda s: None, source: str | None = None,
          space_check: bool = True) -> dict[str, Any]:
    """Restore ``backup_id`` into scratch space and run the probes of its quiescers.

    Returns {id, ok, probes: [...], not_probed: [...], message?, restore_seconds, scratch,
    volumes}; ``scratch`` is where the copy was kept (``keep``), else None; ``not_probed``: each
    quiescer that checked nothing ({name, quiesce, reason}). ``ok`` is True only when at least
    one probe ran and every probe passed; a drill that probed nothing is not passed and says why
    in ``message``. Raises what ``restore`` raises (the scratch space is checked like a restore's
    DEST before any artifact is read); a failing probe is a result (``ok`` False), not an error.
    ``source``: read from this target only (default: the first with a good copy).
    """
    stored = catalog.find(config, backup_id, source)
    m = stored.manifest
    logfields.bind(job=m.job, backup_id=m.id)
    unique = f"{m.id}.{os.getpid()}"
    driver = driver_for(config, m, runner)
    dataset = driver.drill_dataset(m, unique) if isinstance(driver, DatasetRestore) else None
    if dataset:
        dest = dataset
    else:
        scratch_root = config.agent.scratch_dir or (config.agent.state_dir / "drill")
        scratch_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        dest = str(scratch_root / unique)
    restore_dest.precheck(config, driver, stored, dest, space=space_check,
                          arg="the drill's scratch copy" if dataset else "the drill's scratch copy (agent.scratch_dir)")
    checked = check_copies(config, runner, stored.id, source, say=say)
    with signals.raising():
        scope = Scope.start(config, runner, DRILL_GROUP, unique)
        try:
            t = time.monotonic()
            restored = restore_into(config, runner, checked, dest, False, False, scope, say)
            restore_s = time.monotonic() - t
            vols = [(v.volume, Path(r["path"])) for v, r in zip(m.volumes, restored.summary["volumes"])]
            # a scratch dataset's volumes are mounted side by side: their directory is the copy
            top = Path(os.path.commonpath([p.parent for _, p in vols])) if dataset and vols else Path(dest)
            scene = DrillScene(m.id, m.job, top, vols)
            probes, not_probed = _probe(config, m, restored, RestoreContext(runner, config, scope.held, say,
                                                                          drill=scene))
        finally:
            scope.end(keep=lambda rec: keep and rec["kind"] in ("dir", "dataset") and rec["key"] == dest)
    verdict = None if probes else nothing_probed(m.job, m.quiescers, not_probed, m.job not in config.jobs)
    return {"id": m.id, "ok": bool(probes) and all(p["ok"] for p in probes), "probes": probes,
            "not_probed": not_probed, **({"message": verdict} if verdict else {}),
            "restore_seconds": round(restore_s, 3), "scratch": dest if keep else None,
            "volumes": restored.summary["volumes"]}


def _probe(config: Config, m: Manifest, restored: Restored,
           ctx: RestoreContext) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run each quiescer's drill against the restored copy; return (probe results, quiescers that
    probed nothing, each {name, quiesce: its index, reason})."""
    job = config.jobs.get(m.job)
    probes, not_probed = [], []
    for i, (q, rec) in enumerate(zip(m.quiescers, restored.records)):
        name = f"{q.type} {rec['name']}" if q.type == "command" and rec.get("name") else q.type
        plugin = registry.discover("quiescer").get(q.type)
        if plugin is None:
            probes.append({"name": q.type, "ok": False, "message": f"quiescer plugin {q.type!r} not installed"})
            continue
        settings = None
        if job is not None and i < len(job.quiescers) and job.quiescers[i][0].type == q.type:
            settings = job.quiescers[i][1]
        found = plugin.load().drill(rec, restored.locate, replace(ctx, settings=settings))
        for p in found:
            probes.append({"name": p.name, "ok": p.ok, "message": p.message, **p.details})
        if not found:
            not_probed.append({"name": name, "quiesce": i, "reason": _why_not(m.job, i, q.type, job is None)})
    return probes, not_probed


def _why_not(job: str, i: int, qtype: str, job_gone: bool) -> str:
    if job_gone:
        return f"job {job!r} is not in the config any more: its probes cannot be read"
    if qtype == "command":
        return f"no `probe` (jobs.{job}.quiesce[{i}].probe)"
    if qtype == "fsfreeze":
        return "fsfreeze makes a crash-consistent image and has nothing of its own to check"
    return f"quiescer {qtype!r} has no probe"


def nothing_probed(job: str, quiescers: Sequence[QuiescerRecord], not_probed: list[dict[str, Any]],
                   job_gone: bool = False) -> str:
    """Return why a drill that probed nothing did not pass, and what to add to the config."""
    if job_gone and quiescers:
        return (f"nothing was probed: job {job} is not in the config, where its probes are read from "
                "(drill with a config that has the job)")
    hooks = [n for n in not_probed if n["name"].startswith("command")]
    if hooks:
        where = ", ".join(f"jobs.{job}.quiesce[{n['quiesce']}]" for n in hooks)
        return f"nothing was probed: add `probe` to the command hook of job {job} ({where})"
    what = "no quiescer" if not quiescers else "no quiescer with a probe (" + ", ".join(q.type for q in quiescers) + ")"
    return (f"nothing was probed: job {job} has {what}; the restore succeeded and every checksum matched, but "
            f"nothing checked the data — add a command hook with a `probe` ([[jobs.{job}.quiesce]] "
            'type = "command", probe = [...])')

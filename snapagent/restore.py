"""verify, restore and drill of stored backups.

Restore verifies every artifact first (checksums, and for tar a scan of every member) before it
touches the destination; then extracts each volume into ``DEST/<label>``. It never follows a
symlink at DEST, never writes outside it, and moves previous content aside (``--force``) rather
than deleting it.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from snapagent import registry
from .util import tar
from .config import Config
from .errors import NotFound, RestoreRefused, VerifyFailed
from snapagent.util.runner import Runner

log = logging.getLogger("snapagent.restore")


def find_backup(config: Config, backup_id: str):
    """Return (target, manifest) of ``backup_id`` in any configured target; raise NotFound.

    ``JOB@latest`` names the newest backup of JOB."""
    if backup_id.endswith("@latest"):
        job = config.job(backup_id[: -len("@latest")]).name
        newest = None
        for target in config.all_targets():
            for m in target.list(job):
                if newest is None or (m["created"], m["id"]) > (newest[1]["created"], newest[1]["id"]):
                    newest = (target, m)
        if newest is None:
            raise NotFound(f"job {job!r} has no backups yet")
        return newest
    for target in config.all_targets():
        m = target.get(backup_id)
        if m is not None:
            return target, m
    raise NotFound(f"no backup {backup_id!r} in any target (see `snapagent list`)")


def _artifact(manifest: dict, name: str) -> dict:
    for a in manifest["artifacts"]:
        if a["name"] == name:
            return a
    raise VerifyFailed(f"manifest of {manifest['id']} names artifact {name!r} but does not describe it")


def chain(config: Config, manifest: dict, vol: dict) -> list[tuple[Any, dict, dict]]:
    """Return [(target, manifest, volume item)] from the full backup to ``vol`` of ``manifest``
    (one element unless the volume was exported incrementally). Raises NotFound on a broken chain."""
    out = [(None, manifest, vol)]
    seen = {manifest["id"]}
    while vol.get("parent"):
        pid = vol["parent"]
        if pid in seen:
            raise VerifyFailed(f"backup chain of {manifest['id']} loops at {pid}")
        seen.add(pid)
        try:
            t, m = find_backup(config, pid)
        except NotFound:
            raise NotFound(f"backup {manifest['id']} is incremental on {pid}, which is gone; it cannot be restored") from None
        vol = next((v for v in m["volumes"] if v["volume"] == vol["volume"]), None)
        if vol is None:
            raise NotFound(f"parent backup {pid} holds no volume {out[-1][2]['volume']!r}")
        out.append((t, m, vol))
    return list(reversed(out))


def verify(target, manifest: dict, scan: bool = False, allow_special: bool = False,
           volumes: list[dict] | None = None) -> list[dict[str, Any]]:
    """Recompute size and sha256 of every artifact (and scan tar members when ``scan``).

    Returns one result per artifact: {name, ok, size, message}; never raises VerifyFailed itself.
    """
    results = []
    items = manifest["volumes"] if volumes is None else volumes
    if volumes is None:  # the whole backup: quiescers' extra artifacts too (always tar)
        items = items + [a for q in manifest.get("quiescers", []) for a in q.get("artifacts", [])]
    for vol in items:
        art = _artifact(manifest, vol["artifact"])
        t = time.monotonic()
        try:
            with target.open_artifact(manifest["id"], art) as r:
                if scan and vol["format"] == "tar":
                    vol["_scan"] = tar.scan(r, allow_special)
                r.finish()
            results.append({"name": art["name"], "ok": True, "size": art["size"],
                            "seconds": round(time.monotonic() - t, 3), "message": "ok"})
        except (VerifyFailed, RestoreRefused) as e:
            results.append({"name": art["name"], "ok": False, "size": art["size"], "message": str(e),
                            "refused": isinstance(e, RestoreRefused)})
    return results


def _prepare_dest(dest: Path, force: bool) -> str | None:
    """Make ``dest`` an empty directory we own; return where old content was moved, if any."""
    if dest.is_symlink():
        raise RestoreRefused(f"{dest} is a symlink; restore refuses to follow it")
    moved = None
    if dest.exists():
        if not dest.is_dir():
            raise RestoreRefused(f"{dest} exists and is not a directory")
        if any(dest.iterdir()):
            if not force:
                raise RestoreRefused(f"{dest} is not empty; use --force to move its content aside ({dest}.pre-restore-…)")
            aside = dest.with_name(f"{dest.name}.pre-restore-{time.strftime('%Y%m%dT%H%M%S')}")
            os.rename(dest, aside)
            moved = str(aside)
    if not dest.exists():
        dest.mkdir(parents=True, mode=0o700)
    return moved


def locator(manifest: dict, dest: Path | dict[str, Path]) -> Callable[[str], Path]:
    """Return a function mapping a live file path recorded by a quiescer to its restored path.

    ``dest`` is the restore directory (volume ``label`` restored into ``dest/label``) or a map
    {label: directory of that volume's restored files}."""
    labels = [v["label"] for v in manifest["volumes"]]
    roots = dest if isinstance(dest, dict) else {label: dest / label for label in labels}

    def locate(live: str) -> Path:
        for q in manifest.get("quiescers", []):
            loc = q.get("locations", {}).get(live)
            if loc:
                return roots[labels[loc["volume"]]] / loc["relpath"]
        raise NotFound(f"{live} is not recorded on any volume of backup {manifest['id']}")

    return locate


def driver_for(config: Config, manifest: dict, runner: Runner):
    """Return the driver that made ``manifest``, with its job's options when the job still exists
    with that driver (e.g. where a drill may receive), else the driver's defaults."""
    driver_cls = registry.get("driver", manifest["driver"], "manifest.driver")
    job = config.jobs.get(manifest.get("job", ""))
    return driver_cls(runner, job.options if job is not None and job.driver_cls is driver_cls else None)


def restore(config: Config, runner: Runner, backup_id: str, dest: Path | str, force: bool = False,
            allow_special: bool = False, say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Verify, then restore backup ``backup_id`` into ``dest``; return a summary for the user.

    ``dest`` is a directory, unless the driver's ``prepare_destination`` says it names something
    else (a new ZFS dataset for a ``zfs send`` backup).

    Raises NotFound, VerifyFailed (nothing written), RestoreRefused (nothing written), CommandFailed.
    """
    target, manifest = find_backup(config, backup_id)
    backup_id = manifest["id"]
    results = verify(target, manifest, scan=True, allow_special=allow_special)
    chains = {}
    for vol in manifest["volumes"]:
        chains[vol["volume"]] = links = chain(config, manifest, vol)
        for t, m, item in links[:-1]:
            results += verify(t, m, volumes=[item])
    bad = [r for r in results if not r["ok"]]
    if bad:
        cls = RestoreRefused if any(r.get("refused") for r in bad) else VerifyFailed
        raise cls("restore refused, nothing was written: " + "; ".join(r["message"] for r in bad))
    say(f"verified {len(results)} artifact(s) of {backup_id}")
    driver = driver_for(config, manifest, runner)
    named = driver.prepare_destination(str(dest), manifest, force)
    if named:
        dest, moved, extras_dir = named
    else:
        dest = extras_dir = Path(os.path.abspath(dest))
        for vol in manifest["volumes"]:
            driver.check_restore_dest(dest / vol["label"], vol["format"])
        moved = _prepare_dest(dest, force)
    if moved:
        say(f"moved the previous content of {dest} to {moved}")
    out_vols, roots = [], {}
    for vol in manifest["volumes"]:
        vdest = f"{dest}/{vol['label']}" if named else dest / vol["label"]
        for t, m, item in chains[vol["volume"]]:
            with (t or target).open_artifact(m["id"], _artifact(m, item["artifact"])) as r:
                got = driver.restore(r, item["format"], vdest, {**item, "_scan": vol.get("_scan")}, allow_special)
                roots[vol["label"]] = Path(got or vdest)
                r.finish()
        out_vols.append({"volume": vol["volume"], "path": str(roots[vol["label"]]),
                         **({"restored_as": vdest} if named else {})})
        say(f"restored {vol['volume']} -> {vdest}" + (f" (mounted at {roots[vol['label']]})" if named else ""))
    locate = locator(manifest, roots)
    dbs = []
    for q in manifest.get("quiescers", []):
        q = _restore_extras(target, manifest, q, extras_dir, runner, allow_special, say)
        qcls = registry.discover("quiescer").get(q["type"])
        notes = qcls.load().prepare_restore(q, locate, config) if qcls else None
        for live in q.get("locations", {}):
            dbs.append({"type": q["type"], "live": live, "restored": str(locate(live)), **({"notes": notes} if notes else {})})
            say(f"{q['type']} database {live} restored as {locate(live)}")
    return {"id": backup_id, "dest": str(dest), "moved_aside": moved, "volumes": out_vols, "databases": dbs}


def _restore_extras(target, manifest: dict, q: dict, dest: Path, runner: Runner, allow_special: bool,
                    say: Callable[[str], None]) -> dict:
    """Extract a quiescer's extra artifacts (verified and scanned before) into ``DEST/<restore_dir>``;
    return a copy of its record whose artifact entries say where (``restored``)."""
    if not q.get("artifacts"):
        return q
    out = []
    for a in q["artifacts"]:
        name = a["restore_dir"]
        if "/" in name or name.startswith("."):
            raise RestoreRefused(f"manifest names an unsafe restore_dir {name!r}")
        adest = dest / name
        adest.mkdir(mode=0o700)
        with target.open_artifact(manifest["id"], _artifact(manifest, a["artifact"])) as r:
            tar.extract(runner, r, adest, a["_scan"], allow_special)
            r.finish()
        say(f"restored {q['type']} {a['name']} -> {adest}")
        out.append({**{k: v for k, v in a.items() if k != "_scan"}, "restored": str(adest)})
    return {**q, "artifacts": out}


def drill(config: Config, runner: Runner, backup_id: str, keep: bool = False,
          say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Restore ``backup_id`` into scratch space and run the probes of its quiescers.

    Returns {id, ok, probes: [...], scratch}; the scratch copy is removed unless ``keep``.
    """
    _, manifest = find_backup(config, backup_id)
    backup_id = manifest["id"]
    driver = driver_for(config, manifest, runner)
    named = driver.drill_destination(manifest, f"{backup_id}.{os.getpid()}")
    scratch_root = config.agent.scratch_dir or (config.agent.state_dir / "drill")
    if not named:
        scratch_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    scratch = named or scratch_root / f"{backup_id}.{os.getpid()}"
    t = time.monotonic()
    try:
        summary = restore(config, runner, backup_id, scratch, say=say)
        restore_s = time.monotonic() - t
        locate = locator(manifest, {v["label"]: Path(r["path"]) for v, r in zip(manifest["volumes"], summary["volumes"])})
        probes = []
        for q in manifest.get("quiescers", []):
            info = registry.discover("quiescer").get(q["type"])
            if info is None:
                probes.append({"name": q["type"], "ok": False, "message": f"quiescer plugin {q['type']!r} not installed"})
                continue
            for p in info.load().drill(q, locate):
                probes.append({"name": p.name, "ok": p.ok, "message": p.message, **p.details})
        ok = all(p["ok"] for p in probes)
        return {"id": backup_id, "ok": ok, "probes": probes, "restore_seconds": round(restore_s, 3),
                "scratch": str(scratch) if keep else None, "volumes": summary["volumes"]}
    finally:
        if not keep and named:
            driver.discard(named)
        elif not keep and scratch.exists():
            for child in scratch.iterdir():
                driver.discard(child)
            shutil.rmtree(scratch, ignore_errors=True)



"""One function per command: ``do_<name>(args, out) -> exit code``."""

from __future__ import annotations

from pathlib import Path

from snapagent import catalog, cleanup, registry, verify
from snapagent import config as configmod
from snapagent.chains import check_links
from snapagent.drill import drill
from snapagent.engine import BackupRun
from snapagent.errors import EXIT_FAILED, EXIT_OK
from snapagent.manifest import iso
from snapagent.plugin.target import Damaged, Stored
from snapagent.restore import restore
from snapagent.util.durations import format_duration
from snapagent.util.runner import Runner


def _config(args) -> configmod.Config:
    return configmod.load(configmod.config_path(args.config))


def _runner(cfg: configmod.Config, out, dry_run: bool = False) -> Runner:
    return Runner(dry_run=dry_run, tools=dict(cfg.agent.tools), echo=out.line)


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def do_backup(args, out) -> int:
    cfg = _config(args)
    job = cfg.job(args.job)
    run = BackupRun(cfg, job, _runner(cfg, out, args.dry_run), say=out.say)
    if args.dry_run:
        plan = run.plan()
        if out.json:
            out.emit(plan)
        else:
            out.line(f"dry run of job {job.name!r}: preflight ok, nothing was changed")
        return EXIT_OK
    result = run.run()
    m = result.manifest
    for w in result.warnings:
        out.warn(w)
    if out.json:
        out.emit(m.model_dump(mode="json"))
    else:
        out.say(f"backup {m.id} stored: {len(m.artifacts)} artifact(s), {_size(m.size)}, "
                f"freeze window {m.freeze_window_ms:.0f} ms")
        out.line(m.id)
    return EXIT_OK


def do_list(args, out) -> int:
    cfg = _config(args)
    if args.job:
        cfg.job(args.job)
    rows = catalog.listing(cfg, args.job)
    damaged = [b for b in rows if isinstance(b, Damaged)]
    if out.json:
        out.emit([b.manifest.model_dump(mode="json") if isinstance(b, Stored) else
                  {"id": b.id, "job": b.job, "target": b.target.name, "location": b.location, "damaged": b.reason}
                  for b in rows])
    elif not rows:
        out.say("no backups")
    else:
        out.line(f"{'ID':<36} {'JOB':<12} {'CREATED':<24} {'SIZE':>10} {'FREEZE':>8} TARGET")
        for b in rows:
            if isinstance(b, Stored):
                m = b.manifest
                out.line(f"{m.id:<36} {m.job:<12} {iso(m.created):<24} {_size(m.size):>10} "
                         f"{format_duration(m.freeze_window_ms / 1000):>8} {b.target.name}")
            else:
                out.line(f"{_printable(b.id):<36} {_printable(b.job):<12} DAMAGED: {b.reason} "
                         f"({_printable(b.location)}) {b.target.name}")
    if damaged:
        out.warn(f"{len(damaged)} backup(s) damaged: their manifests cannot be trusted; the others are usable")
    return EXIT_OK


def _printable(s: str) -> str:
    """Return ``s`` as one printable line (a damaged backup's name may be anything)."""
    return s if s.isprintable() else repr(s)


def do_show(args, out) -> int:
    cfg = _config(args)
    b = catalog.find(cfg, args.id)
    m = b.manifest
    if out.json:
        out.emit(m.model_dump(mode="json"))
        return EXIT_OK
    out.line(f"id:            {m.id}")
    out.line(f"job:           {m.job} on {m.host}")
    out.line(f"created:       {iso(m.created)} (completed {iso(m.completed)})")
    out.line(f"stored in:     {b.location} (target {b.target.name})")
    out.line(f"driver:        {m.driver}, export {m.export_format}, snapshot {m.snapshot_name}")
    out.line(f"freeze window: {m.freeze_window_ms:.1f} ms (max {m.max_freeze_ms:.0f} ms)")
    out.line("phases:        " + ", ".join(f"{k} {v:.0f} ms" for k, v in m.phases_ms.items()))
    for v in m.volumes:
        out.line(f"volume:        {v.volume} -> {v.artifact} (restores to DEST/{v.label})"
                 + (f", incremental on {v.parent}" if v.parent else ", full")
                 + (f"; its snapshot {v.snapshot} was kept as the next backup's base" if v.kept else ""))
    for a in m.artifacts:
        out.line(f"artifact:      {a.name} {_size(a.size)} ({a.compression}, raw {_size(a.raw_size)}) sha256 {a.sha256}")
    for q in m.quiescers:
        extra = {k: v for k, v in q.facts().items() if k not in ("type", "locations", "artifacts")}
        out.line(f"quiescer:      {q.type} {extra}")
    out.line("versions:      " + ", ".join(f"{k} {v}" for k, v in m.versions.items()))
    return EXIT_OK


def do_verify(args, out) -> int:
    cfg = _config(args)
    b = catalog.find(cfg, args.id)
    chains, links = check_links(cfg, b)  # a missing or damaged link: one line naming both ids, exit 1
    results = links + verify.check(b)
    ok = all(r.ok for r in results)
    backups = sorted({link.id for chain in chains.values() for link, _ in chain[:-1]})
    if out.json:
        out.emit({"id": b.id, "ok": ok, "chain": backups, "artifacts": [r.as_dict() for r in results]})
    else:
        for r in results:
            name = f"{r.link}/{r.name}" if r.link else r.name
            out.line(f"{'OK  ' if r.ok else 'FAIL'} {name} ({_size(r.size)}) {'' if r.ok else r.message}".rstrip())
        chained = f" with the {len(backups)} earlier backup(s) of its chain" if backups else ""
        bad = "; ".join(r.message for r in results if not r.ok)
        out.line(f"backup {b.id}{chained}: " + ("verified" if ok else f"VERIFICATION FAILED: {bad}"))
    return EXIT_OK if ok else EXIT_FAILED


def do_restore(args, out) -> int:
    cfg = _config(args)
    summary = restore(cfg, _runner(cfg, out), args.id, Path(args.dest), force=args.force,
                      allow_special=args.allow_special, say=out.say)
    if out.json:
        out.emit(summary)
    else:
        out.line(f"restored {summary['id']} into {summary['dest']}")
        shown = set()
        for d in summary["databases"]:
            out.line(f"  {d['type']} database: {d['restored']}")
            for line in d.get("notes", {}).get("instructions", []):
                if line not in shown:  # one database may list several restored locations
                    shown.add(line)
                    out.line(f"    {line}")
    return EXIT_OK


def do_drill(args, out) -> int:
    cfg = _config(args)
    report = drill(cfg, _runner(cfg, out), args.id, keep=args.keep, say=out.say)
    if out.json:
        out.emit(report)
    else:
        for p in report["probes"]:
            details = {k: v for k, v in p.items() if k not in ("name", "ok", "message")}
            out.line(f"{'PASS' if p['ok'] else 'FAIL'} {p['name']}: {p['message']} {details}")
        if not report["probes"]:
            out.line("no database probes recorded for this backup; restore succeeded")
        out.line(f"drill of {report['id']}: {'PASSED' if report['ok'] else 'FAILED'} (restore {report['restore_seconds']:.1f}s)")
        if report["scratch"]:
            out.line(f"scratch copy kept at {report['scratch']}")
    return EXIT_OK if report["ok"] else EXIT_FAILED


def do_cleanup(args, out) -> int:
    cfg = _config(args)
    done = cleanup.sweep(cfg.agent.state_dir, _runner(cfg, out, args.dry_run))
    if out.json:
        out.emit({"released": done})
    else:
        for d in done:
            out.line(d)
        if not done:
            out.line("nothing to clean up")
    return EXIT_OK


def do_config_check(args, out) -> int:
    cfg = _config(args)
    summary = {"config": str(cfg.path), "ok": True,
               "jobs": {n: {"driver": j.cfg.driver, "volumes": j.cfg.volumes, "target": j.target_name,
                            "quiescers": [c.type for c, _ in j.quiescers], "export": j.export}
                        for n, j in cfg.jobs.items()},
               "targets": {n: c.type for n, (c, _) in cfg.targets.items()}}
    if out.json:
        out.emit(summary)
    else:
        out.line(f"{cfg.path}: ok ({len(cfg.jobs)} job(s), {len(cfg.targets)} target(s))")
        for n, j in summary["jobs"].items():
            out.line(f"  job {n}: {j['driver']} {j['volumes']} -> {j['target']}, quiesce {j['quiescers'] or 'none'}")
    return EXIT_OK


def do_plugins(args, out) -> int:
    rows = []
    for kind in registry.GROUPS:
        for info in registry.discover(kind).values():
            rows.append({"kind": kind, "name": info.name, "entry_point": info.value,
                         "distribution": f"{info.dist} {info.version}", "file": info.location()})
    if out.json:
        out.emit(rows)
    else:
        for r in rows:
            out.line(f"{r['kind']:<9} {r['name']:<14} {r['distribution']:<22} {r['entry_point']}  ({r['file']})")
    return EXIT_OK

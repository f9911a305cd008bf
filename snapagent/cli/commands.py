"""One function per command: ``do_<name>(args, out) -> exit code``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from snapagent import cleanup, config as configmod, registry
from snapagent.util.durations import format_duration
from snapagent.engine import BackupRun
from snapagent.errors import EXIT_FAILED, EXIT_OK
from snapagent.restore import drill, find_backup, restore, verify
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


def _public(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if not k.startswith("_")}


def do_backup(args, out) -> int:
    cfg = _config(args)
    job = cfg.job(args.job)
    runner = _runner(cfg, out, args.dry_run)
    result = BackupRun(cfg, job, runner, say=out.say).run()
    if out.json:
        out.emit(result)
    elif result.get("dry_run"):
        out.line(f"dry run of job {job.name!r}: preflight ok, nothing was changed")
    else:
        total = sum(a["size"] for a in result["artifacts"])
        out.say(f"backup {result['id']} stored: {len(result['artifacts'])} artifact(s), {_size(total)}, "
                f"freeze window {result['freeze_window_ms']:.0f} ms")
        out.line(result["id"])
    return EXIT_OK


def do_list(args, out) -> int:
    cfg = _config(args)
    if args.job:
        cfg.job(args.job)
    rows = []
    for t in cfg.all_targets():
        rows.extend(t.list(args.job))
    rows.sort(key=lambda m: (m["created"], m["id"]))
    if out.json:
        out.emit([_public(m) for m in rows])
        return EXIT_OK
    if not rows:
        out.say("no backups")
        return EXIT_OK
    out.line(f"{'ID':<36} {'JOB':<12} {'CREATED':<24} {'SIZE':>10} {'FREEZE':>8} TARGET")
    for m in rows:
        size = sum(a["size"] for a in m["artifacts"])
        out.line(f"{m['id']:<36} {m['job']:<12} {m['created']:<24} {_size(size):>10} "
                 f"{format_duration(m['freeze_window_ms'] / 1000):>8} {m['_target']}")
    return EXIT_OK


def do_show(args, out) -> int:
    cfg = _config(args)
    target, m = find_backup(cfg, args.id)
    if out.json:
        out.emit(_public(m))
        return EXIT_OK
    out.line(f"id:            {m['id']}")
    out.line(f"job:           {m['job']} on {m['host']}")
    out.line(f"created:       {m['created']} (completed {m.get('completed', '?')})")
    out.line(f"stored in:     {m['_location']} (target {target.name})")
    out.line(f"driver:        {m['driver']}, export {m['export_format']}, snapshot {m['snapshot_name']}")
    out.line(f"freeze window: {m['freeze_window_ms']:.1f} ms (max {m['max_freeze_ms']} ms)")
    out.line("phases:        " + ", ".join(f"{k} {v:.0f} ms" for k, v in m["phases_ms"].items()))
    for v in m["volumes"]:
        out.line(f"volume:        {v['volume']} -> {v['artifact']} (restores to DEST/{v['label']})")
    for a in m["artifacts"]:
        out.line(f"artifact:      {a['name']} {_size(a['size'])} ({a['compression']}, raw {_size(a['raw_size'])}) sha256 {a['sha256']}")
    for q in m["quiescers"]:
        extra = {k: v for k, v in q.items() if k not in ("type", "locations")}
        out.line(f"quiescer:      {q['type']} {extra}")
    out.line("versions:      " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()))
    return EXIT_OK


def do_verify(args, out) -> int:
    cfg = _config(args)
    target, m = find_backup(cfg, args.id)
    results = verify(target, m)
    ok = all(r["ok"] for r in results)
    if out.json:
        out.emit({"id": m["id"], "ok": ok, "artifacts": results})
    else:
        for r in results:
            out.line(f"{'OK  ' if r['ok'] else 'FAIL'} {r['name']} ({_size(r['size'])}) {'' if r['ok'] else r['message']}".rstrip())
        out.line(f"backup {m['id']}: {'verified' if ok else 'VERIFICATION FAILED'}")
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

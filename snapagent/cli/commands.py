"""One function per command: ``do_<name>(args, out) -> exit code``.

Each command imports what it uses inside its function: ``--help``, ``--version`` and the read
commands (list, show, status, check, config check) must not pay for what only backup, restore or
drill need (the start-up the benchmark measures; ``tests/unit/test_startup.py`` guards it).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from snapagent.cli import readable
from snapagent.cli.output import handover_lines
from snapagent.cli.output import human_size as _size
from snapagent.errors import EXIT_FAILED, EXIT_OK, ConfigError, OperationFailed, PreflightFailed, SnapagentError, UsageError
from snapagent.util import logfields
from snapagent.util.durations import format_duration, parse_duration
from snapagent.util.gcpause import without_cyclic_gc

if TYPE_CHECKING:
    from snapagent.plugin.target import Damaged, Stored


def _config(args):
    from snapagent import config as configmod

    cfg = configmod.load(configmod.config_path(args.config))
    if getattr(args, "identity", None):
        from snapagent.util import age

        cfg.identities = age.load_identities(Path(args.identity))
    return cfg


def _runner(cfg, out, dry_run: bool = False):
    from snapagent.util.runner import Runner

    return Runner(dry_run=dry_run, tools=dict(cfg.agent.tools), echo=out.line)


def do_backup(args, out) -> int:
    from snapagent.engine import BackupRun
    from snapagent.monitor.watch import watch

    logfields.bind(job=args.job)
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
    with watch(cfg, job, out.warn) as monitored:  # run record, metrics, pings: whatever the end
        result = run.run()
        monitored.success(result.manifest, result.warnings, result.copy_failed)
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


def _list_rows(copies: list[Stored | Damaged]) -> list[Stored | Damaged]:
    """Return the rows of one backup: one row with its good copies, plus each damaged copy
    (one row per damaged copy when no copy is good)."""
    from snapagent.plugin.target import Damaged, Stored

    good = [b for b in copies if isinstance(b, Stored)]
    return ([good[0]] if good else []) + [b for b in copies if isinstance(b, Damaged)]


@without_cyclic_gc
def do_list(args, out) -> int:
    from snapagent import catalog
    from snapagent.plugin.target import Damaged, Stored

    cfg = _config(args)
    if args.job:
        cfg.job(args.job)
    grouped = catalog.by_backup(cfg, args.job)
    damaged = [b for g in grouped for b in g if isinstance(b, Damaged)]
    where = {g[0].id: [b.target.name for b in g if isinstance(b, Stored)] for g in grouped}
    rows = [b for g in grouped for b in _list_rows(g)]
    if out.json:
        out.emit([{**b.manifest.model_dump(mode="json"), "targets": where[b.id]} if isinstance(b, Stored) else
                  {"id": b.id, "job": b.job, "target": b.target.name, "location": b.location, "damaged": b.reason}
                  for b in rows])
    elif not rows:
        out.note("no backups")
    else:
        def text(b: Stored | Damaged) -> str:
            if isinstance(b, Stored):
                m = b.summary  # a cached backup's whole manifest is not validated for a line of text
                return (f"{m.id:<36} {m.job:<12} {m.created_iso:<24} {_size(m.size):>10} "
                        f"{format_duration(m.freeze_window_ms / 1000):>8} {','.join(where[b.id])}")
            return (f"{_printable(b.id):<36} {_printable(b.job):<12} DAMAGED: {b.reason} "
                    f"({_printable(b.location)}) {b.target.name}")

        out.lines([f"{'ID':<36} {'JOB':<12} {'CREATED':<24} {'SIZE':>10} {'FREEZE':>8} TARGETS",
                   *map(text, rows)])
    if damaged:
        out.warn(f"{len(damaged)} backup(s) damaged: their manifests cannot be trusted; the others are usable")
    return EXIT_OK


def _printable(s: str) -> str:
    """Return ``s`` as one printable line (a damaged backup's name may be anything)."""
    return s if s.isprintable() else repr(s)


@without_cyclic_gc
def do_show(args, out) -> int:
    from snapagent import catalog
    from snapagent.manifest import iso
    from snapagent.plugin.target import Damaged

    cfg = _config(args)
    b = catalog.find(cfg, args.id)
    m = b.manifest
    found = catalog.locations(cfg, m.id)
    if out.json:
        out.emit({**m.model_dump(mode="json"), "locations": [
            {"target": c.target.name, "location": c.location,
             **({"damaged": c.reason} if isinstance(c, Damaged) else {})} for c in found]})
        return EXIT_OK
    out.line(f"id:            {m.id}")
    out.line(f"job:           {m.job} on {m.host}")
    out.line(f"created:       {iso(m.created)} (completed {iso(m.completed)})")
    for c in found:
        state = f", DAMAGED: {c.reason}" if isinstance(c, Damaged) else ""
        out.line(f"stored in:     {_printable(c.location)} (target {c.target.name}{state})")
    out.line(f"driver:        {m.driver}, export {m.export_format}, snapshot {m.snapshot_name}")
    out.line(f"freeze window: {m.freeze_window_ms:.1f} ms (max {m.max_freeze_ms:.0f} ms)")
    out.line("phases:        " + ", ".join(f"{k} {v:.0f} ms" for k, v in m.phases_ms.items()))
    if m.freeze is not None:
        out.line("freeze split:  " + ", ".join(f"{k} {v:.1f} ms" for k, v in m.freeze.phase_ms().items()))
        for st in m.freeze.steps:
            held = f", held at {st.held_at_ms:+.1f} ms" if st.held_at_ms is not None else ""
            out.line(f"  {st.start_ms:+9.1f} ms  {st.phase:<8} {st.ms:8.1f} ms  {_printable(st.what)}{held}")
    for v in m.volumes:
        out.line(f"volume:        {v.volume} -> {v.artifact} (restores to DEST/{v.label})"
                 + (f", incremental on {v.parent}" if v.parent else ", full")
                 + (f"; its snapshot {v.snapshot} was kept as the next backup's base" if v.kept else ""))
    for a in m.artifacts:
        enc = f", {a.encryption}-encrypted" if a.encryption != "none" else ""
        out.line(f"artifact:      {a.name} {_size(a.size)} ({a.compression}{enc}, raw {_size(a.raw_size)}) sha256 {a.sha256}")
    for q in m.quiescers:
        facts = q.facts()
        out.line(f"quiescer:      {q.type}")
        out.lines(readable.lines({k: v for k, v in facts.items() if k != "type" and v not in ([], {})}, 1))
    out.line("versions:      " + ", ".join(f"{k} {v}" for k, v in m.versions.items()))
    return EXIT_OK


def do_verify(args, out) -> int:
    from snapagent import catalog, verify
    from snapagent.chains import check_links

    cfg = _config(args)
    b = catalog.find(cfg, args.id, args.source)
    logfields.bind(job=b.manifest.job, backup_id=b.id)
    chains, links = check_links(cfg, b)  # a missing or damaged link: one line naming both ids, exit 1
    results = links + verify.check(b) + verify.repository_check(b)
    ok = all(r.ok for r in results)
    backups = sorted({link.id for chain in chains.values() for link, _ in chain[:-1]})
    if out.json:
        out.emit({"id": b.id, "target": b.target.name, "ok": ok, "chain": backups,
                  "artifacts": [r.as_dict() for r in results]})
    else:
        for r in results:
            name = f"{r.link}/{r.name}" if r.link else r.name
            out.line(f"{'OK  ' if r.ok else 'FAIL'} {name} ({_size(r.size)}) {'' if r.ok else r.message}".rstrip())
        chained = f" with the {len(backups)} earlier backup(s) of its chain" if backups else ""
        bad = "; ".join(r.message for r in results if not r.ok)
        out.line(f"backup {b.id}{chained}: " + ("verified" if ok else f"VERIFICATION FAILED: {bad}"))
        if ok and cfg.identities is None and any(a.encryption != "none" for a in b.manifest.artifacts):
            out.line("encrypted artifacts: their stored (encrypted) bytes were checked; "
                     "with --identity FILE their decrypted content is checked too")
    return EXIT_OK if ok else EXIT_FAILED


def do_restore(args, out) -> int:
    from snapagent.restore import restore

    cfg = _config(args)
    summary = restore(cfg, _runner(cfg, out), args.id, Path(args.dest), force=args.force,
                      allow_special=args.allow_special, say=out.say, paths=args.paths, source=args.source,
                      space_check=args.space_check)
    if out.json:
        out.emit(summary)
    else:
        out.line(f"restored {summary['id']} into {summary['dest']}")
        for v in summary["volumes"]:
            for p in v.get("paths", []):
                out.line(f"  {Path(v['path']) / p}")
        for d in summary["databases"]:
            out.lines(handover_lines(d))
    return EXIT_OK


def do_drill(args, out) -> int:
    from snapagent.drill import drill

    cfg = _config(args)
    report = drill(cfg, _runner(cfg, out), args.id, keep=args.keep, say=out.say, source=args.source,
                   space_check=args.space_check)
    if out.json:
        out.emit(report)
    else:
        for p in report["probes"]:
            out.line(f"{'PASS' if p['ok'] else 'FAIL'} {_printable(p['name'])}: {readable.scalar(p['message'])}")
            out.lines(readable.lines({k: v for k, v in p.items() if k not in ("name", "ok", "message")}, 1))
        for n in report["not_probed"]:
            out.line(f"NOT PROBED {_printable(n['name'])}: {n['reason']}")
        verdict = "PASSED" if report["ok"] else f"FAILED: {report['message']}" if "message" in report else "FAILED"
        out.line(f"drill of {report['id']}: {verdict} (restore {report['restore_seconds']:.1f}s)")
        if report["scratch"]:
            out.line(f"scratch copy kept at {report['scratch']}")
    return EXIT_OK if report["ok"] else EXIT_FAILED


def do_copy(args, out) -> int:
    from snapagent import catalog, copies

    cfg = _config(args)
    if args.target not in cfg.targets:
        raise UsageError(f"--to: unknown target {args.target!r} (defined: {', '.join(sorted(cfg.targets))})")
    good = catalog.copies(cfg, args.id, args.source)  # a copy not already in TARGET, if any
    b = next((c for c in good if c.target.name != args.target), good[0])
    logfields.bind(job=b.manifest.job, backup_id=b.id)
    result = copies.copy_backup(cfg, b, cfg.target(args.target), _runner(cfg, out), say=out.say)
    if out.json:
        out.emit(result.as_dict())
    elif result.present:
        out.line(f"backup {b.id} is already in target {args.target} (verified); nothing copied")
    else:
        links = len(result.copied) - 1
        also = f" with {links} earlier backup(s) of its chain" if links else ""
        out.line(f"copied {b.id}{also} from target {b.target.name} to target {args.target} (verified)")
    return EXIT_OK


def do_prune(args, out) -> int:
    from snapagent.retention import archives
    from snapagent.retention.prune import describe, prune

    cfg = _config(args)
    jobs = [cfg.job(args.job)] if args.job else [cfg.jobs[n] for n in sorted(cfg.jobs)]
    runner = _runner(cfg, out, args.dry_run)
    results, failed = [], []
    for job in jobs:
        logfields.bind(job=job.name)
        try:
            done = prune(cfg, job, runner, say=out.say)
            cleaned = archives.clean(cfg, job, done, args.dry_run, say=out.say)
        except OperationFailed as e:  # one job locked or failing: the others are still pruned
            if args.job:
                raise
            failed.append(f"job {job.name!r}: {e}")
            continue
        if done:
            done[0].archives = cleaned  # the job's own target's record carries them
        results += done
        failed += [f"{archives.describe(a)}: could not remove {f}" for a in cleaned for f in a.failed]
        if not out.json:
            for r in done:
                _print_prune(out, r, describe(job.cfg.retention), args.dry_run)
            for a in cleaned:
                _print_archive(out, job.name, a, args.dry_run)
    logfields.clear()  # what follows is about every job
    if out.json:
        out.emit([r.as_dict() for r in results])
    failed += [f for r in results for f in r.failed]
    for r in results:
        if r.damaged:
            out.warn(f"job {r.job!r}, target {r.target!r}: {len(r.damaged)} damaged backup(s) left untouched: "
                     + ", ".join(map(_printable, r.damaged)))
    for f in failed:
        out.warn(f"prune: {f}")
    if cfg.agent.metrics_file is not None and not args.dry_run and any(r.removed for r in results):
        from snapagent.monitor import metrics  # lazily: prometheus_client costs start-up time
        try:  # snapagent_backups changed: keep the exporter's view true
            metrics.write(cfg, cfg.agent.metrics_file)
        except OSError as e:
            out.warn(f"metrics file {cfg.agent.metrics_file} not written: {e.strerror or e}")
    return EXIT_FAILED if failed else EXIT_OK


def _print_prune(out, r, rules: str, dry_run: bool) -> None:
    """Print one job's result in one target the way ``restic forget`` does."""
    out.line(f"job {r.job}, target {r.target}: {rules}")
    if r.empty_policy:
        out.line(f"nothing removed: {len(r.keep)} backup(s) kept")
        out.line()
        return
    out.line(f"keep {len(r.keep)} backup(s):")
    for i in r.keep:
        out.line(f"  {i:<36} {r.created[i]:<24} {', '.join(r.reasons[i])}")
    verb = "would remove" if dry_run else "remove"
    out.line(f"{verb} {len(r.remove)} backup(s):" if r.remove else "nothing to remove")
    for i in r.remove:
        state = "" if dry_run or i in r.removed else "  (FAILED, left for the next prune)"
        out.line(f"  {i:<36} {r.created[i]:<24}{state}")
    out.line()


def _print_archive(out, job: str, a, dry_run: bool) -> None:
    """Print one archive's cleanup after the job's prune: what stays, what goes (listed in a dry run)."""
    out.line(f"job {job}, archive {_printable(a.archive)} ({a.quiescer}):")
    if a.reason:
        out.line(f"nothing removed: {a.reason}")
    else:
        out.line(f"keep from {a.kept_from} on (needed by backup {a.needed_by}): {a.kept} file(s)")
        if not a.remove:
            out.line("nothing older to remove")
        elif dry_run:
            out.line(f"would remove {len(a.remove)} file(s), {_size(a.bytes)}:")
            for n in a.remove:
                out.line(f"  {n}")
        else:
            out.line(f"removed {len(a.removed)} file(s), {_size(a.bytes)}"
                     + (f"; {len(a.failed)} could not be removed" if a.failed else ""))
    out.line()


def do_cleanup(args, out) -> int:
    from snapagent import cleanup

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
    """The gate: the config (``_config`` refuses an invalid one), the programs it names and, with
    --connect, each job's preflight. Every problem on its own line; exit 2 when a config change
    fixes one of them, 1 when only the host or a server does (a missing grant, a volume)."""
    from snapagent import gate

    cfg = _config(args)
    runner = _runner(cfg, out, dry_run=True)
    problems = gate.program_problems(cfg, runner)
    if args.connect:
        problems += gate.connect_problems(cfg, runner)
    if problems:
        cls = ConfigError if any(p.config for p in problems) else PreflightFailed
        raise cls(f"{cfg.path}: {len(problems)} problem(s)" + "".join(f"\n  {p.text}" for p in problems))
    summary = {"config": str(cfg.path), "ok": True, "connected": bool(args.connect),
               "jobs": {n: {"driver": j.cfg.driver, "volumes": j.cfg.volumes, "target": j.target_name,
                            "quiescers": [c.type for c, _ in j.quiescers], "export": j.export}
                        for n, j in cfg.jobs.items()},
               "targets": {n: c.type for n, (c, _) in cfg.targets.items()}, "notes": gate.notices(cfg)}
    if out.json:
        out.emit(summary)
    else:
        checked = "every job's preflight passed" if args.connect else "add --connect to run each job's preflight too"
        out.line(f"{cfg.path}: ok ({len(cfg.jobs)} job(s), {len(cfg.targets)} target(s)); {checked}")
        for n, j in summary["jobs"].items():
            out.line(f"  job {n}: {j['driver']} {j['volumes']} -> {j['target']}, quiesce {j['quiescers'] or 'none'}")
        for note in summary["notes"]:
            out.line(f"  note: {note}")
    return EXIT_OK


def do_plugins(args, out) -> int:
    from snapagent import registry

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


@without_cyclic_gc
def do_check(args, out) -> int:
    """Nagios plugin: exit 0/1/2/3; never 2 for a bad config or argument (that is UNKNOWN, 3)."""
    from snapagent.monitor import check as checkmod

    try:
        code, text, checks = _check(args)
    except (SnapagentError, OSError) as e:
        (code, text), checks = checkmod.unknown(str(e) if isinstance(e, SnapagentError) else
                                                f"{e.strerror or e}: {e.filename or ''}"), []
    except Exception as e:  # noqa: BLE001 - a monitoring plugin answers UNKNOWN, never a traceback
        (code, text), checks = checkmod.unknown(f"internal error: {type(e).__name__}: {e}"), []
    if out.json:
        out.emit({"state": checkmod.STATES[code], "exit_code": code, "output": text,
                  "jobs": [{"job": c.job, "state": checkmod.STATES[c.state], "message": c.message} for c in checks]})
    else:
        out.line(text)
    return code


def _check(args) -> tuple[int, str, list]:
    from snapagent.monitor import check as checkmod
    from snapagent.monitor import facts as factsmod

    ages = {}
    for opt in ("max_age", "warn_age"):
        value = getattr(args, opt)
        try:
            ages[opt] = None if value is None else parse_duration(value)
        except ValueError as e:
            return (*checkmod.unknown(f"--{opt.replace('_', '-')}: {e}"), [])
    try:
        cfg = _config(args)
    except SnapagentError as e:
        return (*checkmod.unknown(f"configuration cannot be read: {e}"), [])
    jobs = [cfg.job(args.job)] if args.job else list(cfg.jobs.values())
    now = datetime.now(timezone.utc)
    checks = [checkmod.check_job(factsmod.gather(cfg, j, strict=True), now, checkmod.max_age_for(j, ages["max_age"]),
                                 ages["warn_age"]) for j in jobs]
    return (*checkmod.report(checks), checks)


@without_cyclic_gc
def do_status(args, out) -> int:
    from snapagent.monitor import facts as factsmod
    from snapagent.monitor.status import job_status

    cfg = _config(args)
    now = datetime.now().astimezone()
    jobs = [cfg.job(args.job)] if args.job else list(cfg.jobs.values())
    rows = [job_status(factsmod.gather(cfg, j), now) for j in jobs]
    if out.json:
        out.emit(rows)
        return EXIT_OK
    for r in rows:
        run, ok = r["last_run"], r["last_success"]
        out.line(f"job {r['job']}:")
        if run is None:
            out.line("  last run:     none recorded")
        else:
            fw = "" if run["freeze_window_seconds"] is None else f", freeze window {run['freeze_window_seconds'] * 1000:.0f} ms"
            out.line(f"  last run:     {run['result']} at {run['ended']} ({format_duration(run['duration_seconds'])}{fw})"
                     + (": " + run["error"].replace("\n", "\n    ") if run["error"] else ""))
        for w in run["warnings"] if run else []:
            out.line(f"  warning:      {w}")
        out.line(f"  last success: {ok['backup_id']} at {ok['ended']}" if ok else "  last success: never")
        for name, t in r["targets"].items():
            span = f", oldest {t['oldest']}, newest {t['newest']}" if t["backups"] else ""
            dmg = f", {t['damaged']} DAMAGED" if t["damaged"] else ""
            out.line(f"  target {name}: {t['backups']} backup(s), {_size(t['size_bytes'])}{span}{dmg}")
        out.line(f"  next run:     {r['next_run']} ({r['schedule']})" if r["next_run"] else
                 "  next run:     not scheduled (no `schedule`)" if not r["schedule"] else
                 f"  next run:     never ({r['schedule']})")


_STATE = {"new": "not installed", "changed": "installed, differs (install rewrites it)", "same": "installed",
          "stale": "installed, its job has no schedule any more (install removes it)",
          "foreign": "exists, NOT written by snapagent (install refuses to replace it)"}


def do_schedule(args, out) -> int:
    from snapagent.schedule import calendar
    from snapagent.schedule import install as sched

    root = Path(args.root)
    if args.action != "show" and not args.dry_run and not root.is_dir():
        raise UsageError(f"--root {args.root}: not a directory")
    if args.action == "remove":
        return _schedule_remove(root, args, out)
    if args.templates:
        return _schedule_templates(root, args, out)
    cfg = _config(args)
    try:
        delay = 0 if args.randomized_delay in ("0", "") else round(parse_duration(args.randomized_delay))
    except ValueError as e:
        raise UsageError(f"--randomized-delay: {e}") from None
    jobs = sched.scheduled(cfg)
    changes = sched.plan(cfg, root, args.cron, sched.entry_point(), delay)
    now = datetime.now(timezone.utc).astimezone()
    nexts = {j: calendar.next_elapse(e, now) for j, e in jobs.items()}
    if args.action == "show":
        if out.json:
            out.emit({"jobs": {j: {"schedule": e, "normalized": calendar.validate(e),
                                   "next": nexts[j].isoformat() if nexts[j] else None} for j, e in jobs.items()},
                      "files": [{"path": str(c.path), "state": c.state, "content": c.content} for c in changes]})
            return EXIT_OK
        for j, e in jobs.items():
            out.line(f"# job {j}: {e} = {calendar.validate(e)}; next {nexts[j].isoformat() if nexts[j] else 'never'}")
        if not jobs:
            out.line("# no job has a schedule (jobs.NAME.schedule)")
        for c in changes:
            out.line(f"# {c.path}: {_STATE[c.state]}")
            if c.content is not None:
                out.line(c.content)
        return EXIT_OK
    if not jobs:
        out.line("no job has a schedule (jobs.NAME.schedule): nothing to install")
    if args.dry_run:
        for c in changes:
            verb = {"same": "keep", "stale": "remove", "foreign": "refuse to replace"}.get(c.state, "write")
            out.line(f"would {verb} {c.path}")
            if c.state in ("new", "changed"):
                out.line(c.content)
    else:
        for line in sched.apply(changes):
            out.line(line)
    if jobs and args.cron:
        out.line("next: nothing to reload; cron reads /etc/cron.d/snapagent by itself")
    elif jobs:
        timers = " ".join(sched.units.timer_name(j) for j in jobs)
        out.line(f"next: systemctl daemon-reload && systemctl enable --now {timers}")
        drills = " ".join(f"snapagent-drill@{j}.timer" for j in jobs)
        out.line(f"weekly restore drill (optional): systemctl enable --now {drills}")
    return EXIT_OK


def _schedule_templates(root: Path, args, out) -> int:
    """``schedule install|show --templates``: only the units that need no config (the package install)."""
    from snapagent.schedule import install as sched

    if args.cron:
        raise UsageError("--templates writes systemd units; it cannot be combined with --cron")
    changes = sched.plan_templates(root, sched.entry_point())
    if args.action == "show" or args.dry_run:
        for c in changes:
            out.line(f"# {c.path}: {_STATE[c.state]}" if args.action == "show" else
                     f"would {'keep' if c.state == 'same' else 'write'} {c.path}")
        return EXIT_OK
    for line in sched.apply(changes) or ["templates up to date"]:
        out.line(line)
    return EXIT_OK


def _schedule_remove(root: Path, args, out) -> int:
    from snapagent.schedule import install as sched

    mine, foreign = sched.removable(root, args.cron)
    for p in foreign:
        out.warn(f"left {p} alone: snapagent did not write it")
    lines = [f"would remove {p}" for p in mine] if args.dry_run else sched.remove(mine)
    for line in lines or ["nothing to remove"]:
        out.line(line)
    timers = " ".join(sched.enabled_timers(root, mine))
    if timers:
        out.line(f"next: systemctl disable --now {timers}; systemctl daemon-reload")
    return EXIT_OK

"""Benchmark case startup: how long the read commands take to answer.

Rows: the CLI's start-up (``--version``) and ``list`` over an empty target against the bare
interpreter (``python -I -c pass``: what no Python program can beat; each side runs once unrecorded
first, so Python's bytecode cache is warm as after an install); ``list``, ``status`` and
``check`` over N backups against what an admin would run instead, reading every manifest with
``find TARGET -name manifest.json -exec cat {} +``. Each warm-up run leaves the manifest cache
(``<state_dir>/cache``) filled, as any listing does; the "first run" rows remove it before every
run: every manifest validated, the cache written.

The backups are built fast: valid format-2 manifests written through ``snapagent.manifest``
(``dumps``, so each carries its checksum) into the directory target's layout, each with a 1-byte
artifact its manifest describes — not real backups, but exactly what ``list`` reads.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
from datetime import datetime, timedelta, timezone
from pathlib import Path

from bench.core import Context, Row, alternate, measure, snapagent_argv

JOB = "app"
TARGET_S = 0.1  # read commands start in ≤ 0.1 s (issue 11)
LIST_S = 0.5  # list over 10,000 backups ≤ 0.5 s (issue 11)


def write_config(work: Path, backups: Path) -> Path:
    """Write a config like etc/snapagent.toml's (a btrfs job with an sqlite quiescer, a directory
    target at ``backups``); return its path."""
    cfg = work / "snapagent.toml"
    (work / "state").mkdir(exist_ok=True)
    cfg.write_text(
        f"[agent]\nstate_dir = {json.dumps(str(work / 'state'))}\n\n"
        f"[targets.local]\ntype = \"directory\"\npath = {json.dumps(str(backups))}\n\n"
        f"[jobs.{JOB}]\ndriver = \"btrfs\"\nvolumes = [\"/srv/app\"]\ntarget = \"local\"\nexport = \"tar\"\n"
        "schedule = \"daily\"\n\n"
        f"[jobs.{JOB}.retention]\nkeep_last = 3\n\n"
        f"[[jobs.{JOB}.quiesce]]\ntype = \"sqlite\"\npath = \"/srv/app/app.db\"\n")
    return cfg


def make_backups(root: Path, n: int) -> None:
    """Write ``n`` valid backups of job JOB (one a minute) into directory target ``root``."""
    import hashlib

    from snapagent import manifest as manifestmod
    from snapagent.manifest import Manifest

    byte = b"x"
    sha = hashlib.sha256(byte).hexdigest()
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    jobdir = root / JOB
    jobdir.mkdir(parents=True, mode=0o700)
    for i in range(n):
        t = start + timedelta(minutes=i)
        bid = f"{JOB}-{t.strftime('%Y%m%dT%H%M%SZ')}"
        m = Manifest.model_validate(dict(
            id=bid, job=JOB, host="bench", created=t, completed=t + timedelta(seconds=2), driver="btrfs",
            export_format="tar", snapshot_name=f"snapagent-{bid}",
            volumes=[dict(volume="/srv/app", label="app", snapshot=f"/srv/app/.snapagent-snapshots/{bid}",
                          artifact="00-app.tar.zst", format="tar")],
            quiescers=[dict(type="sqlite", locations={"/srv/app/app.db": dict(volume=0, relpath="app.db")},
                            wal_checkpoint=True)],
            freeze_window_ms=4.2, max_freeze_ms=10000, phases_ms={"quiesce": 1.0, "snapshot": 3.2},
            artifacts=[dict(name="00-app.tar.zst", size=1, sha256=sha, compression="zstd", raw_size=1)],
            versions={"snapagent": "bench", "btrfs": "6.x"}))
        d = jobdir / bid
        d.mkdir(mode=0o700)
        (d / "00-app.tar.zst").write_bytes(byte)
        (d / "manifest.json").write_bytes(manifestmod.dumps(m))


#: The environment of every measured command: as installed, Python caches bytecode (a session
#: with PYTHONDONTWRITEBYTECODE=1 would otherwise measure compiling snapagent on every start).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _seconds(argv: list[str], ok: tuple[int, ...] = (0,)) -> float:
    r = measure(argv, env=ENV)
    if r.rc not in ok:
        raise RuntimeError(f"{argv} exited {r.rc}: {r.stderr.strip()[-500:]}")
    return r.seconds * 1000


def run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    bare = [ctx.python, "-I", "-c", "pass"]
    empty = ctx.work / "startup-empty"
    empty.mkdir()
    cfg = write_config(empty, empty / "backups")
    for figure, args in (("CLI start-up (`--version`)", ["--version"]),
                         ("`list` start-up (empty target)", ["list"])):
        ctx.log(f"startup: {figure}")
        ours, base = alternate(lambda a=args: _seconds(snapagent_argv(ctx, cfg, *a)),
                               lambda: _seconds(bare), ctx.runs)
        rows.append(Row(figure, "ms", ours, base, "`python -I -c pass`", f"≤ {TARGET_S * 1000:.0f} ms",
                        met=statistics.median(ours) <= TARGET_S * 1000))
    for n in (ctx.scale(1000, 200), ctx.scale(10000, 1000)):
        work = ctx.work / f"startup-{n}"
        work.mkdir()
        backups = work / "backups"
        ctx.log(f"startup: writing {n} backups")
        make_backups(backups, n)
        cfg = write_config(work, backups)
        cat = ["find", str(backups), "-name", "manifest.json", "-exec", "cat", "{}", "+"]
        # check exits 0 OK / 1 WARNING / 2 CRITICAL: the synthetic backups are old, so CRITICAL is expected
        for cmd, ok in (("list", (0,)), ("status", (0,)), ("check", (0, 1, 2))):
            ctx.log(f"startup: {cmd} over {n} backups")
            ours, base = alternate(lambda c=cmd, o=ok: _seconds(snapagent_argv(ctx, cfg, c), o),
                                   lambda: _seconds(cat), ctx.runs)
            target = f"≤ {LIST_S * 1000:.0f} ms" if cmd == "list" and n >= 10000 else ""
            rows.append(Row(f"`{cmd}` over {n:,} backups", "ms", ours, base, "`find … -exec cat {} +`", target,
                            met=(statistics.median(ours) <= LIST_S * 1000) if target else None))
        ctx.log(f"startup: list over {n} backups, no manifest cache")
        cache = work / "state" / "cache"

        def cold() -> float:
            shutil.rmtree(cache, ignore_errors=True)  # every manifest validated, and the cache written
            return _seconds(snapagent_argv(ctx, cfg, "list"))

        ours, base = alternate(cold, lambda: _seconds(cat), ctx.runs)
        rows.append(Row(f"`list` over {n:,} backups, first run (no manifest cache)", "ms", ours, base,
                        "`find … -exec cat {} +`", "", note="what the first listing after an upgrade costs"))
    return rows

"""``snapagent schedule install|remove|show``: the schedule files under a root directory.

``plan`` computes what install would write (and which marked timers of jobs no longer scheduled
it would remove) without touching anything; ``apply`` and ``remove`` do the writes — atomically,
units 0644 (systemd and cron read them as other users' files), directories 0755 like the rest of
/etc. Only files that start with ``units.MARK`` are ever replaced or removed.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from snapagent import config as configmod
from snapagent.errors import ConfigError, OperationFailed, UsageError
from snapagent.schedule import units
from snapagent.util.fs import fsync_dir, write_atomic


@dataclass
class Change:
    """One file: ``content`` None means remove it. ``state``: new, changed, same, stale, foreign."""

    path: Path
    content: str | None
    state: str


def entry_point() -> str:
    """Return the absolute path of the installed ``snapagent`` program: argv[0] when it is that
    program, else the one beside this Python (a venv), else the one on PATH. Raise OperationFailed."""
    cands = [sys.argv[0] if Path(sys.argv[0]).name == "snapagent" else None,
             str(Path(sys.executable).parent / "snapagent"), shutil.which("snapagent")]
    for c in cands:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return os.path.abspath(c)
    raise OperationFailed("cannot find the installed `snapagent` program (not on PATH, not beside "
                          f"{sys.executable}); the units must run it by its absolute path")


def _marked(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.readline().startswith(units.MARK)
    except FileNotFoundError:
        return False


def _state(path: Path, content: str) -> str:
    if not path.exists() and not path.is_symlink():
        return "new"
    if path.is_symlink() or not path.is_file() or not _marked(path):
        return "foreign"
    return "same" if path.read_text(errors="replace") == content else "changed"


def scheduled(cfg: configmod.Config) -> dict[str, str]:
    """The jobs that have a schedule: name → OnCalendar expression."""
    return {n: j.cfg.schedule for n, j in cfg.jobs.items() if j.cfg.schedule}


def installed_timers(root: Path) -> list[Path]:
    """The marked ``snapagent@*.timer`` files under ``root``."""
    d = root / units.UNIT_DIR
    return sorted(p for p in d.glob("snapagent@?*.timer") if p.is_file() and _marked(p)) if d.is_dir() else []


def template_files(root: Path, exe: str, conf: str | None) -> dict[Path, str]:
    """The units that do not depend on the jobs (``units.TEMPLATES``) under ``root``: path → content.
    Raises ValueError for a path no unit can quote."""
    return {root / units.UNIT_DIR / name: text for name, text in units.templates(exe, conf).items()}


def plan_templates(root: Path, exe: str) -> list[Change]:
    """Return the changes that writing only the template units (for the default config) would make
    under ``root``: what the package install does, without reading a config. Raises UsageError."""
    try:
        files = template_files(root, exe, None)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return [Change(p, c, _state(p, c)) for p, c in files.items()]


def plan(cfg: configmod.Config, root: Path, cron: bool, exe: str, randomized_delay: int = 0) -> list[Change]:
    """Return the changes install would make under ``root``. Raises ConfigError naming the job and
    key when ``cron`` and a schedule cron cannot express; UsageError for a path no unit can quote."""
    jobs = scheduled(cfg)
    conf = None if str(cfg.path) == configmod.DEFAULT_CONFIG else os.path.abspath(cfg.path)
    files: dict[Path, str] = {}
    try:
        if cron:
            if jobs:
                files[root / units.CRON_PATH] = units.cron_file(jobs, exe, conf)
        else:
            if jobs:
                files.update(template_files(root, exe, conf))
            for job, expr in jobs.items():
                files[root / units.UNIT_DIR / units.timer_name(job)] = units.timer_unit(job, expr, randomized_delay)
    except ValueError as e:
        if str(e).startswith("jobs."):
            raise ConfigError(f"{cfg.path}: {e}") from None
        raise UsageError(str(e)) from None
    changes = [Change(p, c, _state(p, c)) for p, c in files.items()]
    if not cron:
        changes += [Change(p, None, "stale") for p in installed_timers(root) if p not in files]
    return changes


def _check_foreign(changes: list[Change]) -> None:
    foreign = [str(c.path) for c in changes if c.state == "foreign"]
    if foreign:
        raise OperationFailed(f"{', '.join(foreign)} exists and was not written by snapagent; "
                              "move it away first (nothing was changed)")


def apply(changes: list[Change]) -> list[str]:
    """Write new/changed files and remove stale ones; return one line per change. Raises
    OperationFailed (before writing anything) when a file that snapagent did not write is in the way."""
    _check_foreign(changes)
    done = []
    for c in changes:
        if c.state in ("new", "changed"):
            c.path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            write_atomic(c.path, c.content.encode(), mode=0o644)
            if c.path.name == "snapagent" and os.geteuid() == 0:
                os.chown(c.path, 0, 0)  # cron ignores a cron.d file root does not own
            done.append(f"wrote {c.path}")
        elif c.state == "stale":
            c.path.unlink()
            fsync_dir(c.path.parent)
            done.append(f"removed {c.path} (its job has no schedule any more)")
    return done


def removable(root: Path, cron: bool) -> tuple[list[Path], list[Path]]:
    """Return (files snapagent wrote, files at its paths it did not write) under ``root``."""
    if cron:
        paths = [root / units.CRON_PATH]
    else:
        d = root / units.UNIT_DIR
        paths = [d / n for n in units.TEMPLATES] + (sorted(d.glob("snapagent@?*.timer")) if d.is_dir() else [])
    present = [p for p in paths if p.exists() or p.is_symlink()]
    mine = [p for p in present if p.is_file() and not p.is_symlink() and _marked(p)]
    return mine, [p for p in present if p not in mine]


def enabled_timers(root: Path, removed: list[Path]) -> list[str]:
    """The timers to disable when ``removed`` are gone: each removed ``snapagent@JOB.timer``, and
    every enabled instance (a ``*.wants/`` link under ``root``) of a removed template timer."""
    names = [p.name for p in removed if p.name.endswith(".timer") and "@." not in p.name]
    d = root / units.UNIT_DIR
    for t in (p for p in removed if p.name.endswith(".timer") and "@." in p.name):
        prefix = t.name.split("@", 1)[0] + "@"
        names += sorted({w.name for w in d.glob(f"*.wants/{prefix}?*.timer") if w.is_symlink()})
    return names


def remove(paths: list[Path]) -> list[str]:
    """Remove ``paths`` (files snapagent wrote); return one line per file."""
    for p in paths:
        p.unlink()
        fsync_dir(p.parent)
    return [f"removed {p}" for p in paths]

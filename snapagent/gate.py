"""`config check`: the gate before a timer is enabled.

Loading the config (``config.load``) already refuses what the file says wrong by itself. Here is
what needs the host: the programs it names exist (``agent.tools``, a command hook's argv[0]),
what a quiescer's entry gets wrong about its job (``Quiescer.job_problems``) and,
with ``--connect``, each job's preflight as a backup would run it — driver (tools, volumes),
quiescers (connection, grants, modes, where their files lie), target, state dir — every problem,
not only the first. Nothing is taken, locked or written.

In: a loaded Config. Out: a list of Problem (one line each, the key or job named). Raised: nothing
for a problem found (the caller decides the exit code: 2 for a config reason, 1 for the rest).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from snapagent.config import Config
from snapagent.errors import SnapagentError, UsageError
from snapagent.util.runner import Runner


@dataclass(frozen=True)
class Problem:
    """One problem: ``text`` names the key or job; ``config`` says a config change fixes it (exit 2)."""

    text: str
    config: bool


def program_problems(cfg: Config, runner: Runner) -> list[Problem]:
    """Return the programs the config names that cannot run: an ``agent.tools`` entry that is not
    an absolute path to an executable file, a quiescer's program (``Quiescer.programs``) that is
    found neither through ``agent.tools`` nor PATH; and each quiescer's ``job_problems``."""
    out = []
    for name, path in cfg.agent.tools.items():
        p = Path(path)
        if not p.is_absolute():
            out.append(Problem(f"agent.tools.{name}: must be an absolute path, got {path!r}", True))
        elif not (p.is_file() and os.access(p, os.X_OK)):
            out.append(Problem(f"agent.tools.{name}: {path} is not an executable file", True))
    for jname, job in cfg.jobs.items():
        for i, (cls, qcfg) in enumerate(job.quiescers):
            for key, program in cls.programs(qcfg).items():
                if runner.which(program) is None:
                    out.append(Problem(f"jobs.{jname}.quiesce[{i}].{key}: program not found: {program} "
                                       "(not executable, or not on PATH)", True))
            for key, text in cls.job_problems(qcfg, list(job.cfg.volumes)).items():
                out.append(Problem(f"jobs.{jname}.quiesce[{i}].{key}: {text}", True))
    return out


def notices(cfg: Config) -> list[str]:
    """Return what ``config check`` says without failing (a backup would run): each job whose
    drill cannot pass because nothing in it probes the restored copy, and each archive a
    quiescer's backups draw on (PostgreSQL's ``wal_archive``) that prune would clean but the
    job has no retention rules, so it grows for good. One line each, the job or key named."""
    from snapagent.retention import policy

    out = []
    for jname, job in cfg.jobs.items():
        if not any(cls.probes(qcfg) for cls, qcfg in job.quiescers):
            what = (f"add `probe` to a command hook (jobs.{jname}.quiesce[N].probe)" if job.quiescers
                    else "add a quiescer, or a command hook with only a `probe`")
            out.append(f"jobs.{jname}: a drill of this job probes nothing and cannot pass: {what}")
        for i, (cls, qcfg) in enumerate(job.quiescers):
            archive = cls.archive(qcfg)
            if archive is not None and archive.prune and policy.is_empty(job.cfg.retention):
                out.append(f"jobs.{jname}.quiesce[{i}].{archive.key}: {archive.path} is cleaned only after prune, and "
                           f"the job has no retention rules: it grows until [jobs.{jname}.retention] has some")
    return out


def connect_problems(cfg: Config, runner: Runner) -> list[Problem]:
    """Run each job's backup preflight (``BackupRun.preflight_problems``) with a dry-run runner;
    return every failure, each line naming its job."""
    from snapagent.engine import BackupRun

    out = []
    for jname, job in cfg.jobs.items():
        try:
            found = BackupRun(cfg, job, runner).preflight_report()
        except SnapagentError as e:  # a plugin that failed outside its own checks
            found = [e]
        for e in found:
            for n, line in enumerate(str(e).splitlines()):
                out.append(Problem(f"jobs.{jname}: {line}" if n == 0 else f"  {line}", isinstance(e, UsageError)))
    return out

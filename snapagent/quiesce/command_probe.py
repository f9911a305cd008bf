"""The drill probe of a command hook: the user's own check, run against the restored copy.

In: the hook's ``probe`` argv and ``probe_timeout`` (from the *current* config of the backup's
job), and where the drill restored each volume (``RestoreContext.drill``). The probe runs through
the Runner (argv, never a shell; nothing is interpolated into it) in the scratch copy's directory,
with the environment of the hook's other commands (``SNAPAGENT_JOB``, ``SNAPAGENT_PHASE=probe``,
``SNAPAGENT_DRY_RUN=0``, ``SNAPAGENT_VOLUMES``) plus:

- ``SNAPAGENT_BACKUP_ID``: the backup drilled;
- ``SNAPAGENT_RESTORE_DIR``: the scratch copy (also the working directory); volume ``LABEL`` is
  restored in its directory ``LABEL`` (``snapagent show ID``: "restores to DEST/LABEL");
- ``SNAPAGENT_RESTORED_VOLUMES``: where each volume was restored, one per line, in the order of
  ``SNAPAGENT_VOLUMES`` (names may contain spaces; a newline in a name is refused by the config).

An argv element that is exactly ``{restored}`` is replaced by the scratch copy's directory, one
that is exactly ``{restored:VOLUME}`` (VOLUME as written in the job's ``volumes``) by where that
volume was restored — each as a whole element, never inside a longer string, never through a
shell. A placeholder naming no volume of the job fails the probe (``config check`` refuses it
before: ``placeholder_problems``).

Out: one ProbeResult — ok iff the probe exits 0 within ``probe_timeout``; the message is the last
lines of its stdout (of stderr when it failed and said why there); details: exit code, seconds.
Raised: nothing for a failing probe (a result); Interrupted passes through after the probe's
process group is killed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import tempfile
import time
from typing import Any

from snapagent.errors import CommandFailed
from snapagent.plugin.quiescer import DrillScene, ProbeResult, RestoreContext
from snapagent.util.runner import format_argv

LAST_LINES = 5  # of the probe's output, in the report
MAX_LINE = 300  # characters of one such line


def last_lines(text: str, n: int = LAST_LINES) -> list[str]:
    """Return the last ``n`` non-blank lines of ``text``, each cut to MAX_LINE characters."""
    lines = [ln.rstrip() for ln in text.splitlines() if ln.strip()]
    return [ln if len(ln) <= MAX_LINE else ln[:MAX_LINE] + "…" for ln in lines[-n:]]


def environment(job: str, scene: DrillScene) -> dict[str, str]:
    """Return the probe's environment variables (besides the runner's allow-listed ones)."""
    return {
        "SNAPAGENT_JOB": job,
        "SNAPAGENT_PHASE": "probe",
        "SNAPAGENT_DRY_RUN": "0",
        "SNAPAGENT_VOLUMES": "\n".join(live for live, _ in scene.volumes),
        "SNAPAGENT_BACKUP_ID": scene.backup_id,
        "SNAPAGENT_RESTORE_DIR": str(scene.dest),
        "SNAPAGENT_RESTORED_VOLUMES": "\n".join(str(p) for _, p in scene.volumes),
    }


PLACEHOLDER = re.compile(r"\{restored(?::(?P<volume>.+))?\}", re.S)


def placeholder_problems(argv: list[str], volumes: list[str]) -> list[str]:
    """Return one line per ``{restored:VOLUME}`` element of ``argv`` whose VOLUME is not one of
    ``volumes``."""
    out = []
    for a in argv:
        m = PLACEHOLDER.fullmatch(a)
        if m and m["volume"] is not None and m["volume"] not in volumes:
            out.append(f"{a!r} names no volume of the job (its volumes: {', '.join(map(repr, volumes))})")
    return out


def substitute(argv: list[str], scene: DrillScene) -> list[str]:
    """Return ``argv`` with each placeholder element replaced (module docstring); raise
    ValueError naming an element whose volume the backup does not hold."""
    where = {live: str(p) for live, p in scene.volumes}
    out = []
    for a in argv:
        m = PLACEHOLDER.fullmatch(a)
        if m is None:
            out.append(a)
        elif m["volume"] is None:
            out.append(str(scene.dest))
        elif m["volume"] in where:
            out.append(where[m["volume"]])
        else:
            raise ValueError(f"probe argument {a!r} names no volume of backup {scene.backup_id} "
                             f"(its volumes: {', '.join(map(repr, where))})")
    return out


def run_probe(name: str, argv: list[str], timeout: float, ctx: RestoreContext) -> ProbeResult:
    """Run ``argv`` as the probe ``name`` of a drill (``ctx.drill`` says where the copy is);
    return its result."""
    scene = ctx.drill
    assert scene is not None, "a probe runs in a drill"
    try:
        argv = substitute(argv, scene)
    except ValueError as e:
        return ProbeResult(name, False, {}, str(e))
    details: dict[str, Any] = {"argv": format_argv(argv)}
    ctx.say(f"probe {name}: {format_argv(argv)}")
    t0 = time.monotonic()
    with tempfile.TemporaryFile() as out:
        try:
            stream = ctx.runner.stream(argv, mutating=True, stdin=subprocess.DEVNULL, stdout=out,
                                       cwd=str(scene.dest), env=environment(scene.job, scene))
        except CommandFailed as e:  # not found, not executable
            return ProbeResult(name, False, details, f"probe could not start: {e}")
        proc = stream.proc
        assert proc is not None  # a drill never runs dry
        try:
            rc: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            if proc.poll() is None:  # timed out, or the drill was interrupted: the probe goes too
                _kill_group(proc)
        details["seconds"] = round(time.monotonic() - t0, 3)
        out.seek(0)
        stdout = out.read().decode(errors="replace")
    stderr = stream.stderr_text()
    stream.wait(ok_codes=range(-255, 256))  # reaped already: closes the stderr file
    said = last_lines(stdout)
    if rc is None:
        details["exit_code"] = None
        return ProbeResult(name, False, details, f"probe did not finish within {timeout:g}s; killed it"
                           + (": " + " / ".join(said) if said else ""))
    details["exit_code"] = rc
    if said:
        details["output"] = said
    if rc == 0:
        return ProbeResult(name, True, details, said[-1] if said else "probe exited 0")
    why = last_lines(stderr) or said
    if why:
        details["stderr" if last_lines(stderr) else "output"] = why
    return ProbeResult(name, False, details, f"probe failed (exit {rc})" + (": " + " / ".join(why[-2:]) if why else ""))


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the probe's process group (it runs in one of its own) and reap the probe."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


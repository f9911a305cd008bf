"""The one way tests run snapagent's CLI and write its config.

``snapagent(*args, config=…)`` runs ``python -m snapagent`` as a real process (what an operator or
cron does) and returns the CompletedProcess; ``in_process=True`` runs ``main()`` in this process
instead (the VM tier: under TCG every Python start costs seconds). ``write_config`` writes a
config whose state dir and ``local`` directory target live under the test's work dir.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HELPERS = ROOT / "tests" / "helpers"


def toml_str(s: object) -> str:
    """Return ``s`` as a TOML basic string (a JSON string is one)."""
    return json.dumps(str(s))


def write_config(workdir: Path, jobs: str, extra: str = "", agent: str = "") -> Path:
    """Write ``workdir/snapagent.toml`` (mode 0600, as the docs say: its commands run as root) with
    state dir ``workdir/state`` and a ``local`` directory target at ``workdir/backups``; ``agent``
    adds lines to ``[agent]``, ``extra`` adds sections before ``jobs``. Return its path."""
    (workdir / "state").mkdir(exist_ok=True)
    cfg = workdir / "snapagent.toml"
    cfg.write_text(
        f"[agent]\nstate_dir = {toml_str(workdir / 'state')}\n{agent}\n"
        f"[targets.local]\ntype = \"directory\"\npath = {toml_str(workdir / 'backups')}\n\n{extra}\n{jobs}\n"
    )
    cfg.chmod(0o600)
    return cfg


def snapagent(*args: str, config: Path | None = None, check: bool = False, env: dict | None = None,
              timeout: float = 300, in_process: bool = False, show: bool = False,
              trace: Path | None = None) -> subprocess.CompletedProcess:
    """Run the CLI with ``args`` (``-c config`` first when given); return the CompletedProcess (text).

    ``check``: raise AssertionError with both outputs when it does not exit 0. ``env``: extra
    environment (real process only). ``show``: print the command, its duration, exit code and
    stderr. ``trace``: log every program executed to that file (``tests/helpers/exectrace.py``).
    """
    argv = (["-c", str(config)] if config is not None else []) + list(args)
    t = time.monotonic()
    if in_process:
        assert env is None, "env needs a real process"
        r = _in_process(argv)
    else:
        e = dict(os.environ)
        e.update(env or {})
        start = [sys.executable, str(HELPERS / "exectrace.py"), str(trace), "--"] if trace else \
            [sys.executable, "-m", "snapagent"]
        r = subprocess.run([*start, *argv], capture_output=True, text=True, env=e, timeout=timeout)
    if show:
        print(f"[{time.monotonic() - t:6.1f}s] snapagent {' '.join(args)} -> {r.returncode}\n{r.stderr.rstrip()}",
              flush=True)
    if check and r.returncode != 0:
        raise AssertionError(f"snapagent {' '.join(args)} -> {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}")
    return r


def _in_process(argv: list[str]) -> subprocess.CompletedProcess:
    from snapagent.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code
    return subprocess.CompletedProcess(["snapagent", *argv], rc, out.getvalue(), err.getvalue())


#: One stderr log line (snapagent.cli.output): the local time with its offset (none in the
#: journal, which starts the line with the priority instead), the run's facts, the level, the message.
LOG_LINE = re.compile(r"(?:<(?P<priority>\d)>)?(?:(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d) )?"
                      r"(?:\[(?P<facts>[^\]]*)\] )?snapagent: (?P<level>error|warning|info|debug|internal error): "
                      r"(?P<message>.*)")


def log_lines(stderr: str, level: str | None = None) -> list[re.Match]:
    """Return the log lines of ``stderr`` (of ``level``: ``"error"``, ``"warning"``…) as
    matches of LOG_LINE (``m["message"]``, ``m["facts"]``…); continuation lines are skipped."""
    found = (LOG_LINE.fullmatch(ln) for ln in stderr.splitlines())
    return [m for m in found if m and (level is None or m["level"] == level)]


def last_line(r: subprocess.CompletedProcess) -> str:
    """Return the last line of stdout (where ``backup`` prints the new id)."""
    return r.stdout.strip().splitlines()[-1]

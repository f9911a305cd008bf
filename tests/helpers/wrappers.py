"""Stand-ins for external tools, installed through ``[agent] tools.<name>`` (every binary snapagent
runs is configurable): the real tool, slowed down or made to fail at a chosen moment, so a test
can kill the agent or break a step exactly where it wants."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def _script(path: Path, body: str) -> Path:
    path.write_text(f"#!{sys.executable}\nimport os, pathlib, sys, time\n{body}")
    path.chmod(0o755)
    return path


def slow_tool(path: Path, real: str, marker: Path, seconds: float, when: str | None = None) -> Path:
    """Write ``path``: touch ``marker``, sleep ``seconds``, then become ``real`` with the same args
    (its command line, which the agent marks, stays the same while it sleeps). With ``when``,
    only calls with that argument are slowed (e.g. ``--extract``)."""
    real = shutil.which(real, path="/usr/sbin:/usr/bin:/sbin:/bin") or real
    cond = f"if {when!r} in sys.argv[1:]:\n    " if when else ""
    return _script(path, f"{cond}pathlib.Path({str(marker)!r}).touch(); time.sleep({seconds})\n"
                         f"os.execv({real!r}, [{real!r}, *sys.argv[1:]])\n")


def failing_tool(path: Path, real: str, words: list[str], switch: Path) -> Path:
    """Write ``path``: while file ``switch`` exists, a call whose args contain ``words`` in order
    fails (exit 1, a message on stderr); everything else is ``real``."""
    real = shutil.which(real, path="/usr/sbin:/usr/bin:/sbin:/bin") or real
    n = len(words)
    return _script(path, f"words = {words!r}\nargs = sys.argv[1:]\n"
                         f"if pathlib.Path({str(switch)!r}).exists() and any(args[i:i + {n}] == words "
                         f"for i in range(len(args))):\n"
                         f"    sys.exit(print('injected failure: ' + ' '.join(words), file=sys.stderr) or 1)\n"
                         f"os.execv({real!r}, [{real!r}, *args])\n")

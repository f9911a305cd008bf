"""Run snapagent's CLI with a Python audit hook that logs every program it (or a forked child of
it) executes: ``python tests/helpers/exectrace.py LOG -- ARGS...``. Each line of LOG is
``<event>\\t<program>\\t<argv as JSON>``; tests assert from it that no shell ever ran."""

import json
import os
import sys

EVENTS = ("subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.system")
SHELLS = ("sh", "bash", "dash", "zsh", "ksh", "busybox")


def main() -> int:
    log, rest = sys.argv[1], sys.argv[3:]

    def hook(event, args):
        if event in EVENTS:
            prog = args[0] if args else "?"
            argv = list(args[1]) if len(args) > 1 and isinstance(args[1], (list, tuple)) else [str(a) for a in args[1:2]]
            with open(log, "a") as f:
                f.write(f"{event}\t{os.fsdecode(prog) if isinstance(prog, (str, bytes)) else prog}\t"
                        f"{json.dumps([os.fsdecode(a) if isinstance(a, (str, bytes)) else str(a) for a in argv])}\n")

    sys.addaudithook(hook)
    from snapagent.cli.main import main as cli

    return cli(rest)


def shells(log_text: str) -> list[str]:
    """Return the lines of a trace LOG that ran a shell."""
    out = []
    for line in log_text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and os.path.basename(parts[1]) in SHELLS:
            out.append(line)
    return out


if __name__ == "__main__":
    sys.exit(main())

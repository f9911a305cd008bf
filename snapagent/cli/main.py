"""Command line: ``snapagent [-c CONFIG] [--json] [-v|-q] COMMAND``.

``main()`` is the only place that turns errors into exit codes: 0 ok, 1 operation failed,
2 usage or config error. Human output goes to stdout; progress and logs to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Sequence

from snapagent import __version__
from snapagent.cli import commands
from snapagent.errors import EXIT_FAILED, EXIT_USAGE, Interrupted, SnapagentError


class Output:
    """Where a command writes: ``data`` (stdout; JSON with --json) and ``say`` (stderr progress)."""

    def __init__(self, json_mode: bool, quiet: bool):
        self.json = json_mode
        self.quiet = quiet

    def say(self, line: str) -> None:
        if not self.quiet:
            print(line, file=sys.stderr, flush=True)

    def warn(self, line: str) -> None:
        print(f"snapagent: warning: {line}", file=sys.stderr, flush=True)

    def line(self, text: str = "") -> None:
        print(text, flush=True)

    def emit(self, obj: Any) -> None:
        print(json.dumps(obj, indent=2, sort_keys=True, default=str), flush=True)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # exit 2 with one clear line, as for every usage error
        self.print_usage(sys.stderr)
        print(f"snapagent: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of every command."""
    def common_options(suppress: bool) -> argparse.ArgumentParser:
        # Options accepted before and after COMMAND; after it, unset ones must not override.
        d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
        c = argparse.ArgumentParser(add_help=False)
        c.add_argument("-c", "--config", default=d(None),
                       help="config file (default: $SNAPAGENT_CONFIG or /etc/snapagent/snapagent.toml)")
        c.add_argument("--json", action="store_true", default=d(False), help="machine-readable output")
        g = c.add_mutually_exclusive_group()
        g.add_argument("-v", "--verbose", action="count", default=d(0), help="more logging (-vv: every command run)")
        g.add_argument("-q", "--quiet", action="store_true", default=d(False), help="only errors")
        return c

    top, common = common_options(False), common_options(True)

    p = _Parser(prog="snapagent", parents=[top],
                description="Hot, application-consistent backups of databases by snapshotting their volumes.")
    p.add_argument("--version", action="version", version=f"snapagent {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def cmd(name: str, help: str, fn):
        sp = sub.add_parser(name, help=help, description=help, parents=[common])
        sp.set_defaults(func=fn)
        return sp

    sp = cmd("backup", "run a job: quiesce, snapshot, export, store; prints the new backup id", commands.do_backup)
    sp.add_argument("job")
    sp.add_argument("--dry-run", action="store_true", help="run preflight and read-only commands; print what would change")
    sp = cmd("list", "list stored backups", commands.do_list)
    sp.add_argument("job", nargs="?")
    sp = cmd("show", "show one backup's manifest", commands.do_show)
    sp.add_argument("id")
    sp = cmd("verify", "recompute every artifact's size and checksum", commands.do_verify)
    sp.add_argument("id")
    sp = cmd("restore", "verify, then restore a backup into an empty directory", commands.do_restore)
    sp.add_argument("id")
    sp.add_argument("--to", required=True, dest="dest", metavar="DEST", help="destination directory (created; must be empty); for a ZFS send backup, the name of a new dataset (e.g. tank/restored)")
    sp.add_argument("--force", action="store_true", help="move DEST's current content aside to DEST.pre-restore-<time>")
    sp.add_argument("--allow-special", action="store_true", help="restore device/FIFO members and keep setuid/setgid bits")
    sp = cmd("drill", "restore into scratch space and run the databases' own integrity checks", commands.do_drill)
    sp.add_argument("id")
    sp.add_argument("--keep", action="store_true", help="keep the scratch copy and print where it is")
    sp = cmd("cleanup", "release what killed runs left behind (snapshots, mounts, temp files)", commands.do_cleanup)
    sp.add_argument("--dry-run", action="store_true", help="print what would be released")
    sp = cmd("config", "configuration commands", None)
    csub = sp.add_subparsers(dest="config_command", metavar="SUBCOMMAND", parser_class=_Parser)
    csub.required = True
    cc = csub.add_parser("check", help="validate the configuration and the plugins it names", parents=[common])
    cc.set_defaults(func=commands.do_config_check)
    cmd("plugins", "list the drivers, quiescers and targets found, and where from", commands.do_plugins)
    sp = cmd("schedule", "write, remove or show the systemd timers (or the cron file) of the jobs' schedules",
             commands.do_schedule)
    sp.add_argument("action", choices=["install", "remove", "show"])
    sp.add_argument("--root", default="/", metavar="DIR",
                    help="install under DIR/etc/systemd/system or DIR/etc/cron.d (default: /)")
    sp.add_argument("--dry-run", action="store_true", help="print what would be written or removed; write nothing")
    sp.add_argument("--cron", action="store_true", help="DIR/etc/cron.d/snapagent instead of systemd timers")
    sp.add_argument("--randomized-delay", default="0", metavar="DURATION",
                    help="timers: RandomizedDelaySec, spreads the start of many hosts (e.g. 5m; default 0)")
    return p


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, stream=sys.stderr, format="snapagent: %(levelname)s: %(message)s")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return the exit code."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    out = Output(args.json, args.quiet)
    try:
        return args.func(args, out) or 0
    except (SnapagentError, Interrupted) as e:
        print(f"snapagent: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("snapagent: error: interrupted", file=sys.stderr)
        return EXIT_FAILED
    except OSError as e:  # a system error no step turned into its own message: still one line
        where = f": {e.filename}" if e.filename else ""
        print(f"snapagent: error: {e.strerror or e}{where}", file=sys.stderr)
        logging.getLogger("snapagent").debug("traceback", exc_info=True)
        return EXIT_FAILED
    except Exception as e:  # noqa: BLE001 - a bug: one line for the operator, the traceback with -vv
        print(f"snapagent: internal error: {type(e).__name__}: {e} (run with -vv for the traceback)", file=sys.stderr)
        logging.getLogger("snapagent").debug("traceback", exc_info=True)
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

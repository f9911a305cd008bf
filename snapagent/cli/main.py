"""Command line: ``snapagent [-c CONFIG] [--json] [--log-format text|json] [-v|-q] COMMAND``.

``main()`` is the only place that turns errors into exit codes: 0 ok, 1 operation failed,
2 usage or config error. With ``--json`` an error is also printed on stdout as
``{"error": …, "details": […], "exit_code": N}`` (usage, config and operation errors alike). Human output goes to stdout; progress and logs to stderr, as
``snapagent.cli.output`` says (terminal, journal, cron; text or JSON).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import types
from typing import Sequence

from snapagent import __version__, signals
from snapagent.cli import commands, output
from snapagent.cli.output import Output
from snapagent.errors import EXIT_FAILED, EXIT_USAGE, Interrupted, SnapagentError
from snapagent.util import logfields, progress

EXIT_UNKNOWN = 3  # Nagios UNKNOWN, `check` only
LOG_FORMATS = ("text", "json")


def _skip_pydantic_plugin_scan() -> None:
    """Tell pydantic there are no pydantic plugins before it looks: its loader imports
    importlib.metadata and reads every installed distribution's entry points when it builds the
    first model (a tenth of a read command's start-up budget) to find observability plugins
    snapagent does not use. A loader pydantic already imported, or PYDANTIC_DISABLE_PLUGINS set
    explicitly, leaves pydantic's own loader in charge. Guarded by tests/unit/test_startup.py."""
    name = "pydantic.plugin._loader"
    if name in sys.modules or "PYDANTIC_DISABLE_PLUGINS" in os.environ:
        return
    loader = types.ModuleType(name, "snapagent: no pydantic plugins (see snapagent.cli.main)")
    loader.get_plugins = lambda: ()
    sys.modules[name] = loader


_skip_pydantic_plugin_scan()


class _UsageExit(SystemExit):
    """A command line argparse refused: exit 2, with the message (for ``--json``)."""

    def __init__(self, message: str):
        super().__init__(EXIT_USAGE)
        self.message = message


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # exit 2 with one clear line, as for every usage error
        if not output.json_logs():
            self.print_usage(sys.stderr)
        _error(message)
        raise _UsageExit(message)


def _identity(sp: argparse.ArgumentParser, more: str) -> None:
    sp.add_argument("--identity", metavar="FILE",
                    help="the age identity (0600) of a backup stored with encryption = \"age\"" + more)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of every command."""
    def common_options(suppress: bool) -> argparse.ArgumentParser:
        # Options accepted before and after COMMAND; after it, unset ones must not override.
        d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
        c = argparse.ArgumentParser(add_help=False)
        c.add_argument("-c", "--config", default=d(None),
                       help="config file (default: $SNAPAGENT_CONFIG or /etc/snapagent/snapagent.toml)")
        c.add_argument("--json", action="store_true", default=d(False), help="machine-readable output")
        c.add_argument("--log-format", choices=LOG_FORMATS, default=d("text"),
                       help="stderr log lines as text (default) or one JSON object per line")
        g = c.add_mutually_exclusive_group()
        g.add_argument("-v", "--verbose", action="count", default=d(0), help="each step with its duration (-vv: also every command and database statement)")
        g.add_argument("-q", "--quiet", action="store_true", default=d(False), help="only errors")
        return c

    top, common = common_options(False), common_options(True)

    p = _Parser(prog="snapagent", parents=[top],
                description="Hot, application-consistent backups of databases by snapshotting their volumes.")
    p.add_argument("--version", action="version", version=f"snapagent {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    def from_target(sp) -> None:
        sp.add_argument("--from", dest="source", metavar="TARGET",
                        help="read the backup from this target (default: the first target with a good copy)")

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
    _identity(sp, "; with it, encrypted artifacts are also decrypted and their plaintext checked")
    from_target(sp)
    sp = cmd("restore", "check DEST, verify, then restore a backup into a new or empty directory", commands.do_restore)
    sp.add_argument("id")
    _identity(sp, "")
    sp.add_argument("--to", required=True, dest="dest", metavar="DEST", help="destination directory (created in an existing parent, or empty); checked before anything is "
                    "read; for a ZFS send backup, the name of a new dataset (e.g. tank/restored)")
    sp.add_argument("--force", action="store_true", help="move DEST's current content aside to DEST.pre-restore-<time>")
    sp.add_argument("--allow-special", action="store_true", help="restore device/FIFO members and keep setuid/setgid bits")
    sp.add_argument("--path", action="append", default=[], dest="paths", metavar="REL",
                    help="restore only this file or directory (relative to the volume root; LABEL/REL with "
                         "several volumes); repeatable; tar exports only")
    _no_space_check(sp, "DEST")
    from_target(sp)
    sp = cmd("drill", "restore into scratch space and run the databases' own integrity checks", commands.do_drill)
    sp.add_argument("id")
    sp.add_argument("--keep", action="store_true", help="keep the scratch copy and print where it is")
    _no_space_check(sp, "the scratch space")
    _identity(sp, "")
    from_target(sp)
    sp = cmd("copy", "copy a stored backup (and the chain links it needs) to another target, verified",
             commands.do_copy)
    sp.add_argument("id")
    sp.add_argument("--to", required=True, dest="target", metavar="TARGET", help="the target to copy to")
    from_target(sp)
    sp = cmd("prune", "apply each job's retention: remove the backups its rules no longer keep", commands.do_prune)
    sp.add_argument("job", nargs="?", help="only this job (default: every job)")
    sp.add_argument("--dry-run", action="store_true", help="print what would be kept and removed; remove nothing")
    sp = cmd("cleanup", "release what killed runs left behind (snapshots, mounts, temp files)", commands.do_cleanup)
    sp.add_argument("--dry-run", action="store_true", help="print what would be released")
    sp = cmd("config", "configuration commands", None)
    csub = sp.add_subparsers(dest="config_command", metavar="SUBCOMMAND", parser_class=_Parser)
    csub.required = True
    cc = csub.add_parser("check", help="validate the configuration and the plugins it names", parents=[common])
    cc.add_argument("--connect", action="store_true",
                    help="also run each job's preflight as a backup would: tools, volumes, database connections and "
                         "grants, target (takes nothing; exit 1 when only the host or a server is wrong)")
    cc.set_defaults(func=commands.do_config_check)
    sp = cmd("check", "Nagios/Icinga plugin: is the newest backup recent and did the last run succeed? "
                      "(exit 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN)", commands.do_check)
    sp.add_argument("job", nargs="?", help="the job to check (default: every job; the worst state counts)")
    sp.add_argument("--max-age", metavar="DURATION", help="CRITICAL when the newest backup is older "
                    "(default: the job's check_max_age, else twice its schedule's period, else 25h)")
    sp.add_argument("--warn-age", metavar="DURATION", help="WARNING when the newest backup is older")
    sp = cmd("status", "per job: last run, last success, backups per target, next scheduled run", commands.do_status)
    sp.add_argument("job", nargs="?", help="only this job (default: every job)")
    cmd("plugins", "list the drivers, quiescers and targets found, and where from", commands.do_plugins)
    sp = cmd("schedule", "write, remove or show the systemd timers (or the cron file) of the jobs' schedules",
             commands.do_schedule)
    sp.add_argument("action", choices=["install", "remove", "show"])
    sp.add_argument("--root", default="/", metavar="DIR",
                    help="install under DIR/etc/systemd/system or DIR/etc/cron.d (default: /)")
    sp.add_argument("--dry-run", action="store_true", help="print what would be written or removed; write nothing")
    sp.add_argument("--cron", action="store_true", help="DIR/etc/cron.d/snapagent instead of systemd timers")
    sp.add_argument("--templates", action="store_true",
                    help="install/show only the template units (backup service, weekly drill service and timer), "
                         "without reading the config: what scripts/install.sh writes")
    sp.add_argument("--randomized-delay", default="0", metavar="DURATION",
                    help="timers: RandomizedDelaySec, spreads the start of many hosts (e.g. 5m; default 0)")
    return p


def _no_space_check(sp, where: str) -> None:
    sp.add_argument("--no-space-check", dest="space_check", action="store_false",
                    help=f"do not refuse when {where} has less free space than the backup's uncompressed size "
                         "(e.g. a compressing filesystem)")


def _error(message: str, tag: str = "error") -> None:
    logging.getLogger("snapagent").error(message, extra={"tag": tag})


def _log_format(argv: Sequence[str]) -> str:
    """Return the ``--log-format`` that ``argv`` asks for, read before parsing so that usage
    errors are written in it too (the parsed value is authoritative afterwards)."""
    for i, a in enumerate(argv):
        if a == "--":
            break
        if a.startswith("--log-format="):
            return a.split("=", 1)[1]
        if a == "--log-format" and i + 1 < len(argv):
            return argv[i + 1]
    return "text"


def _json_flag(argv: Sequence[str]) -> bool:
    """Return whether ``argv`` asks for ``--json`` (read before parsing, for usage errors)."""
    for a in argv:
        if a == "--":
            return False
        if a == "--json":
            return True
    return False


def _json_error(message: str, code: int) -> None:
    """With ``--json``, a failure is data too: print it on stdout as one JSON object,
    ``{"error": first line, "details": [further lines], "exit_code": code}`` (``details`` only
    when the message has more lines, e.g. every problem ``config check`` found)."""
    first, *rest = message.splitlines() or [""]
    obj: dict = {"error": first, "exit_code": code}
    if rest:
        obj["details"] = [ln.strip() for ln in rest if ln.strip()]
    print(json.dumps(obj, indent=2), flush=True)


def _command_word(argv: Sequence[str]) -> str | None:
    """Return the COMMAND word of ``argv`` (skipping the global options), or None."""
    it = iter(argv)
    for a in it:
        if a in ("-c", "--config"):
            next(it, None)
        elif not a.startswith("-"):
            return a
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logfields.clear()
    signals.remember_interrupts()
    output.setup(log_format=_log_format(argv))
    try:
        args = build_parser().parse_args(argv)
    except _UsageExit as e:
        if _command_word(argv) == "check":
            # a monitoring system reads 2 as CRITICAL: a bad check command line is UNKNOWN
            if _json_flag(argv):
                print(json.dumps({"state": "UNKNOWN", "exit_code": EXIT_UNKNOWN, "output": "SNAPAGENT UNKNOWN - "
                                  "invalid arguments", "error": e.message, "jobs": []}, indent=2), flush=True)
            else:
                print("SNAPAGENT UNKNOWN - invalid arguments (see the usage message on stderr)", flush=True)
            raise SystemExit(EXIT_UNKNOWN) from None
        if _json_flag(argv):
            _json_error(e.message, EXIT_USAGE)
        raise
    output.setup(args.verbose, args.quiet, args.log_format)
    out = Output(args.json, args.quiet)
    try:
        return args.func(args, out) or 0
    except (SnapagentError, Interrupted) as e:
        return _failed(args, str(e), e.exit_code)
    except KeyboardInterrupt:
        return _failed(args, "interrupted", EXIT_FAILED)
    except OSError as e:  # a system error no step turned into its own message: still one line
        where = f": {e.filename}" if e.filename else ""
        logging.getLogger("snapagent").debug("traceback", exc_info=True)
        return _failed(args, f"{e.strerror or e}{where}", EXIT_FAILED)
    except Exception as e:  # noqa: BLE001 - a bug: one line for the operator, the traceback with -vv
        logging.getLogger("snapagent").debug("traceback", exc_info=True)
        return _failed(args, f"{type(e).__name__}: {e} (run with -vv for the traceback)", EXIT_FAILED,
                       tag="internal error")
    finally:
        progress.install(None)


def _failed(args: argparse.Namespace, message: str, code: int, tag: str = "error") -> int:
    """Report a failed command: the error line on stderr and, with ``--json``, the error object
    on stdout; return ``code``."""
    _error(message, tag)
    if args.json:
        _json_error(message if tag == "error" else f"{tag}: {message}", code)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

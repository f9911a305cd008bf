"""Where the CLI writes, and how stderr looks to whoever reads it.

stdout carries data (the backup id, listings; JSON with ``--json``). stderr carries log lines,
which go through ``logging`` (logger ``snapagent`` and its children; third-party plugins' loggers
alike) and the one handler ``setup`` puts on the root logger. Every text line reads

    2026-12-02T16:55:51.234+01:00 [app app-20261202T155550Z] snapagent: info: snapshot …

the time (local, with its offset, to the millisecond: the clock cron and the operator use), the
run's facts of ``logfields`` in brackets once known (the job, then the backup id; none for a
command that has no job, e.g. ``list``), the level (``error``, ``warning``, ``info``, ``debug``;
``internal error`` for a bug), the message. What is shown:

- default: warnings and errors; ``say`` lines (progress chatter: "snapshot …", "exported …", INFO
  on ``snapagent.say``) too where someone watches: a terminal, the journal. ``-q``: errors only.
- ``-v``: every INFO record: each step of the run with its duration (``step …``), what a
  quiescer chose (``mode auto chose …``), cleanup.
- ``-vv``: DEBUG too: every command run (its argv as a shell line, secrets redacted, exit code,
  duration) and every statement sent to a database (``snapagent.util.sqllog``).
- Libraries' own records (sh, psycopg, pymysql, urllib3, …) below WARNING are never created,
  whatever ``-v`` says: they describe the libraries' internals, not the run (``QUIET_LIBRARIES``).
- stderr is the journal (``$JOURNAL_STREAM`` is ``dev:ino`` of stderr, sd-daemon(3)): the journal
  stamps each line itself, so no time; every line starts with its syslog priority ``<3>`` error,
  ``<4>`` warning, ``<6>`` info, ``<7>`` debug.
- ``--log-format json``: one JSON object per line (time in UTC, level, logger, message, and the
  job / backup id when known) for log shippers; it wins over the journal prefixes.
- a progress bar (tqdm, imported only then) for long streams when stderr is a terminal, in the
  text format, without ``-q``; where say lines are shown but no bar can be, progress lines
  (``LogTask``: one a minute, one at the end).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from datetime import datetime, timezone
from typing import IO, Any, Iterable, Mapping

from snapagent.util import logfields, progress
from snapagent.util.durations import format_duration

log = logging.getLogger("snapagent")
say_log = logging.getLogger("snapagent.say")
_handler: logging.Handler | None = None
#: Libraries whose records below WARNING are never created (sh alone wrote 192 of the 222 lines
#: of one -vv backup: its own threads and buffers). What they fail with reaches the run as
#: exceptions, which the run words itself.
QUIET_LIBRARIES = ("sh", "psycopg", "pymysql", "urllib3", "asyncio", "filelock", "tqdm", "prometheus_client")
_PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


class Output:
    """Where a command writes: ``data`` (stdout; JSON with --json) and ``say`` (stderr progress)."""

    def __init__(self, json_mode: bool, quiet: bool):
        self.json = json_mode
        self.quiet = quiet

    def say(self, line: str) -> None:
        say_log.info(line)

    def note(self, line: str) -> None:
        """A short answer that is not data (``no backups``): on stderr wherever it runs, unless -q."""
        if not self.quiet:
            print(line, file=sys.stderr, flush=True)

    def warn(self, line: str) -> None:
        log.warning(line, extra={"tag": "warning"})

    def line(self, text: str = "") -> None:
        print(text, flush=True)

    def lines(self, texts: Iterable[str]) -> None:
        """Print many lines with one write (``list`` of 10,000 backups: not 10,000 flushes)."""
        sys.stdout.write("".join(f"{t}\n" for t in texts))
        sys.stdout.flush()

    def emit(self, obj: Any) -> None:
        print(json.dumps(obj, indent=2, sort_keys=True, default=str), flush=True)


def is_journal(stream: IO[str], environ: Mapping[str, str] = os.environ) -> bool:
    """Return whether ``stream`` is the journal: ``$JOURNAL_STREAM`` names its device and inode."""
    want = environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(x) for x in want.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):  # unset, malformed, or not a real file (StringIO)
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


def _priority(level: int) -> int:
    return _PRIORITY.get(level, 6 if level < logging.WARNING else 3)


class _Shown(logging.Filter):
    """What stderr shows: ``say`` lines from ``say_level``, every other record from ``level``."""

    def __init__(self, level: int, say_level: int):
        super().__init__()
        self.level, self.say_level = level, say_level

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= (self.say_level if record.name == say_log.name else self.level)


class TextFormatter(logging.Formatter):
    """``TIME [JOB BACKUP_ID] snapagent: LEVEL: message`` (the module docstring); ``LEVEL`` is the
    record's ``tag`` when it has one (``internal error``), else its level in lower case. With
    ``journal``: no time (the journal stamps each line) and every line of the message prefixed
    with its syslog priority. Lines after a message's first are indented continuation lines."""

    def __init__(self, journal: bool = False):
        super().__init__("%(message)s")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        level = getattr(record, "tag", None) or record.levelname.lower()
        facts = " ".join(logfields.FIELDS[k] for k in ("job", "backup_id") if k in logfields.FIELDS)
        head = f"[{facts}] snapagent: {level}: " if facts else f"snapagent: {level}: "
        if self.journal:
            prefix = f"<{_priority(record.levelno)}>"
            return "\n".join(prefix + ln for ln in (head + text).split("\n"))
        return f"{stamp(record.created)} {head}{text}"


def stamp(created: float) -> str:
    """Return the time ``created`` (epoch seconds) as ISO 8601 in local time with its offset,
    to the millisecond (``2026-12-02T16:55:51.234+01:00``)."""
    return datetime.fromtimestamp(created).astimezone().isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (ISO 8601, UTC), level, logger, message, the facts of
    ``logfields`` (job, backup_id) and the traceback when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            **logfields.FIELDS,
        }
        if record.exc_info:
            obj["traceback"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str)


class _TqdmTask:
    """A tqdm bar in bytes; an estimated total that turns out too small is dropped (no ETA then)."""

    def __init__(self, label: str, total: int | None, stream: IO[str]):
        from tqdm import tqdm  # lazily: read commands never pay for it

        self.bar = tqdm(total=total or None, desc=label, unit="iB", unit_scale=True, unit_divisor=1024,
                        file=stream, dynamic_ncols=True, mininterval=0.5, leave=True)

    def update(self, n: int) -> None:
        bar = self.bar
        if bar.total and bar.n + n > bar.total:
            bar.total = None
        bar.update(n)

    def close(self) -> None:
        self.bar.close()


class LogTask:
    """Progress as log lines where no bar can be drawn (the journal, ``-v`` off a terminal): one
    every ``every`` seconds with bytes, rate and (with a total) percentage and ETA; one at the end."""

    every = 60.0

    def __init__(self, label: str, total: int | None, clock=time.monotonic):
        self.label, self.total, self.n, self.clock = label, total, 0, clock
        self.start = self.last = clock()

    def update(self, n: int) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.every:
            self.last = now
            say_log.info(self.line(now))

    def close(self) -> None:
        say_log.info(self.line(self.clock(), done=True))

    def line(self, now: float, done: bool = False) -> str:
        took = max(now - self.start, 1e-3)
        rate = f"{human_size(self.n / took)}/s"
        if done:
            return f"{self.label}: {human_size(self.n)} in {format_duration(took)} ({rate})"
        text = f"{self.label}: {human_size(self.n)}"
        if self.total and self.n <= self.total:
            eta = (self.total - self.n) / max(self.n / took, 1e-9)
            text += f" of {human_size(self.total)} ({100 * self.n / self.total:.0f}%), ETA {format_duration(eta)}"
        return f"{text}, {rate}"


def handover_lines(entry: Mapping[str, Any]) -> list[str]:
    """Return the text block of one restored database (an entry of ``restore``'s ``databases``):
    where it is, then its hand-over — owner, port and socket, the start/check/stop commands
    shell-quoted (argv lists, pasteable), where putting it in place is documented, notes."""
    import shlex

    h = entry.get("handover")
    if h is None:
        if entry.get("notes"):  # an older plugin's notes
            return [f"  {entry['type']} database: {entry.get('restored')}",
                    *(f"    {k}: {v}" for k, v in entry["notes"].items())]
        return [f"  {entry['type']}: no database hand-over — snapagent restored the files but knows no database in "
                "them to start or check (what the quiescer recorded: `snapagent show ID --json`)"]
    lines = [f"  {entry['type']} database: {entry['restored']}"]
    if h.get("files"):
        lines.append(f"    files:    {'  '.join(h['files'])}")
    if h.get("owner"):
        lines.append(f"    owner:    {h['owner']}")
    if h.get("port") is not None or h.get("socket"):
        where = [f"port {h['port']} on 127.0.0.1 (free now)" if h.get("port") is not None else "",
                 f"socket {h['socket']}" if h.get("socket") else ""]
        lines.append(f"    listens:  {', '.join(w for w in where if w)}")
    for key in ("start", "check", "stop"):
        if h.get(key):
            lines.append(f"    {key}:{' ' * (9 - len(key))}{shlex.join(h[key])}")
    if h.get("put_in_place"):
        lines.append(f"    in place: {h['put_in_place']}")
    lines += [f"    note:     {n}" for n in h.get("notes", [])]
    return lines


def human_size(n: float) -> str:
    """Return ``n`` bytes as ``512 B``, ``1.5 KiB`` … ``2.0 TiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def setup(verbose: int = 0, quiet: bool = False, log_format: str = "text", stream: IO[str] | None = None,
          environ: Mapping[str, str] = os.environ) -> None:
    """Send every log line of this process to ``stream`` (default: the current stderr) as the
    module docstring says; install or remove the progress bar."""
    stream = stream if stream is not None else sys.stderr
    journal = is_journal(stream, environ)
    tty = _isatty(stream)
    global _handler
    root = logging.getLogger()  # the root: a third-party plugin's own logger is formatted alike
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = logging.StreamHandler(stream)
    _handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter(journal))
    root.addHandler(_handler)
    level = logging.ERROR if quiet else {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    chatter = not quiet and (verbose > 0 or tty or journal)
    # The loggers pass INFO on whatever is shown: the run's log tail (a failure ping's body) keeps
    # the progress lines even where stderr shows only warnings. The handler decides what is shown.
    root.setLevel(min(level, logging.INFO))
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.WARNING)
    say_log.setLevel(logging.NOTSET)
    _handler.addFilter(_Shown(level, logging.INFO if chatter else logging.WARNING))
    show_bar = tty and not quiet and log_format == "text"
    if show_bar:
        progress.install(lambda label, total: _TqdmTask(label, total, stream))
    else:
        progress.install(LogTask if chatter else None)


def json_logs() -> bool:
    """Return whether log lines are JSON now (argparse's usage errors then skip the usage text)."""
    return _handler is not None and isinstance(_handler.formatter, JsonFormatter)


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False

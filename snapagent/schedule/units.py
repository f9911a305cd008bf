"""The text of what ``snapagent schedule install`` writes: the template ``snapagent@.service``, one
``snapagent@JOB.timer`` per scheduled job, the drill templates ``snapagent-drill@.service`` +
``snapagent-drill@.timer`` (weekly; enabled per job as ``snapagent-drill@JOB.timer``), or the
``/etc/cron.d/snapagent`` file.

Pure functions: in the jobs' names and schedules, the absolute path of the ``snapagent`` entry point
and the config path (None: the default one); out the file contents. Raise ValueError for what
cannot be written safely (a path systemd or cron cannot quote, a schedule cron cannot express).
Every file starts with ``MARK``: ``schedule remove`` deletes only files that carry it.
"""

from __future__ import annotations

import re

from snapagent.schedule import calendar
from snapagent.schedule.calendar import Item

MARK = "# Written by `snapagent schedule install`; `snapagent schedule remove` deletes it. Do not edit:"
SERVICE = "snapagent@.service"
DRILL_SERVICE = "snapagent-drill@.service"
DRILL_TIMER = "snapagent-drill@.timer"
#: the units that do not depend on the config's jobs (the package install writes them too)
TEMPLATES = (SERVICE, DRILL_SERVICE, DRILL_TIMER)
DRILL_SCHEDULE = "Sun *-*-* 05:30:00"
CRON_PATH = "etc/cron.d/snapagent"
UNIT_DIR = "etc/systemd/system"


def timer_name(job: str) -> str:
    """The timer unit of ``job`` (job names are unit-name safe: letters, digits, ``_ . -``)."""
    return f"snapagent@{job}.timer"


def _exec_arg(arg: str) -> str:
    """Quote one ExecStart= argument for systemd (specifiers ``%`` and variables ``$`` escaped)."""
    if any(not c.isprintable() for c in arg):
        raise ValueError(f"path {arg!r} contains control characters")
    arg = arg.replace("%", "%%").replace("$", "$$")
    if re.fullmatch(r"[A-Za-z0-9/_.:+,=@%$-]+", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _command(exe: str, config: str | None, *args: str) -> list[str]:
    return [exe] + (["-c", config] if config else []) + ["-q", *args]


_HARDENING = """# Hardening that fits a root agent which mounts, snapshots and talks to databases:
# root without new privileges: it never needs a setuid program (it drops to database users itself).
NoNewPrivileges=yes
# It reads /proc and /sys but never writes kernel tunables or cgroups.
ProtectKernelTunables=yes
ProtectControlGroups=yes
ProtectHostname=yes
# No realtime scheduling, no personality changes, never creates setuid/setgid files (restores,
# which may, are run by hand, not by this unit), native system calls only.
RestrictRealtime=yes
LockPersonality=yes
RestrictSUIDSGID=yes
SystemCallArchitectures=native
# Sockets: unix (databases), IP (databases on TCP, ping_url), netlink (LVM/udev).
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
# Files it creates are private (state, journals, backups).
UMask=0077
# Deliberately NOT set, each would break a backup:
# ProtectSystem=/ProtectHome= (volumes, targets and mount points may be anywhere, /home included);
# PrivateTmp= (database sockets and LVM snapshot mounts live in /tmp; a private /tmp hides them
# from the databases and from `snapagent cleanup` run by hand); PrivateDevices=/DevicePolicy=/
# ProtectClock= (needs /dev/mapper, /dev/zfs, loop devices); ProtectKernelModules= (lvcreate loads
# dm-snapshot, zfs may load its module); MemoryDenyWriteExecute= (database client libraries).
"""


def _service(head: str, description: str, exe: str, config: str | None, command: str, priority: str) -> str:
    """Return a oneshot service running ``exe [-c config] -q COMMAND`` (``command`` already quoted,
    may hold ``%i``), with ``cleanup`` after it however it ended, and the shared hardening."""
    start = " ".join(_exec_arg(a) for a in _command(exe, config)) + " " + command
    stop = " ".join(_exec_arg(a) for a in _command(exe, config, "cleanup"))
    return f"""{MARK} edit the config and re-run install.
{head}[Unit]
Description={description}
Documentation=file:///usr/local/share/doc/snapagent/docs/runbook.md
After=local-fs.target network-online.target
Wants=network-online.target

[Service]
Type=oneshot
ExecStart={start}
# Runs however the run ended (success, failure, stop, kill): releases what a killed run left
# (snapshots, mounts, database locks, a drill's scratch copy and servers); a clean run leaves
# nothing, so it is a no-op then.
ExecStopPost={stop}
# On stop the agent undoes its steps (unfreeze, release locks, delete snapshots): give it time.
# mixed: SIGTERM to the agent only, so it can stop its children in order; SIGKILL to all at the end.
TimeoutStopSec=120
KillMode=mixed
{priority}{_HARDENING}"""


def service_unit(exe: str, config: str | None) -> str:
    """Return the template service: ``systemctl start snapagent@JOB.service`` runs one backup."""
    return _service("# One backup of job %i; its timer is snapagent@%i.timer. Hardening: docs/runbook.md, \"Schedule\".\n",
                    "snapagent backup of job %i", exe, config, "backup %i",
                    "Nice=10\nIOSchedulingClass=best-effort\nIOSchedulingPriority=7\n")


def drill_service_unit(exe: str, config: str | None) -> str:
    """Return the drill template: ``systemctl start snapagent-drill@JOB.service`` restores the newest
    backup of JOB into scratch space and runs its databases' checks; a failed drill fails the unit."""
    return _service("# The restore drill of job %i (its newest backup); its timer is snapagent-drill@%i.timer. The\n"
                    "# report (PASS/FAIL per database) is in `journalctl -u snapagent-drill@%i`; a failed drill\n"
                    "# fails this unit.\n",
                    "snapagent restore drill of job %i", exe, config, "drill %i@latest",
                    "Nice=19\nIOSchedulingClass=idle\n")


def drill_timer_unit() -> str:
    """Return the drill timer template: weekly, for the job named by its instance
    (``systemctl enable --now snapagent-drill@JOB.timer``)."""
    return f"""{MARK} to drill at other times: systemctl edit snapagent-drill@JOB.timer
[Unit]
Description=snapagent weekly restore drill of job %i

[Timer]
OnCalendar={calendar.validate(DRILL_SCHEDULE)}
# Spread over an hour, so that the drills of several jobs (and hosts) do not all start at once.
RandomizedDelaySec=3600
# A drill missed while the machine was off is started at the next boot.
Persistent=true

[Install]
WantedBy=timers.target
"""


def templates(exe: str, config: str | None) -> dict[str, str]:
    """Return the units that do not depend on the jobs: file name → content."""
    return {SERVICE: service_unit(exe, config), DRILL_SERVICE: drill_service_unit(exe, config),
            DRILL_TIMER: drill_timer_unit()}


def timer_unit(job: str, expr: str, randomized_delay: int = 0) -> str:
    """Return ``snapagent@JOB.timer`` for ``job`` scheduled at OnCalendar ``expr``."""
    norm = calendar.validate(expr)
    delay = f"RandomizedDelaySec={randomized_delay}\n" if randomized_delay else ""
    return f"""{MARK} edit jobs.{job}.schedule and re-run install.
[Unit]
Description=snapagent schedule of job {job} ({expr})

[Timer]
OnCalendar={norm}
# A run missed while the machine was off is started at the next boot.
Persistent=true
{delay}
[Install]
WantedBy=timers.target
"""


_CRON_DOW = {0: "1", 1: "2", 2: "3", 3: "4", 4: "5", 5: "6", 6: "0"}


def _cron_field(items: tuple[Item, ...] | None, top: int) -> str:
    if items is None:
        return "*"
    out = []
    for i in items:
        stop = i.stop if i.stop >= 0 else (top if i.repeat else -1)
        s = str(i.start) if stop < 0 else f"{i.start}-{stop}"
        if i.repeat and not (i.stop >= 0 and i.repeat == 1):
            s += f"/{i.repeat}"
        out.append(s)
    return ",".join(out)


def cron_schedule(expr: str) -> str:
    """Return the five cron fields of OnCalendar ``expr``; raise ValueError when cron cannot express
    it exactly (seconds, years, ``~``, a time zone, or a day of month AND weekdays — cron ORs those)."""
    s = calendar.parse(expr)
    if s.second != (Item(0),):
        raise ValueError("cron cannot run at seconds other than :00")
    if s.year is not None:
        raise ValueError("cron has no year field")
    if s.end_of_month:
        raise ValueError("cron cannot count days from the end of the month ('~')")
    if s.zone is not None:
        raise ValueError("cron runs in the local time zone; drop the time zone or use the systemd timer")
    if s.day is not None and s.weekdays is not None:
        raise ValueError("cron runs when the day of month OR the weekday matches; systemd needs both")
    dow = "*" if s.weekdays is None else ",".join(_CRON_DOW[d] for d in sorted(s.weekdays))
    return " ".join([_cron_field(s.minute, 59), _cron_field(s.hour, 23), _cron_field(s.day, 31),
                     _cron_field(s.month, 12), dow])


def _shell_arg(arg: str) -> str:
    if "%" in arg or any(not c.isprintable() for c in arg):
        raise ValueError(f"path {arg!r} cannot be written to a cron line ('%' or control characters)")
    return arg if re.fullmatch(r"[A-Za-z0-9/_.:+,=@-]+", arg) else "'" + arg.replace("'", "'\\''") + "'"


def cron_file(jobs: dict[str, str], exe: str, config: str | None) -> str:
    """Return ``/etc/cron.d/snapagent`` for ``jobs`` (name → OnCalendar): one line per job, user
    field ``root``. Raises ValueError naming the job whose schedule cron cannot express."""
    lines = [f"{MARK} edit the jobs' schedule keys and re-run install --cron.",
             "# Times are local time (cron's zone). Errors (-q: only errors, on stderr) are mailed by cron;",
             "# stdout (the new backup id) is discarded, so a successful run mails nothing.",
             "SHELL=/bin/sh", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    for job, expr in jobs.items():
        try:
            when = cron_schedule(expr)
        except ValueError as e:
            raise ValueError(f"jobs.{job}.schedule: {expr!r} cannot be expressed in cron: {e}") from None
        cmd = " ".join(_shell_arg(a) for a in _command(exe, config, "backup", job))
        lines += [f"# job {job}: {expr}", f"{when} root {cmd} >/dev/null"]
    return "\n".join(lines) + "\n"

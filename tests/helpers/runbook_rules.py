"""How tests/system/test_runbook.py checks the runbook lines it cannot run on the test machine.

A ```console line needs a systemd manager, a fresh machine or a database server; each is matched by
one rule (``console_rule``) that checks it another way: the unit it names is one `schedule install`
wrote, the server start line is exactly what `snapagent restore` prints, the script exists. A
``cron`` line is split into its schedule (checked) and its command (run by the caller). The
troubleshooting messages are split into literal fragments that must be in the code.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.helpers.cli import ROOT

Rule = Callable[[str, object], None]


def _help(program: str) -> str:
    return subprocess.run([program, "--help"], capture_output=True, text=True, timeout=30).stdout


def _unit_tokens(argv: list[str]) -> list[str]:
    return [a for a in argv if re.match(r"snapagent[@-]", a)]


def _units_written(book, tokens: list[str]) -> None:
    """Each unit (or glob) names a file `schedule install --root ROOT` (or the runbook's own unit
    files) wrote; an instance without a file of its own is served by its template (``snapagent@.service``,
    ``snapagent-drill@.timer``)."""
    unitdir = Path(book.values["ROOT"]) / "etc" / "systemd" / "system"
    files = [p.name for p in unitdir.iterdir() if p.is_file()]
    assert files, f"schedule install --root wrote nothing into {unitdir}"
    for tok in tokens:
        name = tok if re.search(r"\.(service|timer)$", tok) or "*" in tok else tok + ".service"
        template = re.sub(r"@[^.]*\.", "@.", name)
        assert fnmatch.filter(files, name) or template in files, \
            f"{tok}: no such unit in what schedule install writes ({files})"


def _systemctl(line: str, book) -> None:
    argv = shlex.split(book.substitute(line))
    verbs = [a for a in argv[1:] if not a.startswith("-") and not re.match(r"snapagent[@-]", a)]
    text = _help("systemctl")
    assert len(verbs) == 1 and re.search(rf"(?m)^\s+{re.escape(verbs[0])}\b", text), f"systemctl verb: {line}"
    for opt in (a for a in argv[1:] if a.startswith("--")):
        assert opt in text, f"systemctl has no option {opt}: {line}"
    _units_written(book, _unit_tokens(argv))
    if verbs[0] in ("enable", "disable"):  # the offline form does the same to the unit files
        r = subprocess.run(["systemctl", f"--root={book.values['ROOT']}", verbs[0], *_unit_tokens(argv)],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"systemctl --root {verbs[0]}: {line}\n{r.stderr}"


def _journalctl(line: str, book) -> None:
    argv = shlex.split(book.substitute(line))
    empty = Path(book.workdir) / "empty-journal"
    empty.mkdir(exist_ok=True)
    r = subprocess.run(["journalctl", f"--directory={empty}", *argv[1:]], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"journalctl rejects its arguments: {line}\n{r.stderr}"
    _units_written(book, _unit_tokens(argv))


def _schedule_on_host(line: str, book) -> None:
    """`snapagent schedule install|remove` on the host: the same with --root ROOT --dry-run works."""
    r = book.run(line + " --root ROOT --dry-run")
    assert "snapagent@" in r.stdout + r.stderr, r


def _install(line: str, book) -> None:
    """`scripts/install.sh`: executable, valid bash, installs (at least) the packages the Install
    section names; tests/system/test_install.py runs it."""
    script = ROOT / "scripts" / "install.sh"
    assert script.is_file() and script.stat().st_mode & 0o111, f"{script} is not executable"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    pkgs = re.search(r"local pkgs=\((.*?)\)", script.read_text()).group(1).split()
    named = re.search(r"It installs what the agent runs \(`([^`]+)`\)", (ROOT / "docs" / "runbook.md").read_text())
    assert named, "the Install section does not say what install.sh installs"
    assert set(named.group(1).split()) <= set(pkgs), f"install.sh installs {pkgs}, the runbook says {named.group(1)}"


def _uninstall(line: str, book) -> None:
    """The uninstaller is the install script, copied into the venv by the install."""
    text = (ROOT / "scripts" / "install.sh").read_text()
    assert '"$prefix/bin/snapagent-uninstall"' in text and "prefix=$r/opt/snapagent" in text


def _pg_handover(line: str, book) -> None:
    """The line is one of the start/check/stop commands `snapagent restore` hands over for a
    PostgreSQL 15 data directory DEST/main/main on port 5440 (its socket directory in DEST)."""
    from snapagent.quiesce.postgresql.restore import handover

    dest = Path(book.workdir) / "pg-restore"
    pgdata, run = dest / "main" / "main", dest / ".snapagent-postgresql"
    pgdata.mkdir(parents=True, exist_ok=True)
    run.mkdir(exist_ok=True)
    (pgdata / "postgresql.conf").touch()
    h = handover({"mode": "checkpoint", "server_version_num": 150004}, pgdata, "postgres", run, 5440)
    printed = [shlex.join(argv).replace(str(dest), "DEST") for argv in (h.start, h.check, h.stop)]
    assert line in printed, f"the runbook's PostgreSQL line is none of what restore hands over:\n{line}\n" + "\n".join(printed)


def _mariadb_handover(book) -> tuple[str, str]:
    """Return the start line `snapagent restore` hands over for a MariaDB datadir /srv/mysql/datadir
    restored as DEST/mysql/datadir (owner mysql, port 3340, mariadbd in /usr/sbin), and its socket."""
    from snapagent.quiesce.mysql.restore import server_argv

    dest = Path(book.workdir) / "mysql-restore"
    run = dest / ".snapagent-mysql"
    argv = server_argv({"datadir": "/srv/mysql/datadir", "flavor": "mariadb", "server": {}},
                       lambda live: dest / "mysql" / Path(live).relative_to("/srv/mysql"),
                       str(run / "mysqld.sock"), str(run / "mysqld.pid"), str(run / "error.log"), "mysql", port=3340)
    return shlex.join(["/usr/sbin/mariadbd", *argv[1:]]).replace(str(dest), "DEST"), "DEST/.snapagent-mysql/mysqld.sock"


def _mariadb_start(line: str, book) -> None:
    printed, _ = _mariadb_handover(book)
    assert line == printed + " &", f"the runbook's MariaDB start line differs from the hand-over's start:\n{line}\n{printed}"


def _mariadb_client(line: str, book) -> None:
    _, sock = _mariadb_handover(book)
    argv = shlex.split(line)
    assert argv[1] == f"--socket={sock}", f"{line}: not the socket of the restored server ({sock})"
    assert argv[2:] in (["shutdown"], ["--all-databases"]), line


RULES: list[tuple[str, Rule]] = [
    (r"scripts/install\.sh", _install),
    (r"/opt/snapagent/bin/snapagent-uninstall", _uninstall),
    (r"snapagent schedule (install|remove)", _schedule_on_host),
    (r"systemctl .*", _systemctl),
    (r"journalctl .*", _journalctl),
    (r"runuser -u postgres -- /usr/lib/postgresql/\d+/bin/(pg_ctl|psql) .*", _pg_handover),
    (r"(/usr/sbin/)?mariadbd .*", _mariadb_start),
    (r"mariadb-(admin|check) .*", _mariadb_client),
]


def console_rule(line: str) -> Rule | None:
    """Return the check for a ```console line, or None when there is none."""
    for pattern, rule in RULES:
        if re.fullmatch(pattern, line):
            return rule
    return None


CRON_FIELD = re.compile(r"[0-9*][0-9*,/-]*")


def cron_command(line: str) -> str:
    """Check a cron.d line (five time fields, user root, the CLI by its installed path) and return its
    command with the CLI called by name (the test's PATH has it)."""
    parts = line.split(None, 6)
    assert len(parts) == 7 and all(CRON_FIELD.fullmatch(f) for f in parts[:5]), f"not a cron.d line: {line}"
    assert parts[5] == "root", f"cron.d needs the user field: {line}"
    assert "/usr/local/bin/snapagent " in parts[6], f"cron runs the CLI by its installed path: {line}"
    return parts[6].replace("/usr/local/bin/snapagent ", "snapagent ")


def unit_files(doc: str) -> list[tuple[str, str]]:
    """Return (path, text) of every ```ini block of ``doc``; its first line is ``# /etc/systemd/system/NAME``."""
    out = []
    for body in re.findall(r"(?m)^```ini\n(.*?)^```", doc, re.S):
        first, _, text = body.partition("\n")
        m = re.fullmatch(r"# (/etc/systemd/system/[\w@.-]+\.(?:service|timer))", first.strip())
        assert m, f"a ```ini block must start with '# /etc/systemd/system/NAME': {first!r}"
        out.append((m.group(1), text))
    return out


def install_units(units: list[tuple[str, str]], book) -> list[str]:
    """Write the runbook's unit files below ROOT (JOB substituted, the CLI at the test's path), check
    them with `systemd-analyze verify --man=no` (empty stderr), run each ExecStart; return the names."""
    if not units:
        return []
    unitdir = Path(book.values["ROOT"]) / "etc" / "systemd" / "system"
    exe = str(Path(sys.executable).parent / "snapagent")
    names = []
    for path, text in units:
        text = text.replace("/usr/local/bin/snapagent ", exe + " ").replace("JOB", book.values["JOB"])
        (unitdir / Path(path).name).write_text(text)
        names.append(Path(path).name)
        for command in re.findall(r"(?m)^ExecStart=(.*)$", text):
            book.run(shlex.join(["snapagent", *shlex.split(command)[1:]]))
    r = subprocess.run(["systemd-analyze", "verify", "--man=no", *[f"./{n}" for n in names]], cwd=unitdir,
                       capture_output=True, text=True, timeout=120,
                       env={"SYSTEMD_LOG_LEVEL": "warning", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and r.stderr == "", f"systemd-analyze verify {names}:\n{r.stderr}"
    return names


def source_text() -> str:
    """All Python source of snapagent/ and plugins/, implicit string concatenation joined."""
    text = "\n".join(p.read_text() for d in ("snapagent", "plugins") for p in sorted((ROOT / d).rglob("*.py")))
    return re.sub(r"""(["'])\s*\n\s*f?\1""", "", text)


VARIABLE = re.compile(r"'?(?:…|<[a-z]+>|\b(?:JOB|ID|N|TIME|T|LABEL|x)\b)'?")


def fragments(message: str) -> list[str]:
    """The literal parts of a documented message: ``…``, ``<kind>`` and the runbook's placeholders
    are variable (with the quotes a repr adds around them); the ``warning:`` prefix is the logger's."""
    parts = [p.strip() for p in VARIABLE.split(message.removeprefix("warning: "))]
    out = [p for p in parts if len(p) >= 3]
    assert out and max(map(len, out)) >= 8, f"message {message!r} has too little literal text to check"
    return out

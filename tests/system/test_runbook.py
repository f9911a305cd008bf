"""docs/runbook.md, executed: every command in it is run or checked, and a line without a rule fails.

- ```sh lines run through bash, in document order, against a real btrfs subvolume ``…/app`` with a
  live WAL-mode SQLite database (placeholders JOB, ID, DEST, VOL, ROOT, NEWCONF substituted);
- ```console lines (they need a systemd manager, a fresh machine or a database server) are checked
  by the rule that fits each (tests/helpers/runbook_rules.py);
- ```cron lines are checked for cron's format and their command is run;
- ```ini unit files pass `systemd-analyze verify` below ROOT and their ExecStart is run;
- ```toml snippets are parsed by snapagent's own config parser;
- the troubleshooting table's messages are found in the code.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from snapagent.config import parse
from snapagent.schedule.units import cron_file
from tests.helpers import runbook_rules as rules
from tests.helpers import snapplaces
from tests.helpers.caps import need
from tests.helpers.cli import ROOT, toml_str, write_config

pytestmark = [pytest.mark.root, pytest.mark.btrfs]

DOC = ROOT / "docs" / "runbook.md"
PLACEHOLDER = re.compile(r"\b(JOB|ID|DEST|VOL|ROOT|NEWCONF)\b")
# What a ```sh line may run: the test machine is real, so nothing outside this list runs here.
SH_PROGRAMS = {"snapagent", "sqlite3", "ls", "mkdir", "cp", "systemctl"}


def fenced_blocks(text: str | None = None) -> list[tuple[str, list[str]]]:
    """Return (language, lines) of every fenced block of the runbook in order; lines stripped, blank
    lines and ``#`` comments dropped."""
    text = DOC.read_text() if text is None else text
    out = []
    for lang, body in re.findall(r"(?m)^```(\w*)\n(.*?)^```", text, re.S):
        out.append((lang, [ln.strip() for ln in body.splitlines() if ln.strip() and not ln.strip().startswith("#")]))
    return out


def lines_of(lang: str) -> list[str]:
    return [ln for kind, lines in fenced_blocks() if kind == lang for ln in lines]


def section(title: str) -> str:
    text = DOC.read_text()
    m = re.search(rf"(?ms)^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text)
    assert m, f"runbook has no section '## {title}'"
    return m.group(1)


def test_runbook_has_commands():
    text = DOC.read_text()
    titles = re.findall(r"(?m)^## (.+)$", text)
    for want in ["Install", "Configure a job", "First backup", "Schedule", "Monitor and alert", "Retention",
                 "Restore one file", "Restore a whole volume", "Restore each database and bring it up",
                 "Disaster recovery on a new host", "The scheduled drill", "After a crash, kill -9 or power loss",
                 "LVM snapshot overflow", "Troubleshooting by error message"]:
        assert want in titles, f"runbook lacks the section '{want}'"
    order = [titles.index(t) for t in ("Install", "First backup", "Restore one file", "Disaster recovery on a new host",
                                       "Troubleshooting by error message")]
    assert order == sorted(order), "sections out of the 3 a.m. order"
    for t in titles:  # the table of contents links every section
        anchor = re.sub(r"[^a-z0-9 -]", "", t.lower()).replace(" ", "-")
        assert f"](#{anchor})" in text, f"the contents do not link '## {t}' (#{anchor})"
    cmds = [ln for ln in lines_of("sh") if ln.startswith("snapagent ")]
    words = {" ".join(w for w in shlex.split(c)[1:3] if not w.startswith("-") and not w.isupper()) for c in cmds}
    used = {w.split()[0] for w in words if w}
    assert used >= {"config", "plugins", "backup", "list", "show", "verify", "restore", "drill", "cleanup", "prune",
                    "check", "status", "schedule"}, used
    assert any("--path" in c for c in cmds if " restore " in c), "no `restore … --path`"
    assert any(c.startswith("snapagent prune JOB --dry-run") for c in cmds)
    assert any(ln.startswith("sqlite3 ") for ln in lines_of("sh")), "no SQLite bring-up check"
    console = lines_of("console")
    assert any("pg_ctl" in ln for ln in console) and any(re.match(r"(/usr/sbin/)?mariadbd ", ln) for ln in console)
    assert any(" drill " in ln for ln in lines_of("cron")), "no monthly drill line"
    for doc, anchor in re.findall(r"\]\((\w+\.md)?#([\w-]+)\)", text):  # every link lands on a heading
        headings = re.findall(r"(?m)^#+ (.+)$", (DOC.parent / doc).read_text() if doc else text)
        assert anchor in {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings}, \
            f"broken link {doc}#{anchor}"
    for doc in ("databases.md", "lvm.md", "zfs.md", "btrfs.md"):
        assert f"]({doc}" in section("Configure a job"), f"'Configure a job' does not link {doc}"
    for name in ("btrfs", "lvm", "lvm-thin", "zfs", "sqlite", "postgresql", "mysql", "command", "fsfreeze"):
        assert f'"{name}"' in section("Configure a job"), f"no config snippet for {name}"
    assert "snapshot_size" in section("LVM snapshot overflow")


def test_every_block_has_a_rule():
    """A fenced block in a language the test does not know would go unchecked: refuse it."""
    for lang, lines in fenced_blocks():
        assert lang in {"sh", "console", "cron", "ini", "toml", "text", "yaml"}, f"no rule for a ```{lang} block: {lines[:1]}"
    for line in lines_of("sh"):
        assert shlex.split(line)[0] in SH_PROGRAMS, f"no rule to run this ```sh line here: {line}"
        if line.startswith("systemctl "):
            assert "--root=ROOT" in line, f"systemctl in a ```sh block must work offline (--root=ROOT): {line}"
    for line in lines_of("console"):
        assert rules.console_rule(line) is not None, f"no check for this ```console line: {line}"
    # indented code blocks are not extracted: commands must be fenced
    assert not re.search(r"(?m)^(?: {4}|\t)(?:snapagent|systemctl|sqlite3) ", DOC.read_text()), "an indented command"


def test_toml_snippets_parse(tmp_path):
    """Every ```toml snippet is valid for snapagent's parser (missing surroundings filled in)."""
    snippets = re.findall(r"(?m)^```toml\n(.*?)^```", DOC.read_text(), re.S)
    assert len(snippets) >= 7
    for text in snippets:
        data = tomllib.loads(text)
        data.setdefault("agent", {})["state_dir"] = str(tmp_path)
        data.setdefault("targets", {}).setdefault("local", {"type": "directory", "path": str(tmp_path)})
        for t in data["targets"].values():  # a restic target's secret files: stand-ins, 0600
            for key in ("password_file", "environment_file"):
                if key in t and not Path(t[key]).exists():
                    stand_in = tmp_path / Path(t[key]).name
                    stand_in.write_text("AWS_DEFAULT_REGION=eu-central-1\n" if key == "environment_file" else "pw\n")
                    stand_in.chmod(0o600)
                    t[key] = str(stand_in)
        jobs = data.setdefault("jobs", {"probe": {}})
        for job in jobs.values():
            job.setdefault("driver", "btrfs")
            job.setdefault("volumes", ["/srv/probe"])
            job.setdefault("target", "local")
        parse(data, Path("runbook.md"))  # raises ConfigError naming the key


def test_troubleshooting_messages_are_the_codes():
    """Each message quoted in a ``| message |`` table (``…`` for a variable part) is what snapagent/
    or plugins/ says."""
    source = rules.source_text()
    assert len(re.findall(r"(?m)^\| `", section("Troubleshooting by error message"))) >= 25
    tables = re.findall(r"(?ms)^\| message \|.*?(?=^[^|]|\Z)", DOC.read_text())
    rows = [msg for table in tables for msg in re.findall(r"(?m)^\| `([^`]+)`", table)]
    assert len(tables) >= 3 and len(rows) >= 30
    for msg in rows:
        for frag in rules.fragments(msg):
            assert frag in source, f"troubleshooting message {msg!r}: {frag!r} is not in the code"


@pytest.fixture
def app_volume(btrfs_root):
    """A subvolume whose last path component is ``app`` (the label the runbook's DEST/app/… uses)."""
    parent = btrfs_root / f"runbook-{uuid.uuid4().hex[:8]}"
    parent.mkdir()
    vol = parent / "app"
    subprocess.run(["btrfs", "subvolume", "create", str(vol)], check=True, capture_output=True)
    yield vol
    snaps = snapplaces.snapdir(vol)
    for s in snaps.iterdir() if snaps.is_dir() else []:
        subprocess.run(["btrfs", "subvolume", "delete", str(s)], capture_output=True)
    subprocess.run(["btrfs", "subvolume", "delete", str(vol)], capture_output=True)
    shutil.rmtree(parent, ignore_errors=True)


class Runbook:
    """The state of one walk through the runbook: config, placeholders, the ID once a backup made one."""

    def __init__(self, workdir: Path, vol: Path, stop_app: Callable[[], None]):
        self.workdir, self.vol, self.stop_app = workdir, vol, stop_app
        self.crashed: list[str] | None = None  # the snapshots a killed run left, once the test killed one
        self.cfg = write_config(workdir, f'[jobs.app]\ndriver = "btrfs"\nvolumes = [{toml_str(vol)}]\ntarget = "local"\n'
                                         f'schedule = "daily"\n[jobs.app.retention]\nkeep_last = 3\nkeep_daily = 7\n'
                                         f'[[jobs.app.quiesce]]\ntype = "sqlite"\npath = {toml_str(vol / "app.db")}\n',
                                extra=self.offsite(workdir))
        self.values = {"JOB": "app", "ID": None, "DEST": str(workdir / "dest"), "VOL": str(vol),
                       "ROOT": str(workdir / "image"), "NEWCONF": str(workdir / "newhost" / "snapagent.toml")}
        self.env = dict(os.environ, SNAPAGENT_CONFIG=str(self.cfg),
                        PATH=f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}")

    @staticmethod
    def offsite(workdir: Path) -> str:
        """The ``offsite`` target: a restic repository (a local path here; the backends are tested
        in tests/system/test_offsite.py), created as the runbook tells: ``restic init``."""
        need(shutil.which("restic") is not None, "needs restic (scripts/setup-restic.sh)")
        pw = workdir / "restic.pass"
        pw.write_text("runbook offsite password\n")
        pw.chmod(0o600)
        repo = workdir / "offsite-repo"
        subprocess.run(["restic", "init"], check=True, capture_output=True, timeout=120,
                       env={"PATH": os.environ["PATH"], "RESTIC_REPOSITORY": str(repo), "RESTIC_PASSWORD_FILE": str(pw)})
        return (f'[targets.offsite]\ntype = "restic"\nrepository = {toml_str(repo)}\n'
                f'password_file = {toml_str(pw)}\n')

    def substitute(self, line: str) -> str:
        def one(m: re.Match) -> str:
            value = self.values[m.group(1)]
            assert value is not None, f"{line!r} uses {m.group(1)} before the runbook made one (take a backup first)"
            return shlex.quote(value)
        return PLACEHOLDER.sub(one, line)

    def prepare(self, line: str) -> None:
        """What the operator is told to have before the line: an absent DEST for a restore, and on the
        'new host' a config pointing at a copy of the target; the application stopped before files
        are copied onto its volume."""
        argv = shlex.split(line)
        if argv[:2] == ["snapagent", "cleanup"] and self.crashed is None:
            self.crash()
        if argv[0] == "cp" and argv[-1].startswith("VOL"):
            self.stop_app()
        if "restore" in argv and "--force" not in argv and Path(self.values["DEST"]).exists():
            shutil.rmtree(self.values["DEST"])
        if "NEWCONF" in argv and not Path(self.values["NEWCONF"]).exists():
            # the new host: the old one burned with its local target; the offsite repository, the
            # config and its password file survive. A fresh state dir, an empty new local disk.
            new = Path(self.values["NEWCONF"]).parent
            (new / "state").mkdir(parents=True)
            (new / "new-disk").mkdir()
            text = self.cfg.read_text().replace(str(self.workdir / "backups"), str(new / "new-disk"))
            text = text.replace(str(self.workdir / "state"), str(new / "state"))
            assert str(self.workdir) + "/state" not in text and "new-disk" in text and "offsite-repo" in text
            Path(self.values["NEWCONF"]).write_text(text)

    def crash(self) -> None:
        """Leave what a run killed mid-export leaves (its snapshot, its journal): start a backup whose
        `tar` waits, and SIGKILL the whole run once the export has begun, as a power loss would."""
        wrap, marker = self.workdir / "slow-tar", self.workdir / "export-started"
        wrap.mkdir()
        (wrap / "tar").write_text(f'#!/bin/sh\ncase " $* " in *" --version "*) exec {shutil.which("tar")} "$@";; esac\n'
                                  f'echo $$ > {shlex.quote(str(marker))}.tmp && mv {shlex.quote(str(marker))}.tmp '
                                  f'{shlex.quote(str(marker))}\nexec sleep 120\n')
        (wrap / "tar").chmod(0o755)
        env = dict(self.env, PATH=f"{wrap}:{self.env['PATH']}")
        agent = subprocess.Popen(["snapagent", "backup", "app"], env=env, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while not marker.exists() and agent.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert marker.exists(), f"the backup never reached its export (exit {agent.poll()})"
        finally:
            # the agent's group, and its tar (the runner starts children in their own process group)
            pids = [-agent.pid] + ([int(marker.read_text())] if marker.exists() else [])
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):  # the run may have died on its own: the assert says so
                    os.kill(pid, signal.SIGKILL)
            agent.wait()
        self.crashed = sorted(p.name for p in snapplaces.snapdir(self.vol).iterdir())
        assert self.crashed, "the killed run left no snapshot to clean up"

    def run(self, line: str) -> subprocess.CompletedProcess:
        self.prepare(line)
        r = subprocess.run(["bash", "-euo", "pipefail", "-c", self.substitute(line)], capture_output=True,
                           text=True, env=self.env, timeout=300, cwd=self.workdir)
        assert r.returncode == 0, f"runbook command failed ({r.returncode}): {line}\n{r.stdout}\n{r.stderr}"
        argv = shlex.split(line)
        if argv[:3] == ["snapagent", "backup", "JOB"] and len(argv) == 3 and self.values["ID"] is None:
            self.values["ID"] = r.stdout.split()[-1]
        return r


def test_every_runbook_command_runs(app_volume, workdir):
    for tool, source in (("sqlite3", "scripts/bootstrap.sh"), ("systemctl", "scripts/setup-systemd-tools.sh"),
                         ("journalctl", "scripts/setup-systemd-tools.sh"),
                         ("systemd-analyze", "scripts/setup-systemd-tools.sh")):
        need(shutil.which(tool) is not None, f"{tool} missing ({source})")
    db = app_volume / "app.db"
    conn = sqlite3.connect(db)  # the live application: WAL mode, connection open throughout
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (a)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    conn.commit()
    (workdir / "image").mkdir()
    book = Runbook(workdir, app_volume, conn.close)
    ran = {"sh": 0, "cron": 0}
    try:
        for lang, lines in fenced_blocks():
            for line in lines:
                if lang == "sh":
                    assert shlex.split(line)[0] in SH_PROGRAMS, f"no rule to run this ```sh line here: {line}"
                    r = book.run(line)
                    if line.startswith("sqlite3 ") and "integrity_check" in line:
                        assert r.stdout.strip() == "ok", f"{line}: {r.stdout}"
                    if line.startswith("snapagent restore ") and "--path" not in line:
                        assert f"sqlite database: {book.values['DEST']}/app/app.db" in r.stdout, r.stdout
                        # the hand-over: the owner and the check line, pasteable
                        assert "    owner:    root" in r.stdout and \
                            f"    check:    sqlite3 {book.values['DEST']}/app/app.db 'PRAGMA integrity_check'" in r.stdout, r.stdout
                    if line == "snapagent cleanup --dry-run":
                        assert all(s in r.stdout + r.stderr for s in book.crashed), (book.crashed, r)
                    if line == "snapagent cleanup":
                        assert not list(snapplaces.snapdir(app_volume).iterdir()), "cleanup left a snapshot"
                    if line.startswith("sqlite3 ") and line.endswith(" .tables"):
                        assert r.stdout.split() == ["t"], f"{line}: {r.stdout}"
                    ran["sh"] += 1
                elif lang == "cron":
                    command = rules.cron_command(line)
                    r = book.run(command)
                    assert r.stdout == "" and r.stderr == "", f"cron would mail this on success: {r.stdout}{r.stderr}"
                    ran["cron"] += 1
        units = rules.install_units(rules.unit_files(DOC.read_text()), book)
        assert units == [], units  # the drill's units are the installed templates now
        for line in lines_of("console"):
            rules.console_rule(line)(line, book)
    finally:
        conn.close()
    assert ran["sh"] >= 30 and ran["cron"] >= 1, ran
    # "Unattended": the line `schedule install --cron` writes mails nothing on success (run by /bin/sh, as cron does)
    cron = cron_file({"app": "daily"}, str(Path(sys.executable).parent / "snapagent"), str(book.cfg))
    line = next(ln for ln in cron.splitlines() if ln.startswith("0 0 * * * root "))
    r = subprocess.run(["/bin/sh", "-c", line.removeprefix("0 0 * * * root ")], capture_output=True, text=True,
                       env=book.env, timeout=300)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), f"cron would mail: {r}"
    wants = workdir / "image" / "etc" / "systemd" / "system" / "timers.target.wants" / "snapagent@app.timer"
    assert wants.is_symlink(), "systemctl --root=ROOT enable did not enable the timer"
    assert wants.with_name("snapagent-drill@app.timer").is_symlink(), "the drill timer was not enabled"
    with sqlite3.connect(db) as c:  # the copy-back left the live database whole
        assert c.execute("SELECT count(*) FROM t").fetchone() == (100,)

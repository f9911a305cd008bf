"""What stderr shows, by who reads it: a progress bar (bytes, rate, ETA) in a real terminal
(tmux), silence under cron (a pipe or a file), syslog priority prefixes for the journal, one JSON
object per line with ``--log-format json``."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid

import pytest

from tests.helpers.caps import need
from tests.helpers.cli import LOG_LINE, ROOT, log_lines, snapagent, toml_str, write_config

pytestmark = [pytest.mark.root, pytest.mark.btrfs]
MIB = 1 << 20
#: tqdm's byte counter and rate, e.g. "48.0M/48.0M" or "48.0MiB" and "[00:01<00:00, 35.2MiB/s]"
RATE = re.compile(r"\d+(\.\d+)?[KMG]iB/s")
ETA = re.compile(r"<\d\d:\d\d")


@pytest.fixture
def job(subvol, workdir):
    """A btrfs volume with 48 MiB of incompressible data, a job backing it up; (config, volume)."""
    vol = subvol("out vol")
    with open(vol / "data.bin", "wb") as f:
        for _ in range(48):
            f.write(os.urandom(MIB))
    (vol / "small").write_text("x\n")
    cfg = write_config(workdir, f'[jobs.app]\ndriver = "btrfs"\nvolumes = [{toml_str(vol)}]\ntarget = "local"\n')
    return cfg, vol


class Tmux:
    """Runs one command at a time in a 200x50 pane of its own private tmux server (own socket in
    the test's tmp dir)."""

    def __init__(self, tmp):
        need(shutil.which("tmux") is not None, "needs tmux (scripts/setup-tmux.sh)")
        self.tmp = tmp

    def run(self, argv: list[str], timeout: float = 120) -> tuple[int, str]:
        """Run ``argv`` in a fresh pane; return (exit code, the screen once it finished)."""
        script = self.tmp / f"pane-{uuid.uuid4().hex[:6]}.sh"
        script.write_text(f"cd {shlex.quote(str(ROOT))}\n{shlex.join(argv)}\necho \"EXIT=$?\"\nsleep 600\n")
        tmux = ["tmux", "-S", str(self.tmp / f"tmux-{uuid.uuid4().hex[:8]}")]  # a private server
        subprocess.run([*tmux, "new-session", "-d", "-s", "t", "-x", "200", "-y", "50", "bash", str(script)],
                       check=True, env={**os.environ, "TERM": "screen"})
        try:
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                screen = subprocess.run([*tmux, "capture-pane", "-p", "-t", "t"],
                                        capture_output=True, text=True, check=True).stdout
                m = re.search(r"^EXIT=(\d+)$", screen, re.M)
                if m:
                    return int(m.group(1)), screen
                time.sleep(0.2)
            raise AssertionError(f"{argv} did not finish in {timeout}s; screen:\n{screen}")
        finally:
            subprocess.run([*tmux, "kill-server"], capture_output=True)


@pytest.fixture
def tmux(tmp_path):
    return Tmux(tmp_path)


def _cli(cfg, *args: str) -> list[str]:
    return [sys.executable, "-m", "snapagent", "-c", str(cfg), *args]


def test_progress_bar_in_a_terminal_silence_without(job, workdir, tmux):
    cfg, vol = job
    # first backup: no earlier size to estimate from, so bytes and rate without an ETA
    rc, screen = tmux.run(_cli(cfg, "backup", "app"))
    assert rc == 0, screen
    bar = [ln for ln in screen.splitlines() if ln.startswith("export ")]
    assert bar and RATE.search(bar[-1]) and re.search(r"\d+(\.\d+)?MiB", bar[-1]), screen
    assert "exported " in screen and "freeze window" in screen, screen  # say lines on a terminal
    # second backup: the first one's size is the estimate, so a percentage and an ETA
    rc, screen = tmux.run(_cli(cfg, "backup", "app"))
    bar = [ln for ln in screen.splitlines() if ln.startswith("export ")]
    assert rc == 0 and bar and "%|" in bar[-1] and ETA.search(bar[-1]) and RATE.search(bar[-1]), screen
    bid = screen.split("EXIT=")[0].split()[-1]
    # restore: the artifact sizes are known: bytes, rate and ETA
    dest = workdir / "dest"
    rc, screen = tmux.run(_cli(cfg, "restore", bid, "--to", str(dest)))
    bar = [ln for ln in screen.splitlines() if ln.startswith("restore ")]
    assert rc == 0 and bar and "100%" in bar[-1] and ETA.search(bar[-1]) and RATE.search(bar[-1]), screen
    assert "48.0M/48.0M" in bar[-1], screen
    # -q in a terminal: no bar, no chatter
    rc, screen = tmux.run(_cli(cfg, "-q", "backup", "app"))
    assert rc == 0 and "export " not in screen and "freeze window" not in screen, screen
    # the same commands with stderr to a pipe, then to a file (cron, systemd): nothing on stderr
    r = snapagent("backup", "app", config=cfg, check=True)
    assert r.stderr == "" and re.fullmatch(r"app-\S+\n", r.stdout), r
    with open(workdir / "err.log", "w") as err:
        p = subprocess.run(_cli(cfg, "restore", bid, "--to", str(workdir / "dest2")), stdout=subprocess.PIPE,
                           stderr=err, text=True, cwd=ROOT)
    assert p.returncode == 0 and (workdir / "err.log").read_text() == "", p
    # -v brings the chatter back: no bar, a progress line instead
    r = snapagent("-v", "backup", "app", config=cfg, check=True)
    assert "exported " in r.stderr and "\r" not in r.stderr and "%|" not in r.stderr, r.stderr
    assert any(re.fullmatch(r"export \S+: 48\.0 MiB in \S+ \(\d+\.\d (K|M|G)iB/s\)", m["message"])
               for m in log_lines(r.stderr, "info")), r.stderr
    # every line: the time, the job (and the backup id once known), the level
    lines = r.stderr.splitlines()
    assert all(m and m["time"] and m["facts"].split(" ")[0] == "app" for m in map(LOG_LINE.fullmatch, lines)), lines
    assert any(m["facts"] == f"app {r.stdout.strip()}" for m in log_lines(r.stderr)), lines
    assert any(re.fullmatch(r"step export .+: [\d.]+ (ms|s)", m["message"]) for m in log_lines(r.stderr, "info")), lines


def _damage_one(workdir):
    """Make the target hold one damaged backup, so that `list` warns."""
    d = workdir / "backups" / "app" / "app-20200101T000000Z"
    d.mkdir(parents=True)
    (d / "manifest.json").write_text("{not json")


def test_journal_stream_gets_priority_prefixes(job, workdir):
    cfg, vol = job
    log = workdir / "journal.log"

    def run(*args: str) -> tuple[int, list[str]]:
        with open(log, "w") as err:
            st = os.fstat(err.fileno())
            p = subprocess.run(_cli(cfg, *args), stdout=subprocess.PIPE, stderr=err, cwd=ROOT,
                               env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
        return p.returncode, log.read_text().splitlines()

    rc, lines = run("backup", "app")  # default verbosity: the journal shows info (progress) lines
    assert rc == 0 and lines and all(ln.startswith("<6>") for ln in lines), lines
    assert any(re.match(r"<6>\[app app-\S+\] snapagent: info: exported ", ln) for ln in lines), lines
    assert any(re.match(r"<6>\[app app-\S+\] snapagent: info: export \S+: 48\.0 MiB in ", ln) for ln in lines), lines
    assert not any(LOG_LINE.fullmatch(ln)["time"] for ln in lines), lines  # the journal stamps lines itself
    _damage_one(workdir)
    rc, lines = run("list")
    assert rc == 0 and lines == ["<4>snapagent: warning: 1 backup(s) damaged: their manifests cannot be trusted; "
                                 "the others are usable"], lines
    rc, lines = run("restore", "app-20990101T000000Z", "--to", str(workdir / "d"))
    assert rc == 1 and len(lines) == 1 and lines[0].startswith("<3>snapagent: error: "), lines
    rc, lines = run("-vv", "backup", "app")
    assert rc == 0 and any(re.match(r"<7>\[app app-\S+\] snapagent: debug: run: ", ln) for ln in lines), lines
    assert all(re.match(r"<[3467]>", ln) for ln in lines), lines
    # JOURNAL_STREAM naming another file (a child of a journald service writing elsewhere): no prefixes
    with open(log, "w") as err:
        p = subprocess.run(_cli(cfg, "list"), stdout=subprocess.PIPE, stderr=err, cwd=ROOT,
                           env={**os.environ, "JOURNAL_STREAM": "1:1"})
    assert p.returncode == 0 and [m["time"] is not None for m in log_lines(log.read_text(), "warning")] == [True], \
        log.read_text()


def _json_lines(text: str) -> list[dict]:
    out = [json.loads(ln) for ln in text.splitlines()]
    for o in out:
        assert set(o) >= {"time", "level", "logger", "message"}, o
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$", o["time"]), o
    return out


def test_log_format_json(job, workdir):
    cfg, vol = job
    r = snapagent("--log-format", "json", "-v", "backup", "app", config=cfg, check=True)
    bid = r.stdout.split()[-1]
    lines = _json_lines(r.stderr)
    said = [o for o in lines if o["logger"] == "snapagent.say"]
    assert said and all(o["level"] == "info" and o["job"] == "app" and o["backup_id"] == bid for o in said), lines
    assert any(o["message"].startswith("exported ") for o in said), lines
    # the option after COMMAND too; without -v and not a terminal: nothing at all
    r = snapagent("backup", "app", "--log-format=json", config=cfg, check=True)
    assert r.stderr == "", r.stderr
    # a failed command: its error line is JSON too
    r = snapagent("restore", "app-20990101T000000Z", "--to", str(workdir / "d"), "--log-format", "json", config=cfg)
    (err,) = _json_lines(r.stderr)
    assert r.returncode == 1 and err["level"] == "error" and "app-20990101T000000Z" in err["message"], err
    # a usage error: one JSON line, no usage text
    r = snapagent("--log-format", "json", "restore", bid, config=cfg)
    (err,) = _json_lines(r.stderr)
    assert r.returncode == 2 and err["level"] == "error" and "--to" in err["message"], r.stderr
    # warnings keep their level; the journal's prefixes give way to JSON
    _damage_one(workdir)
    r = snapagent("list", "--log-format", "json", config=cfg, env={"JOURNAL_STREAM": "0:0"})
    (warn,) = _json_lines(r.stderr)
    assert r.returncode == 0 and warn["level"] == "warning" and "damaged" in warn["message"], r.stderr
    r = snapagent("--log-format", "yaml", "list", config=cfg)
    assert r.returncode == 2 and "--log-format" in r.stderr, r.stderr

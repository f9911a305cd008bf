"""`snapagent schedule install|remove|show` under a temp --root: the generated units pass
`systemd-analyze verify --man=no` with empty stderr (job names with odd but valid characters, a
config path that needs quoting), the cron file's owner/mode/format, the install → show → remove
round trip, files snapagent did not write are never touched, --dry-run writes nothing."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.helpers.caps import need
from tests.helpers.cli import snapagent, toml_str

JOBS = {"db-1.main_x": "Mon..Fri 02:30", "A_b.c-9": "*-*-* 00/6:15 Europe/Berlin", "app": "hourly"}


def config(path: Path, schedules: dict[str, str | None]) -> Path:
    """Write a config with one job per entry (None: no schedule) at ``path``; return it."""
    text = (f"[agent]\nstate_dir = {toml_str(path.parent / 'state')}\n"
            f"[targets.local]\ntype = \"directory\"\npath = {toml_str(path.parent / 'backups')}\n")
    for job, expr in schedules.items():
        text += f'[jobs."{job}"]\ndriver = "btrfs"\nvolumes = ["/srv/{job}"]\ntarget = "local"\n'
        if expr:
            text += f"schedule = {toml_str(expr)}\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else b"<dir>" for p in sorted(root.rglob("*"))}


@pytest.fixture
def analyze():
    exe = shutil.which("systemd-analyze")
    need(exe is not None, "systemd-analyze missing (scripts/setup-systemd-tools.sh)")
    return exe


def verify(analyze: str, unit_dir: Path, names: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([analyze, "verify", "--man=no", *[f"./{n}" for n in names]], cwd=unit_dir,
                          capture_output=True, text=True)


def test_generated_units_pass_systemd_analyze_verify(tmp_path, analyze):
    cfg = config(tmp_path / "conf dir" / "snap$agent%1.toml", JOBS)
    root = tmp_path / "root"
    root.mkdir()
    r = snapagent("schedule", "install", "--root", str(root), "--randomized-delay", "2m", config=cfg)
    assert r.returncode == 0, r.stderr
    units = root / "etc/systemd/system"
    names = sorted(p.name for p in units.iterdir())
    templates = ["snapagent@.service", "snapagent-drill@.service", "snapagent-drill@.timer"]
    assert names == sorted(templates + [f"snapagent@{j}.timer" for j in JOBS])
    for p in units.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
    # instances of the templates: ExecStart and the drill timer's instance checked
    timers = [f"snapagent@{j}.timer" for j in JOBS] + [f"snapagent-drill@{j}.timer" for j in JOBS]
    services = [f"snapagent@{j}.service" for j in JOBS] + [f"snapagent-drill@{j}.service" for j in JOBS]
    v = verify(analyze, units, timers + services)
    assert v.returncode == 0 and v.stderr == "", v.stderr
    service = (units / "snapagent@.service").read_text()
    assert f'-c "{cfg}"'.replace("%", "%%").replace("$", "$$") in service
    assert "ExecStopPost=" in service and service.count(" -q cleanup") == 1
    assert "OnCalendar=*-*-* 00/6:15:00 Europe/Berlin" in (units / "snapagent@A_b.c-9.timer").read_text()
    assert "RandomizedDelaySec=120" in (units / "snapagent@app.timer").read_text()
    assert "next: systemctl daemon-reload && systemctl enable --now snapagent@db-1.main_x.timer" in r.stdout
    assert "systemctl enable --now snapagent-drill@db-1.main_x.timer" in r.stdout
    drill = (units / "snapagent-drill@.service").read_text()
    assert " -q drill %i@latest\n" in drill and drill.count(" -q cleanup") == 1

    # the check can fail: a typo in the service makes verify speak
    (units / "snapagent@.service").write_text(service.replace("NoNewPrivileges=", "NoNewPrivilege="))
    bad = verify(analyze, units, services[:1])
    assert "NoNewPrivilege" in bad.stderr


def test_install_show_remove_round_trip_leaves_foreign_files(tmp_path):
    cfg = config(tmp_path / "c" / "snapagent.toml", {"app": "hourly", "db-1": "daily", "plain": None})
    root = tmp_path / "root"
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    foreign = units / "snapagent@other.timer"
    foreign.write_text("[Timer]\nOnCalendar=daily\n")
    assert snapagent("schedule", "install", "--root", str(root), config=cfg).returncode == 0
    show = snapagent("schedule", "show", "--root", str(root), config=cfg)
    assert show.returncode == 0
    assert f"# {units / 'snapagent@app.timer'}: installed" in show.stdout
    assert "# job db-1: daily = *-*-* 00:00:00; next " in show.stdout
    assert "plain" not in show.stdout

    # the job loses its schedule: install removes its (marked) timer, and only that
    config(cfg, {"app": "hourly", "db-1": None})
    r = snapagent("schedule", "install", "--root", str(root), config=cfg)
    assert r.returncode == 0 and f"removed {units / 'snapagent@db-1.timer'}" in r.stdout
    assert sorted(p.name for p in units.iterdir()) == ["snapagent-drill@.service", "snapagent-drill@.timer",
                                                       "snapagent@.service", "snapagent@app.timer", "snapagent@other.timer"]
    wants = units / "timers.target.wants"
    wants.mkdir()
    (wants / "snapagent-drill@app.timer").symlink_to(units / "snapagent-drill@.timer")  # as `systemctl enable` does

    r = snapagent("schedule", "remove", "--root", str(root), config=cfg)
    assert r.returncode == 0, r.stderr
    assert "left" in r.stderr and "snapagent@other.timer" in r.stderr
    assert ("next: systemctl disable --now snapagent@app.timer snapagent-drill@app.timer; systemctl daemon-reload"
            in r.stdout), r.stdout
    assert sorted(p.name for p in units.iterdir()) == ["snapagent@other.timer", "timers.target.wants"]
    assert foreign.read_text() == "[Timer]\nOnCalendar=daily\n"


def test_install_refuses_to_replace_a_file_it_did_not_write(tmp_path):
    cfg = config(tmp_path / "c" / "snapagent.toml", {"app": "hourly"})
    units = tmp_path / "root/etc/systemd/system"
    units.mkdir(parents=True)
    (units / "snapagent@.service").write_text("[Service]\nExecStart=/bin/true\n")
    before = tree(tmp_path / "root")
    r = snapagent("schedule", "install", "--root", str(tmp_path / "root"), config=cfg)
    assert r.returncode == 1 and "not written by snapagent" in r.stderr and len(r.stderr.splitlines()) == 1
    assert tree(tmp_path / "root") == before


def test_dry_run_writes_nothing(tmp_path):
    cfg = config(tmp_path / "c" / "snapagent.toml", {"app": "hourly"})
    root = tmp_path / "root"
    root.mkdir()
    for args in (["install"], ["install", "--cron"], ["remove"], ["remove", "--cron"]):
        r = snapagent("schedule", *args, "--root", str(root), "--dry-run", config=cfg)
        assert r.returncode == 0, r.stderr
        assert tree(root) == {}
    r = snapagent("schedule", "install", "--root", str(root), "--dry-run", config=cfg)
    assert f"would write {root / 'etc/systemd/system/snapagent@app.timer'}" in r.stdout
    assert "OnCalendar=*-*-* *:00:00" in r.stdout
    # a root that does not exist is fine for a dry run, an error for the real thing
    assert snapagent("schedule", "install", "--root", str(tmp_path / "nope"), "--dry-run", config=cfg).returncode == 0
    r = snapagent("schedule", "install", "--root", str(tmp_path / "nope"), config=cfg)
    assert r.returncode == 2 and "--root" in r.stderr and not (tmp_path / "nope").exists()


@pytest.mark.root
def test_cron_file_owner_mode_format_and_refusal(tmp_path):
    need(os.geteuid() == 0, "needs root (the cron file must be root-owned)")
    cfg = config(tmp_path / "c" / "snapagent.toml", JOBS)
    root = tmp_path / "root"
    root.mkdir()
    # A_b.c-9 runs in Europe/Berlin: cron cannot say that — refused naming the job and key, nothing written
    r = snapagent("schedule", "install", "--cron", "--root", str(root), config=cfg)
    assert r.returncode == 2 and "jobs.A_b.c-9.schedule" in r.stderr and "time zone" in r.stderr
    assert tree(root) == {}
    cfg = config(cfg, {"db-1.main_x": "Mon..Fri 02:30", "app": "*:0/20"})
    old = os.umask(0o077)  # the mode must not depend on the caller's umask
    try:
        r = snapagent("schedule", "install", "--cron", "--root", str(root), config=cfg)
    finally:
        os.umask(old)
    assert r.returncode == 0, r.stderr
    f = root / "etc/cron.d/snapagent"
    st = f.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o644)
    assert not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    assert "." not in f.name  # run-parts/cron ignore names with a dot
    entries = [line.split() for line in f.read_text().splitlines()
               if line.strip() and not line.startswith("#") and "=" not in line.split()[0]]
    assert [(e[:6], e[-2:]) for e in entries] == [  # stdout (the backup id) discarded: cron mails only errors
        (["30", "2", "*", "*", "1,2,3,4,5", "root"], ["db-1.main_x", ">/dev/null"]),
        (["0-59/20", "*", "*", "*", "*", "root"], ["app", ">/dev/null"])]
    r = snapagent("schedule", "remove", "--cron", "--root", str(root), config=cfg)
    assert r.returncode == 0 and not f.exists()


def test_templates_need_no_config(tmp_path):
    """`--templates` (what scripts/install.sh runs) reads no config; a later `schedule install` of a
    job with a schedule keeps the timer template and rewrites the services only to name its
    non-default config (`-c`); the end-to-end case (the installed program) is in
    tests/system/test_install.py."""
    root = tmp_path / "root"
    root.mkdir()
    missing = {"SNAPAGENT_CONFIG": str(tmp_path / "no-such.toml")}
    r = snapagent("schedule", "install", "--templates", "--root", str(root), env=missing)
    assert r.returncode == 0, r.stderr
    units = root / "etc/systemd/system"
    assert sorted(p.name for p in units.iterdir()) == ["snapagent-drill@.service", "snapagent-drill@.timer",
                                                       "snapagent@.service"]
    again = snapagent("schedule", "install", "--templates", "--root", str(root), env=missing)
    assert again.stdout.strip() == "templates up to date", again.stdout
    cfg = config(tmp_path / "etc/snapagent/snapagent.toml", {"app": "daily"})
    dry = snapagent("schedule", "install", "--root", str(root), "--dry-run", env={"SNAPAGENT_CONFIG": str(cfg)})
    assert dry.returncode == 0, dry.stderr
    assert [ln.split()[1] for ln in dry.stdout.splitlines() if ln.startswith("would ")] == [
        "write", "write", "keep", "write"], dry.stdout
    assert f" -c {cfg} -q drill %i@latest" in dry.stdout
    bad = snapagent("schedule", "install", "--templates", "--cron", "--root", str(root), env=missing)
    assert bad.returncode == 2 and "--templates" in bad.stderr

"""Monitoring on real btrfs through the real CLI: ``check`` in every state (Nagios exit codes and
output), the metrics file scraped by a real prometheus-node-exporter after a success and after a
failure, pings to a real HTTP server (and to one that hangs), ``status --json``, and the run
record of a run stopped by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snapagent.monitor import runs
from tests.helpers.cli import last_line, snapagent, toml_str, write_config
from tests.helpers.monitoring import PingServer, hanging_server, node_exporter, scrape
from tests.helpers.wrappers import failing_tool, slow_tool

pytestmark = [pytest.mark.root, pytest.mark.btrfs]

UUID = "5f2a1c9e-secret-token-0d8b"


def app_volume(subvol) -> tuple[Path, Path]:
    vol = subvol("mon itor")
    db = vol / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (a)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    conn.commit()
    conn.close()
    return vol, db


def setup(subvol, workdir: Path, job_extra: str = "", agent: str = "", other_job: bool = False) -> tuple[Path, Path]:
    """Return (config, failure switch): while the switch file exists, tar --create fails."""
    vol, db = app_volume(subvol)
    switch = workdir / "fail-tar"
    tar = failing_tool(workdir / "failing-tar", "tar", ["--create"], switch)
    jobs = (f'[jobs.app]\ndriver = "btrfs"\nvolumes = [{toml_str(vol)}]\ntarget = "local"\n{job_extra}\n'
            f'[[jobs.app.quiesce]]\ntype = "sqlite"\npath = {toml_str(db)}\n')
    if other_job:
        jobs += f'\n[jobs.other]\ndriver = "btrfs"\nvolumes = [{toml_str(vol)}]\ntarget = "local"\n'
    return write_config(workdir, jobs, agent=f"tools.tar = {toml_str(tar)}\n{agent}"), switch


def failed_backup(cfg: Path, switch: Path) -> subprocess.CompletedProcess:
    switch.touch()
    try:
        r = snapagent("backup", "app", config=cfg)
    finally:
        switch.unlink()
    assert r.returncode == 1 and "injected failure" in r.stderr, r.stderr
    return r


def check(cfg: Path, *args: str) -> subprocess.CompletedProcess:
    r = snapagent("check", *args, config=cfg)
    assert "Traceback" not in r.stderr + r.stdout
    assert r.stdout.startswith("SNAPAGENT "), r.stdout + r.stderr
    return r


def test_check_in_every_state(subvol, workdir):
    cfg, switch = setup(subvol, workdir, other_job=True)
    r = check(cfg, "app")
    assert r.returncode == 2 and r.stdout.startswith("SNAPAGENT CRITICAL - app: no backup |"), r.stdout
    assert "'app_age'=U" in r.stdout and "'app_backups'=0;;;0" in r.stdout

    bid = last_line(snapagent("backup", "app", config=cfg, check=True))
    r = check(cfg, "app")
    assert r.returncode == 0, r.stdout
    first = r.stdout.splitlines()[0]
    assert first.startswith(f"SNAPAGENT OK - app: newest backup {bid} is ") and "1 backup(s)" in first
    text, perf = first.split(" | ")
    items = dict(p.split("=", 1) for p in perf.split())
    assert items["'app_age'"].endswith(f"s;;{25 * 3600};0") and items["'app_backups'"] == "1;;;0"
    size = json.loads(snapagent("show", bid, "--json", config=cfg, check=True).stdout)["artifacts"][0]["size"]
    assert items["'app_size'"] == f"{size}B;;;0" and items["'app_freeze_window'"].endswith("s;;;0")

    time.sleep(1.2)
    r = check(cfg, "app", "--warn-age", "1s")
    assert r.returncode == 1 and r.stdout.startswith(f"SNAPAGENT WARNING - app: newest backup {bid} is "), r.stdout
    assert "(warn 1s)" in r.stdout and "'app_age'=" in r.stdout and "s;1;90000;0" in r.stdout
    r = check(cfg, "app", "--max-age", "1s", "--warn-age", "500ms")
    assert r.returncode == 2 and r.stdout.startswith("SNAPAGENT CRITICAL - app: newest backup") and "(max 1s)" in r.stdout

    failed_backup(cfg, switch)
    r = check(cfg, "app")
    assert r.returncode == 1, r.stdout
    assert r.stdout.startswith("SNAPAGENT WARNING - app: last run failure at ") and "injected failure" in r.stdout
    assert f"newest backup {bid} is" in r.stdout

    # every job: the worst state, one line per job after the first
    r = check(cfg)
    assert r.returncode == 2, r.stdout
    lines = r.stdout.splitlines()
    assert lines[0].startswith("SNAPAGENT CRITICAL - 2 jobs: 1 critical, 1 warning; other: no backup |")
    assert lines[1].startswith("app: WARNING - last run failure") and lines[2] == "other: CRITICAL - no backup"
    assert "'other_age'=U" in lines[0] and "'app_age'=" in lines[0]

    bid2 = last_line(snapagent("backup", "app", config=cfg, check=True))
    r = check(cfg, "app")
    assert r.returncode == 0 and f"newest backup {bid2}" in r.stdout and "2 backup(s)" in r.stdout, r.stdout
    j = json.loads(snapagent("check", "app", "--json", config=cfg).stdout)
    assert j["state"] == "OK" and j["exit_code"] == 0 and j["jobs"][0]["job"] == "app"


def test_check_default_max_age_from_config(subvol, workdir):
    cfg, _ = setup(subvol, workdir, job_extra='check_max_age = "1s"')
    snapagent("backup", "app", config=cfg, check=True)
    time.sleep(1.2)
    r = check(cfg, "app")
    assert r.returncode == 2 and "(max 1s)" in r.stdout, r.stdout
    assert check(cfg, "app", "--max-age", "1h").returncode == 0


@pytest.mark.parametrize("case", ["missing", "not toml", "invalid key", "unknown job", "bad duration",
                                  "missing value", "unknown option", "record unreadable"])
def test_check_unknown_never_exits_2(workdir, case):
    cfg = write_config(workdir, '[jobs.app]\ndriver = "btrfs"\nvolumes = ["/srv/app"]\ntarget = "local"\n')
    args = {"missing value": ["--max-age"], "unknown option": ["--frobnicate"],
            "bad duration": ["app", "--max-age", "ten"], "unknown job": ["nosuchjob"]}.get(case, ["app"])
    if case == "missing":
        cfg = workdir / "nope.toml"
    elif case == "not toml":
        cfg.write_text("[agent\n")
    elif case == "invalid key":
        cfg.write_text(cfg.read_text() + 'check_max_age = "soon"\n')
    elif case == "record unreadable":  # e.g. check run as a user who may not read the state dir
        (workdir / "state" / "runs" / "app.json").mkdir(parents=True)
    r = snapagent("check", *args, config=cfg)
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
    assert r.stdout.startswith("SNAPAGENT UNKNOWN - ") and len(r.stdout.splitlines()) == 1, r.stdout
    assert "Traceback" not in r.stdout + r.stderr
    expected = {"missing": "config file not found", "not toml": "not valid TOML", "invalid key": "check_max_age",
                "unknown job": "unknown job 'nosuchjob'", "bad duration": "--max-age: invalid duration",
                "missing value": "invalid arguments", "unknown option": "invalid arguments",
                "record unreadable": "Is a directory: "}[case]
    assert expected in r.stdout, r.stdout


def test_metrics_scraped_by_node_exporter(subvol, workdir):
    textdir = workdir / "textfile"
    textdir.mkdir()
    prom = textdir / "snapagent.prom"
    cfg, switch = setup(subvol, workdir, agent=f"metrics_file = {toml_str(prom)}", other_job=True)
    with node_exporter(textdir) as url:
        t0 = time.time()
        bid = last_line(snapagent("backup", "app", config=cfg, check=True))
        assert stat.S_IMODE(prom.stat().st_mode) == 0o644
        m = json.loads(snapagent("show", bid, "--json", config=cfg, check=True).stdout)
        s = scrape(url)
        app, other = (("backup_job", "app"),), (("backup_job", "other"),)
        assert s[("node_textfile_scrape_error", ())] == 0
        assert s[("snapagent_last_run_success", app)] == 1
        assert t0 <= s[("snapagent_last_run_timestamp_seconds", app)] <= time.time()
        ok_at = s[("snapagent_last_success_timestamp_seconds", app)]
        assert ok_at == s[("snapagent_last_run_timestamp_seconds", app)]
        assert 0 < s[("snapagent_last_duration_seconds", app)] < time.time() - t0
        assert s[("snapagent_last_size_bytes", app)] == sum(a["size"] for a in m["artifacts"])
        assert s[("snapagent_last_freeze_window_seconds", app)] == pytest.approx(m["freeze_window_ms"] / 1000)
        split = {ph: sum(st["ms"] for st in m["freeze"]["steps"] if st["phase"] == ph) / 1000
                 for ph in ("lock", "snapshot", "verify", "release")}
        assert {ph: s[("snapagent_last_freeze_phase_seconds", (*app, ("phase", ph)))] for ph in split} == \
            pytest.approx(split, abs=1e-6)
        assert s[("snapagent_backups", (("backup_job", "app"), ("target", "local")))] == 1
        # every job of the config, not just the one that ran
        assert s[("snapagent_backups", (("backup_job", "other"), ("target", "local")))] == 0
        assert s[("snapagent_last_success_timestamp_seconds", other)] == 0
        assert ("snapagent_last_run_success", other) not in s

        time.sleep(1.1)
        failed_backup(cfg, switch)
        s = scrape(url)
        assert s[("node_textfile_scrape_error", ())] == 0
        assert s[("snapagent_last_run_success", app)] == 0
        assert s[("snapagent_last_run_timestamp_seconds", app)] > ok_at
        assert s[("snapagent_last_success_timestamp_seconds", app)] == ok_at
        assert s[("snapagent_last_size_bytes", app)] == sum(a["size"] for a in m["artifacts"])
        assert s[("snapagent_backups", (("backup_job", "app"), ("target", "local")))] == 1
    assert [p.name for p in textdir.iterdir()] == ["snapagent.prom"]  # no temp file left


def test_metrics_directory_missing_is_a_warning(subvol, workdir):
    prom = workdir / "no such dir" / "snapagent.prom"
    cfg, _ = setup(subvol, workdir, agent=f"metrics_file = {toml_str(prom)}")
    r = snapagent("backup", "app", config=cfg)
    assert r.returncode == 0 and "warning: metrics file" in r.stderr and "directory does not exist" in r.stderr, r.stderr
    assert not prom.parent.exists()


def test_pings_start_success_fail(subvol, workdir):
    with PingServer() as srv:
        cfg, switch = setup(subvol, workdir, job_extra=f"ping_url = {toml_str(f'{srv.url}/ping/{UUID}')}")
        bid = last_line(snapagent("backup", "app", config=cfg, check=True))
        assert [(m, p) for m, p, _ in srv.requests] == [("POST", f"/ping/{UUID}/start"), ("POST", f"/ping/{UUID}")]
        assert f"backup {bid} stored" in srv.requests[1][2]
        srv.requests.clear()
        r = failed_backup(cfg, switch)
        assert [(m, p) for m, p, _ in srv.requests] == [("POST", f"/ping/{UUID}/start"), ("POST", f"/ping/{UUID}/fail")]
        body = srv.requests[1][2]
        assert "snapshot snapagent-app-" in body  # the run's progress lines: the tail of its log
        assert "\nsnapagent: error: export of" in body and body.rstrip().endswith("injected failure: --create")
        assert UUID not in r.stderr


def test_failed_or_hanging_ping_is_a_warning(subvol, workdir):
    with hanging_server() as url:
        cfg, _ = setup(subvol, workdir, job_extra=f"ping_url = {toml_str(f'{url}/{UUID}')}\nping_timeout = \"1s\"")
        t = time.monotonic()
        r = snapagent("backup", "app", config=cfg)
        took = time.monotonic() - t
    assert r.returncode == 0, r.stderr
    assert "warning: ping start to 127.0.0.1 timed out after 1s" in r.stderr, r.stderr
    assert "warning: ping success to 127.0.0.1 timed out after 1s" in r.stderr
    assert UUID not in r.stderr and took < 60
    # nothing listens: refused at once
    cfg.write_text(cfg.read_text().replace(url, "http://127.0.0.1:1"))
    r = snapagent("backup", "app", config=cfg)
    assert r.returncode == 0 and "warning: ping start to 127.0.0.1 failed: ConnectionRefusedError" in r.stderr, r.stderr
    assert UUID not in r.stderr


def test_status_json_and_text(subvol, workdir):
    cfg, switch = setup(subvol, workdir, job_extra='schedule = "hourly"', other_job=True)
    bid = last_line(snapagent("backup", "app", config=cfg, check=True))
    failed_backup(cfg, switch)
    rows = {r["job"]: r for r in json.loads(snapagent("status", "--json", config=cfg, check=True).stdout)}
    app, other = rows["app"], rows["other"]
    m = json.loads(snapagent("show", bid, "--json", config=cfg, check=True).stdout)
    size = sum(a["size"] for a in m["artifacts"])
    assert app["last_run"]["result"] == "failure" and "injected failure" in app["last_run"]["error"]
    assert app["last_run"]["backup_id"] is None and app["last_run"]["duration_seconds"] > 0
    assert app["last_success"]["backup_id"] == bid and app["last_success"]["size_bytes"] == size
    assert app["last_success"]["freeze_window_seconds"] == pytest.approx(m["freeze_window_ms"] / 1000)
    assert app["targets"] == {"local": {"backups": 1, "damaged": 0, "size_bytes": size, "oldest": bid, "newest": bid,
                                        "oldest_created": m["created"], "newest_created": m["created"]}}
    assert app["backups"] == 1 and app["size_bytes"] == size and app["schedule"] == "hourly"
    from datetime import datetime, timezone
    nxt = datetime.fromisoformat(app["next_run"].replace("Z", "+00:00"))
    assert 0 < (nxt - datetime.now(timezone.utc)).total_seconds() <= 3600
    assert other["last_run"] is None and other["last_success"] is None and other["next_run"] is None
    assert other["targets"]["local"]["backups"] == 0
    assert [r["job"] for r in json.loads(snapagent("status", "app", "--json", config=cfg, check=True).stdout)] == ["app"]
    r = snapagent("status", "nosuchjob", config=cfg)
    assert r.returncode == 2 and "unknown job 'nosuchjob'" in r.stderr, r.stderr
    text = snapagent("status", config=cfg, check=True).stdout
    assert "job app:" in text and "last run:     failure at" in text and f"last success: {bid}" in text
    assert "target local: 1 backup(s)" in text and "job other:" in text and "last success: never" in text


def test_run_record_of_an_interrupted_run(subvol, workdir):
    cfg, _ = setup(subvol, workdir)
    bid = last_line(snapagent("backup", "app", config=cfg, check=True))
    marker = workdir / "tar-started"
    slow = slow_tool(workdir / "slow-tar", "tar", marker, 30, when="--create")
    cfg.write_text(cfg.read_text().replace(str(workdir / "failing-tar"), str(slow)))
    proc = subprocess.Popen([sys.executable, "-m", "snapagent", "-c", str(cfg), "backup", "app"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1 and "interrupted by SIGTERM" in err, err
    rec = runs.load(workdir / "state", "app")
    assert rec.result == "interrupted" and "SIGTERM" in rec.error and rec.backup_id is None
    assert rec.last_success is not None and rec.last_success.backup_id == bid
    p = runs.path(workdir / "state", "app")
    assert stat.S_IMODE(p.stat().st_mode) == 0o600 and stat.S_IMODE(p.parent.stat().st_mode) == 0o700
    assert os.listdir(p.parent) == ["app.json"]

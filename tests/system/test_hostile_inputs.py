"""The hostile-input corpus through the real CLI, every program it executes traced (a Python audit
hook, `tests/helpers/exectrace.py`):

- every bad config (`tests/configs/invalid/`, each naming the key it must be refused for) and
  every bad argument gets exit 2, one message naming the problem, no traceback, nothing created,
  and nothing executed at all;
- hostile names (spaces, `;`, `$()`, backticks, a leading `-`, quotes) go through backup,
  restore and drill as plain argv elements: no shell ever runs, nothing they "say" happens.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.helpers import snapplaces
from tests.helpers.cli import ROOT, last_line, log_lines, snapagent, toml_str, write_config
from tests.helpers.exectrace import shells

INVALID = sorted((ROOT / "tests" / "configs" / "invalid").glob("*.toml"))
PWNED = Path("/tmp/snapagent-pwned")


def expected(path: Path) -> str:
    return path.read_text().splitlines()[0].removeprefix("# expect: ")


def tree(d: Path) -> list[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


@pytest.fixture
def traced(tmp_path):
    log = tmp_path / "exec.log"
    log.touch()
    return log


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_bad_config(path, tmp_path, traced):
    before = tree(tmp_path)
    r = snapagent("backup", "app", config=path, trace=traced)
    assert r.returncode == 2, r.stderr
    assert expected(path) in r.stderr and log_lines(r.stderr.splitlines()[0], "error"), r.stderr  # the first line
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert traced.read_text() == "", "a bad config must not execute anything"
    assert tree(tmp_path) == before and not Path("/tmp/snapagent-corpus-target").exists()


def valid_config(d: Path) -> Path:
    cfg = d / "snapagent.toml"
    cfg.write_text(f'[agent]\nstate_dir = {toml_str(d / "state")}\n[targets.local]\ntype = "directory"\n'
                   f'path = {toml_str(d / "backups")}\n[jobs.app]\ndriver = "btrfs"\nvolumes = ["/srv/app"]\n'
                   'target = "local"\n')
    return cfg


BAD_ARGS = {
    "no command": ([], "COMMAND"),
    "unknown command": (["frobnicate"], "invalid choice: 'frobnicate'"),
    "backup without a job": (["backup"], "job"),
    "unknown job": (["backup", "nope"], "unknown job 'nope'"),
    "job with shell syntax": (["backup", "a;b $(touch /tmp/snapagent-pwned)"], "unknown job 'a;b $(touch"),
    "job like an option": (["backup", "--", "-rf"], "unknown job '-rf'"),
    "misspelt option": (["backup", "app", "--dryrun"], "unrecognized arguments: --dryrun"),
    "extra argument": (["backup", "app", "--dry-run", "extra"], "unrecognized arguments: extra"),
    "restore without --to": (["restore", "app-20260101T000000Z"], "--to"),
    "--to without a value": (["restore", "app@latest", "--to"], "--to"),
    "id with ..": (["restore", "../../etc", "--to", "d"], "ID: '../../etc' is not a backup id"),
    "id with shell syntax": (["show", "app-$(touch /tmp/snapagent-pwned)"], "is not a backup id"),
    "empty id": (["verify", ""], "ID: '' is not a backup id"),
    "id with a newline": (["drill", "app-20260101T000000Z\nx"], "is not a backup id"),
    "huge id": (["show", "a" * 1000], "is not a backup id"),
    "latest of an unknown job": (["show", "nope@latest"], "unknown job 'nope'"),
    "list of an unknown job": (["list", "nope"], "unknown job 'nope'"),
    "option after list": (["list", "-rf"], "unrecognized arguments: -rf"),
    "-v with -q": (["-v", "-q", "list"], "not allowed with argument"),
    "config without a subcommand": (["config"], "SUBCOMMAND"),
    "unknown config subcommand": (["config", "frob"], "invalid choice: 'frob'"),
    "cleanup with an argument": (["cleanup", "extra"], "unrecognized arguments: extra"),
    "drill --keep with a value": (["drill", "app@latest", "--keep=1"], "--keep"),
    "show without an id": (["show"], "id"),
    "restore with two ids": (["restore", "a", "b", "--to", "d"], "unrecognized arguments: b"),
    "--json with a value": (["--json=1", "list"], "--json"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARGS))
def test_bad_arguments(case, tmp_path, traced):
    args, words = BAD_ARGS[case]
    cfg = valid_config(tmp_path)
    before = tree(tmp_path)
    r = snapagent(*args, config=cfg, trace=traced)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert words in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert log_lines(r.stderr, "error"), r.stderr
    assert traced.read_text() == "" and tree(tmp_path) == before and not PWNED.exists()


@pytest.mark.parametrize("config_arg", ["directory", "missing"])
def test_bad_config_path(config_arg, tmp_path, traced):
    path = tmp_path if config_arg == "directory" else tmp_path / "nope" / "snapagent.toml"
    r = snapagent("list", config=path, trace=traced)
    assert r.returncode == 2 and "config file not" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert traced.read_text() == ""


@pytest.mark.parametrize("mode", [0o666, 0o620])
def test_a_config_others_can_change_runs_nothing(mode, tmp_path, traced):
    """Its argv lists run as root: a config writable by group/others is refused before anything
    in it runs, naming the file and the fix."""
    cfg = valid_config(tmp_path)
    cfg.write_text(cfg.read_text() + '[[jobs.app.quiesce]]\ntype = "command"\n'
                   f'pre = ["/usr/bin/touch", {toml_str(PWNED)}]\n')
    cfg.chmod(mode)
    before = tree(tmp_path)
    for args in (["backup", "app"], ["config", "check"]):
        r = snapagent(*args, config=cfg, trace=traced)
        assert r.returncode == 2 and f"{cfg} is writable by group/others (mode {mode:04o})" in r.stderr, r.stderr
        assert f"chmod 600 {cfg}" in r.stderr and "Traceback" not in r.stderr and r.stdout == ""
    assert traced.read_text() == "" and tree(tmp_path) == before and not PWNED.exists()


def test_the_corpus_is_large_enough():
    assert len(INVALID) + len(BAD_ARGS) + 2 >= 50


@pytest.mark.root
@pytest.mark.btrfs
def test_hostile_names_run_no_shell(btrfs_root, workdir, traced):
    """A subvolume and a database whose names are shell syntax: backup, verify, restore and drill
    run every tool with them as plain argv elements — no shell, no command substitution."""
    name = "-x; $(touch snapagent-pwned) `touch snapagent-pwned` 'q' \"dq\" a b"  # no '/': one component
    vol = btrfs_root / name
    subprocess.run(["btrfs", "subvolume", "create", "--", str(vol)], check=True, capture_output=True)
    try:
        db = vol / f"{name}.db"
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE t (a)")
        conn.execute("INSERT INTO t VALUES (1)")
        conn.commit()
        conn.close()
        cfg = write_config(workdir, f'[jobs.app]\ndriver = "btrfs"\nvolumes = [{toml_str(vol)}]\ntarget = "local"\n'
                                    f'[[jobs.app.quiesce]]\ntype = "sqlite"\npath = {toml_str(db)}\n')
        bid = last_line(snapagent("backup", "app", config=cfg, trace=traced, check=True))
        snapagent("verify", bid, config=cfg, trace=traced, check=True)
        r = snapagent("restore", bid, "--to", str(workdir / f"{name} dest"), config=cfg, trace=traced, check=True)
        assert f"{name}.db" in r.stdout
        d = snapagent("drill", bid, config=cfg, trace=traced, check=True)
        assert "PASSED" in d.stdout
        log = traced.read_text()
        assert log.count("\n") >= 5, log  # tar, btrfs … were traced
        assert shells(log) == [], shells(log)
        argvs = [json.loads(line.split("\t")[2]) for line in log.splitlines()]
        assert any(any(name in a for a in argv) for argv in argvs)  # the name reached the tools, as one argument
        assert all(line.split("\t")[1].startswith("/") for line in log.splitlines())  # resolved tools only
        assert not [d for d in (Path.cwd(), workdir, vol, Path("/")) if (d / "snapagent-pwned").exists()]
    finally:
        for snap in snapplaces.snapdir(vol).glob("*"):
            subprocess.run(["btrfs", "subvolume", "delete", "--", str(snap)], capture_output=True)
        subprocess.run(["btrfs", "subvolume", "delete", "--", str(vol)], capture_output=True)

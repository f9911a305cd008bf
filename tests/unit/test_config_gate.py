"""`config check` as the gate: the config file's own permissions, the secret files it names, the
relations between its durations, and every problem reported at once (one line each, the key named)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from snapagent import config
from snapagent.errors import ConfigError, UsageError
from snapagent.util.age import load_identities
from tests.helpers.caps import need

BASE = ('[agent]\nstate_dir = "/tmp/snapagent-gate-state"\n[targets.t]\ntype = "directory"\npath = "/tmp/x"\n'
        '[jobs.j]\ndriver = "btrfs"\nvolumes = ["/srv/a"]\ntarget = "t"\n')


def write(tmp_path: Path, text: str = BASE, mode: int = 0o600) -> Path:
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    cfg.chmod(mode)
    return cfg


def refused(cfg: Path) -> list[str]:
    """Return the problem lines of loading ``cfg`` (it must be refused, exit 2)."""
    with pytest.raises(ConfigError) as e:
        config.load(cfg)
    assert e.value.exit_code == 2
    return [ln.strip() for ln in str(e.value).splitlines()[1:]]


@pytest.mark.parametrize("mode", [0o620, 0o602, 0o666, 0o777])
def test_a_config_others_can_change_is_refused(tmp_path, mode):
    cfg = write(tmp_path, mode=mode)
    [line] = refused(cfg)
    assert f"{cfg} is writable by group/others (mode {mode:04o})" in line and f"chmod 600 {cfg}" in line


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o640, 0o644])
def test_a_config_only_its_owner_can_change_is_accepted(tmp_path, mode):
    assert config.load(write(tmp_path, mode=mode)).job("j")


def test_a_config_owned_by_another_user_is_refused(tmp_path):
    need(os.geteuid() == 0, "chown to another user needs root")
    cfg = write(tmp_path)
    os.chown(cfg, 65534, 65534)
    [line] = refused(cfg)
    assert "owned by uid 65534" in line and "chown root" in line


def secret(tmp_path: Path, name: str, mode: int, text: str = "x\n") -> Path:
    p = tmp_path / name
    p.write_text(text)
    p.chmod(mode)
    return p


def quiesce(text: str) -> str:
    return BASE + "[[jobs.j.quiesce]]\n" + text


@pytest.mark.parametrize("kind", ["mysql", "postgresql", "restic"])
@pytest.mark.parametrize("state", ["missing", "0644", "0640", "directory", "other owner"])
def test_every_secret_file_must_exist_and_be_private(tmp_path, kind, state):
    """MySQL option_file, a passfile in a PostgreSQL DSN, restic's password_file: one rule, checked
    when the config is read (not at backup time), the key named."""
    p = tmp_path / "secret file"
    if state == "directory":
        p.mkdir()
    elif state != "missing":
        secret(tmp_path, p.name, 0o600 if state == "other owner" else int(state, 8), "[client]\nuser = u\n")
    if state == "other owner":
        need(os.geteuid() == 0, "chown to another user needs root")
        os.chown(p, 65534, 65534)
    text, key = {
        "mysql": (quiesce(f'type = "mysql"\noption_file = "{p}"\n'), "jobs.j.quiesce[0].option_file"),
        "postgresql": (quiesce(f'type = "postgresql"\ndsn = "host=/run/postgresql passfile=\'{p}\'"\n'),
                       "jobs.j.quiesce[0].dsn: passfile"),
        "restic": (BASE + f'[targets.r]\ntype = "restic"\nrepository = "/srv/r"\npassword_file = "{p}"\n',
                   "targets.r.password_file"),
    }[kind]
    [line] = refused(write(tmp_path, text))
    why = {"missing": "No such file or directory", "0644": "has mode 0644", "0640": "has mode 0640",
           "directory": "is not a regular file", "other owner": "owned by uid 65534"}[state]
    assert line.startswith(key) and str(p) in line and why in line, line
    if state.startswith("06"):
        assert f"chmod 600 {p}" in line


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_secret_files_are_accepted(tmp_path, mode):
    p = secret(tmp_path, "my.cnf", mode, "[client]\nuser = u\n")
    pw = secret(tmp_path, "pgpass", mode)
    cfg = config.load(write(tmp_path, quiesce(f'type = "mysql"\noption_file = "{p}"\n') +
                            f'[[jobs.j.quiesce]]\ntype = "postgresql"\ndsn = "host=/run/postgresql passfile={pw}"\n'))
    assert [c.type for c, _ in cfg.job("j").quiescers] == ["mysql", "postgresql"]


def test_an_age_identity_owned_by_another_user_is_refused(tmp_path):
    need(os.geteuid() == 0, "chown to another user needs root")
    import pyrage

    p = secret(tmp_path, "key.txt", 0o600, str(pyrage.x25519.Identity.generate()) + "\n")
    assert load_identities(p).keys
    os.chown(p, 65534, 65534)
    with pytest.raises(UsageError, match=r"--identity: .*owned by uid 65534"):
        load_identities(p)


def job_with(tmp_path: Path, job: str, quiescers: str = "") -> Path:
    return write(tmp_path, BASE + job + quiescers)


SQLITE = '[[jobs.j.quiesce]]\ntype = "sqlite"\npath = "/srv/a/a.db"\n'
MYSQL = '[[jobs.j.quiesce]]\ntype = "mysql"\nsocket = "/run/mysqld/mysqld.sock"\n'


@pytest.mark.parametrize("job, quiescers, ok", [
    ('max_freeze = "2s"\n', SQLITE + 'busy_timeout = "2s"\n', True),   # equal fits
    ('max_freeze = "2s"\n', SQLITE + 'busy_timeout = "2.5s"\n', False),
    ('max_freeze = "2s"\n', SQLITE + MYSQL, True),                     # defaults (5s, 3s) are cut silently: not set
    ('max_freeze = "2s"\nmax_lock_wait = "6s"\n', SQLITE + 'busy_timeout = "5s"\n', True),  # the first lock: max_lock_wait
    ('max_freeze = "2s"\nmax_lock_wait = "6s"\n', SQLITE + MYSQL + 'lock_wait_timeout = "3s"\n', False),  # later: max_freeze
    ('max_lock_wait = "1s"\n', MYSQL + 'lock_wait_timeout = "1500ms"\n', False),
])
def test_lock_waits_fit_in_the_freeze(tmp_path, job, quiescers, ok):
    cfg = job_with(tmp_path, job, quiescers)
    if ok:
        assert config.load(cfg)
    else:
        [line] = refused(cfg)
        assert "is longer than the job's max_" in line and "cuts every lock wait short" in line, line


@pytest.mark.parametrize("value, ok", [('"10m"', True), ('"600s"', True), ('"601s"', False), ('"7d"', False),
                                       ("10", False), ('"10"', False), ("10.5", False), ('"500ms"', True)])
def test_max_freeze_needs_a_unit_and_stays_under_the_ceiling(tmp_path, value, ok):
    cfg = job_with(tmp_path, f"max_freeze = {value}\n")
    if ok:
        assert config.load(cfg)
    else:
        [line] = refused(cfg)
        assert line.startswith("jobs.j.max_freeze: ") and ("has no unit" in line or "ceiling of 600s" in line), line


def test_every_problem_is_reported_at_once(tmp_path):
    """Permissions, secret files, relations, paths and plugin keys: one line each, the key first."""
    text = (BASE.replace('"/srv/a"]', '"/srv/a", "rel/b"]') + 'max_freeze = "2s"\nping_timeout = 3\n' + SQLITE +
            'busy_timeout = "4s"\n' + '[[jobs.j.quiesce]]\ntype = "mysql"\noption_file = "/nonexistent/my.cnf"\n'
            '[[jobs.j.quiesce]]\ntype = "command"\npre = "not a list"\n'
            '[jobs.k]\ndriver = "btrfs"\nvolumes = ["/srv/k"]\ntarget = "t"\nmax_freeze = "1h"\n')
    lines = refused(write(tmp_path, text, 0o666))
    keys = sorted(ln.split(":")[0] if not ln.startswith("/") else "(file)" for ln in lines)
    assert keys == ["(file)", "jobs.j.ping_timeout", "jobs.j.quiesce[0].busy_timeout", "jobs.j.quiesce[1].option_file",
                    "jobs.j.quiesce[2].pre", "jobs.j.volumes[1]", "jobs.k.max_freeze"], lines


def test_config_check_names_every_program_that_cannot_run(tmp_path):
    """`config check` (not `list` or `restore`, which never run them): agent.tools entries and a
    command hook's argv[0]; exit 2, one line each, nothing executed."""
    from tests.helpers.cli import snapagent

    marker = tmp_path / "ran"
    cfg = write(tmp_path, BASE.replace("[targets.t]", 'tools = { btrfs = "btrfs-wrapper", tar = "/nonexistent/tar" }\n'
                                                      "[targets.t]") +
                f'[[jobs.j.quiesce]]\ntype = "command"\npre = ["/nonexistent/freeze", "{marker}"]\n'
                'post = ["/usr/bin/touch"]\nhold = ["no-such-program-anywhere"]\n'
                'probe = ["/nonexistent/probe", "{restored:/srv/a}", "{restored:/srv/b}"]\n')
    r = snapagent("config", "check", config=cfg)
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.splitlines()[1:] == [
        "  agent.tools.btrfs: must be an absolute path, got 'btrfs-wrapper'",
        "  agent.tools.tar: /nonexistent/tar is not an executable file",
        "  jobs.j.quiesce[0].pre: program not found: /nonexistent/freeze (not executable, or not on PATH)",
        "  jobs.j.quiesce[0].hold: program not found: no-such-program-anywhere (not executable, or not on PATH)",
        "  jobs.j.quiesce[0].probe: program not found: /nonexistent/probe (not executable, or not on PATH)",
        "  jobs.j.quiesce[0].probe: '{restored:/srv/b}' names no volume of the job (its volumes: '/srv/a')"], r.stderr
    j = json.loads(snapagent("--json", "config", "check", config=cfg).stdout)  # the same, for a script
    assert j["exit_code"] == 2 and j["error"].endswith("6 problem(s)") and j["details"] == [
        line.strip() for line in r.stderr.splitlines()[1:]]
    assert snapagent("list", config=cfg).returncode == 0 and not marker.exists()


def test_config_check_connect_reports_every_preflight_problem(tmp_path):
    """--connect runs each job's preflight: a missing volume does not hide the database that is
    missing too, nor the other job's problem; exit 1 (the host is wrong, not the file)."""
    from tests.helpers.cli import snapagent

    cfg = write(tmp_path, BASE.replace('"/srv/a"', f'"{tmp_path}/no volume"') +
                f'[[jobs.j.quiesce]]\ntype = "sqlite"\npath = "{tmp_path}/no volume/a.db"\n'
                f'[jobs.k]\ndriver = "btrfs"\nvolumes = ["{tmp_path}"]\ntarget = "t"\n')
    assert snapagent("config", "check", config=cfg).returncode == 0
    r = snapagent("config", "check", "--connect", config=cfg)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()[1:]
    assert [ln.split(":")[0].strip() for ln in lines] == ["jobs.j", "jobs.j", "jobs.k"], lines
    assert "no volume': no such directory" in lines[0] and "a.db' does not exist" in lines[1], lines
    assert "not on a btrfs filesystem" in lines[2] or "not a btrfs subvolume" in lines[2], lines


def test_config_check_notes_what_will_not_fail_a_backup_but_should_be_fixed(tmp_path):
    """A job whose drill probes nothing, and a WAL archive prune would clean for a job without
    retention rules: said under the ok line (and in --json "notes"), exit 0; gone once fixed."""
    from tests.helpers.cli import snapagent

    pg = ('[[jobs.j.quiesce]]\ntype = "postgresql"\ndsn = "dbname=app"\nmode = "backup-api"\n'
          'wal_archive = "/srv/wal archive"\n')
    bare = '[jobs.bare]\ndriver = "btrfs"\nvolumes = ["/srv/b"]\ntarget = "t"\n'
    cfg = write(tmp_path, BASE + pg + bare)
    r = snapagent("config", "check", config=cfg)
    assert r.returncode == 0, r.stderr
    notes = [ln.strip() for ln in r.stdout.splitlines() if ln.strip().startswith("note:")]
    assert notes == [
        "note: jobs.j.quiesce[0].wal_prune: /srv/wal archive is cleaned only after prune, and the job has no "
        "retention rules: it grows until [jobs.j.retention] has some",
        "note: jobs.bare: a drill of this job probes nothing and cannot pass: add a quiescer, or a command hook "
        "with only a `probe`"], r.stdout
    j = json.loads(snapagent("--json", "config", "check", config=cfg).stdout)
    assert j["ok"] is True and j["notes"] == [n.removeprefix("note: ") for n in notes]
    probe = '[[jobs.bare.quiesce]]\ntype = "command"\nprobe = ["/bin/true"]\n'
    fixed = write(tmp_path, BASE + pg + '[jobs.j.retention]\nkeep_last = 3\n' + bare + probe)
    j = json.loads(snapagent("--json", "config", "check", config=fixed).stdout)
    assert j["ok"] is True and j["notes"] == [], j


def test_a_command_hook_without_probe_and_fsfreeze_probe_nothing():
    from snapagent.quiesce.command import CommandConfig, CommandQuiescer
    from snapagent.quiesce.fsfreeze import FsfreezeQuiescer
    from snapagent.quiesce.sqlite import SqliteQuiescer

    assert not CommandQuiescer.probes(CommandConfig(pre=["/bin/true"]))
    assert CommandQuiescer.probes(CommandConfig(probe=["/bin/true"]))
    assert not FsfreezeQuiescer.probes(None) and SqliteQuiescer.probes(None)

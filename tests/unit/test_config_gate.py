"""`config check` as the gate: the config file's own permissions, the secret files it names, the
relations between its durations, and every problem reported at once (one line each, the key named)."""

from __future__ import annotations

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

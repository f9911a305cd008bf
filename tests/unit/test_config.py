"""Every sample config is accepted; every file in tests/configs/invalid fails naming its key."""

from pathlib import Path

import pytest

from snapagent import config
from snapagent.errors import ConfigError
from tests.helpers.cli import ROOT, snapagent

INVALID = sorted((ROOT / "tests" / "configs" / "invalid").glob("*.toml"))


def expected_key(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path} must start with '# expect: <key>'"
    return first[len("# expect: "):]


def test_example_config_is_valid():
    cfg = config.load(ROOT / "etc" / "snapagent.toml")
    job = cfg.job("app")
    assert job.cfg.max_freeze == 10.0 and job.export == "tar"
    assert [c.type for c, _ in job.quiescers] == ["sqlite"]


def test_example_config_check_cli():
    r = snapagent("config", "check", config=ROOT / "etc" / "snapagent.toml")
    assert r.returncode == 0, r.stderr
    assert "ok (1 job(s), 1 target(s))" in r.stdout


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.stem)
def test_invalid_config_names_the_key(path):
    with pytest.raises(ConfigError) as ei:
        config.load(path)
    assert expected_key(path) in str(ei.value)
    assert ei.value.exit_code == 2


@pytest.mark.parametrize("path", INVALID[:3], ids=lambda p: p.stem)
def test_invalid_config_cli_exit_2_one_message(path):
    r = snapagent("config", "check", config=path)
    assert r.returncode == 2
    assert expected_key(path) in r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_missing_config_file_exit_2(tmp_path):
    r = snapagent("list", config=tmp_path / "nope.toml")
    assert r.returncode == 2 and "config file not found" in r.stderr


def test_env_var_selects_config(tmp_path):
    r = snapagent("config", "check", env={"SNAPAGENT_CONFIG": str(ROOT / "etc" / "snapagent.toml")})
    assert r.returncode == 0, r.stderr


def test_unknown_job_exit_2():
    r = snapagent("backup", "nosuchjob", config=ROOT / "etc" / "snapagent.toml")
    assert r.returncode == 2 and "unknown job 'nosuchjob'" in r.stderr


def test_usage_error_exit_2():
    r = snapagent("restore", "some-id")  # --to missing
    assert r.returncode == 2 and "--to" in r.stderr


def test_a_secret_in_a_config_others_can_read_is_refused(tmp_path):
    """Built-in plugins take no secret in the config at all; a plugin that does (here, the
    free-form `agent.tools` table stands in for one) makes the file's permissions matter."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('[agent]\ntools = { api_token = "hunter2" }\n[targets.t]\ntype = "directory"\npath = "/tmp/x"\n'
                   '[jobs.j]\ndriver = "btrfs"\nvolumes = ["/srv/a"]\ntarget = "t"\n')
    cfg.chmod(0o644)
    with pytest.raises(ConfigError, match=r"agent\.tools\.api_token holds a secret .*mode 0644.*chmod 600") as e:
        config.load(cfg)
    assert "hunter2" not in str(e.value)
    cfg.chmod(0o600)
    assert config.load(cfg).agent.tools["api_token"] == "hunter2"

"""The restic target's config: secret files (exist, 0600), the environment file, the child env."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from snapagent.targets.restic.config import ResticConfig, parse_env_file
from snapagent.targets.restic.repo import explain, public, restic_env


def secret(path, text="pw\n", mode=0o600):
    path.write_text(text)
    path.chmod(mode)
    return path


def test_valid_config_and_child_env(tmp_path):
    pw = secret(tmp_path / "pw")
    env = secret(tmp_path / "env", "# creds\nAWS_ACCESS_KEY_ID=AKIA\nexport AWS_SECRET_ACCESS_KEY = s=e;c $x\n\n")
    cfg = ResticConfig(repository="s3:http://127.0.0.1:9000/b", password_file=pw, environment_file=env)
    assert cfg.host and cfg.compression == "zstd" and cfg.prune is True
    assert restic_env(cfg) == {"AWS_ACCESS_KEY_ID": "AKIA", "AWS_SECRET_ACCESS_KEY": " s=e;c $x",
                               "RESTIC_REPOSITORY": "s3:http://127.0.0.1:9000/b", "RESTIC_PASSWORD_FILE": str(pw)}


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_password_file_must_be_0600(tmp_path, mode):
    with pytest.raises(ValidationError, match="chmod 600"):
        ResticConfig(repository="/r", password_file=secret(tmp_path / "pw", mode=mode))


def test_missing_password_file_and_relative_repository(tmp_path):
    with pytest.raises(ValidationError, match="No such file"):
        ResticConfig(repository="/r", password_file=tmp_path / "nope")
    with pytest.raises(ValidationError, match="absolute path or start with"):
        ResticConfig(repository="repo", password_file=secret(tmp_path / "pw"))


@pytest.mark.parametrize("line", ["RESTIC_PASSWORD=x", "RESTIC_PASSWORD_COMMAND=cat /x", "PATH=/tmp",
                                  "LD_PRELOAD=/x.so", "1BAD=x", "no equals sign", "RESTIC_REPOSITORY=/other"])
def test_env_file_refuses_bad_lines_without_showing_values(tmp_path, line):
    f = secret(tmp_path / "env", f"OK=1\n{line}\n")
    with pytest.raises(ValueError, match="line 2") as e:
        parse_env_file(f)
    assert "/x.so" not in str(e.value) and "cat /x" not in str(e.value)


def test_env_file_must_be_0600(tmp_path):
    with pytest.raises(ValidationError, match="environment_file"):
        ResticConfig(repository="/r", password_file=secret(tmp_path / "pw"),
                     environment_file=secret(tmp_path / "env", "A=b\n", 0o644))


def test_public_hides_url_credentials():
    assert public("rest:https://user:s3cret@host:8000/repo/") == "rest:https://host:8000/repo/"
    assert public("/srv/restic") == "/srv/restic"


@pytest.mark.parametrize("stderr,expect", [
    ("Fatal: wrong password or no key found", "wrong password"),
    ("Fatal: unable to open config file: stat /x/config: no such file or directory\n"
     "Is there a repository at the following location?\n/x", "does not exist"),
    ('Head "http://127.0.0.1:1/config": dial tcp 127.0.0.1:1: connect: connection refused', "unreachable"),
    ("blob not removed, server response: 403 Forbidden (403)", "append-only"),
    ("Fatal: unable to create lock in backend: repository is already locked by PID 7", "restic -r /r unlock"),
])
def test_explain(tmp_path, stderr, expect):
    cfg = ResticConfig(repository="/r", password_file=secret(tmp_path / "pw"))
    assert expect in explain(cfg, stderr, "pruning")


def test_repository_lock_serialises_writers(tmp_path):
    import threading
    import time

    from snapagent.targets.restic.repo import lock_path, repo_lock
    path = lock_path(tmp_path / "state", "rest:http://h/r/")
    assert path == lock_path(tmp_path / "state", "rest:http://h/r/") != lock_path(tmp_path / "state", "/other")
    order = []

    def second():
        with repo_lock(path):
            order.append("second")

    with repo_lock(path):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        order.append("first")
    t.join(5)
    assert order == ["first", "second"]
    assert oct(path.stat().st_mode & 0o777) == "0o600" and oct(path.parent.stat().st_mode & 0o777) == "0o700"

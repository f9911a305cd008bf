"""fsfreeze without freezing: config validation, and ``undo``'s exact argv through a fake runner."""

from __future__ import annotations

import tomllib

import pytest

from snapagent import config as configmod
from snapagent.errors import CommandFailed, ConfigError, OperationFailed
from snapagent.quiesce.fsfreeze.quiescer import FsfreezeQuiescer
from tests.helpers.fakerunner import FakeRunner, Reply


def fake(rc=0, stderr="", dry_run=False):
    return FakeRunner(lambda argv: Reply(rc, "", stderr), dry_run=dry_run)


def test_undo_thaws_with_fsfreeze_u():
    r = fake()
    assert FsfreezeQuiescer.undo({"kind": "freeze", "key": "/"}, r) == "thawed /"
    assert r.argvs(mutating=True) == [["fsfreeze", "-u", "/"]] and r.argvs() == [["fsfreeze", "-u", "/"]]


def test_undo_not_frozen_is_success():
    r = fake(rc=1, stderr="fsfreeze: /: unfreeze failed: Invalid argument\n")
    assert FsfreezeQuiescer.undo({"kind": "freeze", "key": "/"}, r) == "/ was not frozen"


def test_undo_other_failure_raises():
    with pytest.raises(CommandFailed):
        FsfreezeQuiescer.undo({"kind": "freeze", "key": "/"}, fake(rc=1, stderr="Operation not permitted"))


def test_undo_dry_run_and_gone_mounts(tmp_path):
    assert FsfreezeQuiescer.undo({"kind": "freeze", "key": "/"}, fake(dry_run=True)) == "would thaw /"
    r = fake()
    assert "not mounted any more" in FsfreezeQuiescer.undo({"kind": "freeze", "key": str(tmp_path / "gone")}, r)
    assert "not mounted any more" in FsfreezeQuiescer.undo({"kind": "freeze", "key": str(tmp_path)}, r)
    assert r.argvs() == []
    with pytest.raises(OperationFailed, match="unknown journal record"):
        FsfreezeQuiescer.undo({"kind": "snapshot", "key": "/"}, r)


@pytest.mark.parametrize("body, key, msg", [
    ("mountpoints = []", "jobs.j.quiesce[0].mountpoints", "at least 1"),
    ('mountpoints = ["relative/dir"]', "jobs.j.quiesce[0].mountpoints", "absolute path"),
    ('mountpoints = ["/mnt/a", "/mnt/a/"]', "jobs.j.quiesce[0].mountpoints", "listed twice"),
    ('mountpoints = ["/mnt/a"]\nmax_freeze = "1s"', "jobs.j.quiesce[0].max_freeze", "unknown key"),
    ("", "jobs.j.quiesce[0].mountpoints", "required key is missing"),
])
def test_bad_config_names_the_key(tmp_path, body, key, msg):
    text = f"""
[targets.local]
type = "directory"
path = "{tmp_path}/b"
[jobs.j]
driver = "btrfs"
volumes = ["/srv/x"]
target = "local"
[[jobs.j.quiesce]]
type = "fsfreeze"
{body}
"""
    with pytest.raises(ConfigError) as e:
        configmod.parse(tomllib.loads(text), tmp_path / "c.toml")
    assert key in str(e.value) and msg in str(e.value), str(e.value)

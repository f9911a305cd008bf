"""Command quiescer without processes: exact argv and environment through a fake runner, the
post-only-after-pre rule, and config validation (errors name the key)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from snapagent import config as configmod
from snapagent.errors import ConfigError, QuiesceFailed
from snapagent.plugin.quiescer import QuiesceContext
from snapagent.quiesce.command import CommandConfig, CommandQuiescer, parse_values
from tests.helpers.fakerunner import FakeRunner, Reply

NASTY = ["--weird name", "a;b", "$(rm -rf /)", "two words", "-"]


def fake(fail=None, stdout=""):
    """A FakeRunner whose commands print ``stdout``; ``fail`` maps argv[0] to an exit code."""
    fail = fail or {}
    return FakeRunner(lambda argv: Reply(fail[argv[0]], "", "boom\n") if argv[0] in fail else stdout)


def env_of(call):
    return {k: v for k, v in call.env.items() if k.startswith("SNAPAGENT_")}


def make(runner, volumes=("/srv/a b", "/srv/c;d"), **cfg):
    ctx = QuiesceContext("job one", runner, list(volumes))
    return CommandQuiescer(CommandConfig(**cfg), ctx)


def test_pre_and_post_exact_argv_and_env():
    r = fake(stdout="compacted\nwal_offset=4096\nnot a value line\n")
    q = make(r, pre=["pre-tool", *NASTY], post=["post-tool", *NASTY], timeout="7s")
    q.quiesce(time.monotonic() + 100)
    rec = q.release()
    assert [c.argv for c in r.calls] == [["pre-tool", *NASTY], ["post-tool", *NASTY]]
    assert all(c.mutating for c in r.calls)
    assert env_of(r.calls[0]) == {"SNAPAGENT_JOB": "job one", "SNAPAGENT_PHASE": "pre", "SNAPAGENT_DRY_RUN": "0",
                                 "SNAPAGENT_VOLUMES": "/srv/a b\n/srv/c;d"}
    assert env_of(r.calls[1])["SNAPAGENT_PHASE"] == "post"
    assert r.calls[0].timeout == 7.0 and r.calls[1].timeout == 7.0
    assert rec["pre"]["values"] == {"wal_offset": "4096"}
    assert rec["pre"]["stdout"].startswith("compacted")
    assert rec["name"] == "pre-tool" and rec["consistency"] == "application"
    assert q.release()["post"] == rec["post"] and len(r.calls) == 2  # release is idempotent


def test_pre_timeout_is_bounded_by_the_deadline():
    r = fake()
    q = make(r, pre=["pre-tool"], timeout="60s")
    q.quiesce(time.monotonic() + 2)
    assert 1.5 < r.calls[0].timeout <= 2


def test_no_time_left_fails_without_running():
    r = fake()
    q = make(r, pre=["pre-tool"], post=["post-tool"])
    with pytest.raises(QuiesceFailed, match="no time left in max_freeze"):
        q.quiesce(time.monotonic() - 1)
    q.release()
    assert r.calls == []  # neither pre nor post


def test_failed_pre_skips_post():
    r = fake(fail={"pre-tool": 3})
    q = make(r, pre=["pre-tool"], post=["post-tool"])
    with pytest.raises(QuiesceFailed, match="pre failed"):
        q.quiesce(time.monotonic() + 10)
    q.release()
    assert [c.argv[0] for c in r.calls] == ["pre-tool"]


def test_failed_post_is_recorded_never_raised():
    r = fake(fail={"post-tool": 1})
    q = make(r, pre=["pre-tool"], post=["post-tool"])
    q.quiesce(time.monotonic() + 10)
    rec = q.release()
    assert rec["post"]["rc"] == 1 and "boom" in rec["post"]["error"]


def test_record_output_off():
    r = fake(stdout="secret-ish=1\n")
    q = make(r, pre=["pre-tool"], record_output=False)
    q.quiesce(time.monotonic() + 10)
    assert "stdout" not in q.release()["pre"]


def test_releases_on_death_only_without_pre():
    assert make(fake(), hold=["h"]).releases_on_death is True
    assert make(fake(), pre=["p"], post=["q"]).releases_on_death is False


def test_parse_values():
    assert parse_values("a=1\nb = two words\nno value\n=x\nc d=3\n") == {"a": "1", "b": "two words"}


def _parse(tmp_path: Path, quiesce: str):
    text = f"""
[targets.local]
type = "directory"
path = "{tmp_path}/b"
[jobs.j]
driver = "btrfs"
volumes = ["/srv/x"]
target = "local"
[[jobs.j.quiesce]]
type = "command"
{quiesce}
"""
    import tomllib
    return configmod.parse(tomllib.loads(text), tmp_path / "c.toml")


@pytest.mark.parametrize("body, key, msg", [
    ('post = ["x"]', "jobs.j.quiesce[0]", "needs `pre`, `hold` or `probe`"),
    ('probe = ["x"]\npost = ["y"]', "jobs.j.quiesce[0]", "`post` needs `pre` or `hold`"),
    ('probe = []', "jobs.j.quiesce[0].probe", "non-empty argv"),
    ('probe = "check /srv/x"', "jobs.j.quiesce[0].probe", "valid list"),
    ('probe = ["x"]\nprobe_timeout = "0s"', "jobs.j.quiesce[0].probe_timeout", "positive"),
    ('probe = ["x"]\nprobe_timeout = 30', "jobs.j.quiesce[0].probe_timeout", "unit"),
    ('pre = []', "jobs.j.quiesce[0].pre", "non-empty argv"),
    ('pre = "echo hi"', "jobs.j.quiesce[0].pre", "valid list"),
    ('pre = ["x"]\ntimeout = "0s"', "jobs.j.quiesce[0].timeout", "positive"),
    ('hold = ["x"]\nready = ""', "jobs.j.quiesce[0].ready", "single line"),
    ('pre = ["x"]\nshell = true', "jobs.j.quiesce[0].shell", "unknown key"),
    ('pre = ["x"]\nconsistency = "maybe"', "jobs.j.quiesce[0].consistency", "'application' or 'crash'"),
])
def test_bad_config_names_the_key(tmp_path, body, key, msg):
    with pytest.raises(ConfigError) as e:
        _parse(tmp_path, body)
    assert key in str(e.value) and msg in str(e.value)
    assert e.value.exit_code == 2


def test_probe_only_hook_records_no_consistency(tmp_path):
    """A hook with only a probe (beside fsfreeze, say) does nothing at backup time and claims no
    consistency; its name is the probe's program; config check looks for that program."""
    cfg = _parse(tmp_path, 'probe = ["/usr/local/bin/app-check", "--deep"]\nprobe_timeout = "2m"')
    (cls, qcfg), = cfg.jobs["j"].quiescers
    assert qcfg.probe_timeout == 120.0 and cls.programs(qcfg) == {"probe": "/usr/local/bin/app-check"}
    q = cls(qcfg, QuiesceContext(job="j", runner=FakeRunner(), volumes=["/srv/x"]))
    q.quiesce(time.monotonic() + 5)
    assert q.release() == {"type": "command", "name": "/usr/local/bin/app-check"}


def test_good_config(tmp_path):
    cfg = _parse(tmp_path, 'pre = ["/bin/true"]\npost = ["/bin/true"]\ntimeout = "3s"')
    (cls, qcfg), = cfg.jobs["j"].quiescers
    assert cls is CommandQuiescer and qcfg.timeout == 3.0

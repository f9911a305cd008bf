import pytest

from snapagent.errors import CommandFailed, CommandNotFound, UsageError
from snapagent.util.runner import Runner, format_argv

HOSTILE = ["a b", "x; rm -rf /", "$(touch pwned)", "-rf", "new\nline", "`id`", "*"]


def test_format_argv_is_pasteable_and_redacts():
    assert format_argv(["echo", "a b", "$(x)"]) == "echo 'a b' '$(x)'"
    assert format_argv(["mysql", "--password=hunter2"], redact=["hunter2"]) == "mysql --password=***"


def test_read_runs_and_hostile_args_arrive_verbatim(tmp_path):
    r = Runner()
    res = r.run(["printf", "%s\\n", *HOSTILE], mutating=False)
    assert res.stdout.split("\n")[:-1] == [h for part in HOSTILE for h in part.split("\n")]
    assert not (tmp_path / "pwned").exists()


def test_dry_run_skips_mutations_but_runs_reads(tmp_path):
    echoed = []
    r = Runner(dry_run=True, echo=echoed.append)
    target = tmp_path / "made by touch"
    res = r.run(["touch", str(target)], mutating=True)
    assert res.dry_run and not target.exists()
    assert echoed == [f"would run: touch '{target}'"]
    assert r.run(["echo", "hi"], mutating=False).stdout == "hi\n"


def test_failure_carries_exit_code_and_stderr():
    with pytest.raises(CommandFailed) as ei:
        Runner().run(["ls", "/definitely/not/here"], mutating=False)
    assert ei.value.returncode == 2
    assert "No such file" in ei.value.stderr
    assert "ls /definitely/not/here" in str(ei.value)


def test_timeout_raises():
    with pytest.raises(CommandFailed) as ei:
        Runner().run(["sleep", "5"], mutating=False, timeout=0.2)
    assert ei.value.returncode is None


def test_missing_tool_and_configured_path():
    with pytest.raises(CommandNotFound, match="no-such-tool-xyz"):
        Runner().run(["no-such-tool-xyz"], mutating=False)
    r = Runner(tools={"mytrue": "/bin/true"})
    assert r.run(["mytrue"], mutating=False).returncode == 0


@pytest.mark.parametrize("bad", ["ls -l", b"ls", [], ["ls", 3]])
def test_argv_must_be_a_list_of_strings(bad):
    with pytest.raises(TypeError):
        Runner().run(bad, mutating=False)


def test_nul_byte_rejected():
    with pytest.raises(UsageError):
        Runner().run(["echo", "a\x00b"], mutating=False)


def test_secrets_are_not_passed_to_children(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "hunter2")
    out = Runner().run(["env"], mutating=False).stdout
    assert "hunter2" not in out and "LC_ALL=C" in out


def test_stream_reports_failure_with_stderr():
    s = Runner().stream(["sh", "-c", "echo oops >&2; exit 3"], mutating=False)
    s.stdout.read()
    with pytest.raises(CommandFailed) as ei:
        s.wait()
    assert ei.value.returncode == 3 and "oops" in ei.value.stderr


def test_children_run_in_their_own_process_group():
    """The terminal's Ctrl-C goes to the foreground process group: the agent's children are not in
    it, so only the agent sees the SIGINT and stops them in order."""
    import os
    import sys

    probe = [sys.executable, "-c", "import os; print(os.getpgid(0), os.getsid(0))"]
    pgid, sid = map(int, Runner().run(probe, mutating=False).stdout.split())
    assert pgid != os.getpgid(0) and sid == os.getsid(0)
    s = Runner().stream(probe, mutating=False)
    pgid, sid = map(int, s.stdout.read().split())
    s.wait()
    assert pgid != os.getpgid(0) and sid == os.getsid(0)
    s = Runner().stream(probe, mutating=False, new_session=True)  # e.g. the fsfreeze watchdog
    pgid, sid = map(int, s.stdout.read().split())
    s.wait()
    assert sid != os.getsid(0)


def test_children_get_an_allow_listed_environment(monkeypatch):
    monkeypatch.setenv("MYAPP_TOKEN", "t0ken")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    monkeypatch.setenv("LVM_SYSTEM_DIR", "/run/lvm-conf")
    monkeypatch.setenv("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    out = Runner().run(["env"], mutating=False, env={"SNAPAGENT_PHASE": "pre"}).stdout
    env = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    assert "t0ken" not in out and "aws-secret" not in out
    assert env["LVM_SYSTEM_DIR"] == "/run/lvm-conf" and env["PATH"] == "/usr/sbin:/usr/bin:/sbin:/bin"
    assert env["LC_ALL"] == "C" and env["SNAPAGENT_PHASE"] == "pre"

"""A command hook's drill ``probe`` on a real btrfs subvolume, through the real CLI: a probe that
passes, one that fails (exit code and its last lines in the report), one that hangs (killed at
``probe_timeout``), a hook without a probe and a job without a quiescer (never PASSED). The probe
is read from the current config, so one backup serves every case. Names with spaces, ``;``, ``$``
and a leading ``-`` in the volume and in the scratch path reach the probe as they are: through
its environment and working directory, never through a shell. Also: ``show`` prints the hook's
record as readable lines, and ``--json`` failures are JSON on stdout."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers.cli import snapagent, toml_str, write_config

pytestmark = [pytest.mark.root, pytest.mark.btrfs]
PY = sys.executable
NASTY = ["--x y", "a;b", "$(touch pwned)", "-"]

#: The user's own check, as a stand-in: argv[1] is where it reports what it saw; the data it
#: checks is the restored volume named by SNAPAGENT_RESTORED_VOLUMES.
PROBE = r"""
import json, os, sys
report, mode = sys.argv[1], sys.argv[2]
vol = os.environ["SNAPAGENT_RESTORED_VOLUMES"].split("\n")[0]
json.dump({"argv": sys.argv[3:], "cwd": os.getcwd(), "env": {k: v for k, v in os.environ.items()
           if k.startswith("SNAPAGENT_")}}, open(report, "w"))
records = open(os.path.join(vol, "records")).read().splitlines()
if mode == "hang":
    import time
    print("checking slowly", flush=True)
    time.sleep(60)
if mode == "fail":
    print(f"read {len(records)} records")
    print("record 2 is corrupt: checksum mismatch", file=sys.stderr)
    sys.exit(3)
print("opening the store")
print(f"checked {len(records)} records, all consistent")
"""


def job(vol: Path, quiesce: str, name: str = "j") -> str:
    return f'[jobs.{name}]\ndriver = "btrfs"\nvolumes = [{toml_str(vol)}]\ntarget = "local"\n{quiesce}'


def hook(probe: str = "", extra: str = "") -> str:
    """A command hook whose `pre` flushes nothing (a stand-in), with ``probe`` if given."""
    return (f'[[jobs.j.quiesce]]\ntype = "command"\nname = "store"\npre = [{toml_str(PY)}, "-c", "print(1)"]\n'
            f"{probe}{extra}")


@pytest.fixture
def probed(subvol, workdir, tmp_path):
    """One backup of a command-hook job on a nasty-named subvolume; returns a function that
    rewrites the config with another probe (or none) and drills that backup."""
    vol = subvol("-a vol;$(x) b")
    (vol / "records").write_text("r1\nr2\nr3\n")
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    scratch = workdir / "-scr atch;$(touch pwned)"
    agent = f"scratch_dir = {toml_str(scratch)}\n"
    cfg = write_config(workdir, job(vol, hook()), agent=agent)
    bid = snapagent("backup", "j", config=cfg, check=True).stdout.split()[-1]
    report = tmp_path / "report.json"

    def drill(quiesce: str, *flags: str):
        write_config(workdir, job(vol, quiesce), agent=agent)
        r = snapagent(*flags, "drill", bid, config=cfg)
        assert list(scratch.iterdir()) == [], "the drill left its scratch copy"
        return r

    def argv(mode: str, *more: str) -> str:
        return f"probe = [{', '.join(toml_str(a) for a in [PY, script, report, mode, *NASTY, *more])}]\n"

    ns = type("NS", (), {})()
    ns.vol, ns.cfg, ns.bid, ns.report, ns.scratch, ns.drill, ns.argv = vol, cfg, bid, report, scratch, drill, argv
    return ns


def test_probe_passes_with_the_restored_paths_in_its_environment(probed, workdir):
    places = ["{restored}", f"{{restored:{probed.vol}}}", f"x{{restored:{probed.vol}}}"]
    r = probed.drill(hook(probed.argv("ok", *places)))
    assert r.returncode == 0, r.stderr
    assert "PASS command store: checked 3 records, all consistent" in r.stdout
    assert f"drill of {probed.bid}: PASSED" in r.stdout and "{'" not in r.stdout
    seen = json.loads(probed.report.read_text())
    env = seen["env"]
    dest = Path(env["SNAPAGENT_RESTORE_DIR"])
    restored = Path(env["SNAPAGENT_RESTORED_VOLUMES"])
    # each element as written, no shell ran; a placeholder is replaced only as a whole element
    assert seen["argv"] == [*NASTY, str(dest), str(restored), places[2]]
    assert seen["cwd"] == str(dest) and dest.parent == probed.scratch
    assert restored.parent == dest and (env["SNAPAGENT_VOLUMES"], env["SNAPAGENT_JOB"]) == (str(probed.vol), "j")
    assert env["SNAPAGENT_PHASE"] == "probe" and env["SNAPAGENT_BACKUP_ID"] == probed.bid
    assert not list(Path.cwd().glob("pwned")) and not list(workdir.rglob("pwned"))

    d = json.loads(probed.drill(hook(probed.argv("ok")), "--json").stdout)
    (p,) = d["probes"]
    assert d["ok"] and d["not_probed"] == [] and "message" not in d
    assert p["ok"] and p["exit_code"] == 0 and p["output"][-1] == "checked 3 records, all consistent"


def test_failing_probe_fails_the_drill_with_its_exit_code_and_words(probed):
    r = probed.drill(hook(probed.argv("fail")))
    assert r.returncode == 1, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("FAIL command store"))
    assert "probe failed (exit 3): record 2 is corrupt: checksum mismatch" in line
    assert f"drill of {probed.bid}: FAILED" in r.stdout and "PASSED" not in r.stdout
    d = json.loads(probed.drill(hook(probed.argv("fail")), "--json").stdout)
    assert not d["ok"] and d["probes"][0]["exit_code"] == 3 and d["probes"][0]["output"] == ["read 3 records"]


def test_hanging_probe_is_killed_at_probe_timeout(probed):
    r = probed.drill(hook(probed.argv("hang"), 'probe_timeout = "1s"\n'))
    assert r.returncode == 1, r.stderr
    assert "probe did not finish within 1s; killed it: checking slowly" in r.stdout


def test_placeholder_of_another_volume_is_refused(probed):
    bad = hook(probed.argv("ok", "{restored:/srv/elsewhere}"))
    r = probed.drill(bad)
    assert r.returncode == 1 and "probe argument '{restored:/srv/elsewhere}' names no volume of backup" in r.stdout
    r = snapagent("config", "check", config=probed.cfg)  # drill rewrote the config: the gate refuses it
    assert r.returncode == 2 and "jobs.j.quiesce[0].probe: '{restored:/srv/elsewhere}' names no volume" in r.stderr


def test_hook_without_probe_is_not_passed(probed):
    r = probed.drill(hook())
    assert r.returncode == 1, r.stderr
    assert "PASSED" not in r.stdout
    assert "NOT PROBED command store: no `probe` (jobs.j.quiesce[0].probe)" in r.stdout
    assert (f"drill of {probed.bid}: FAILED: nothing was probed: add `probe` to the command hook of job j "
            "(jobs.j.quiesce[0])") in r.stdout
    d = json.loads(probed.drill(hook(), "--json").stdout)
    assert d["ok"] is False and d["probes"] == [] and d["message"].startswith("nothing was probed")


def test_job_without_quiescer_is_not_passed_and_says_what_to_add(subvol, workdir):
    vol = subvol("plain")
    (vol / "f").write_text("x")
    cfg = write_config(workdir, job(vol, ""))
    bid = snapagent("backup", "j", config=cfg, check=True).stdout.split()[-1]
    r = snapagent("drill", bid, config=cfg)
    assert r.returncode == 1 and "PASSED" not in r.stdout
    assert "nothing was probed: job j has no quiescer" in r.stdout
    assert 'add a command hook with a `probe` ([[jobs.j.quiesce]] type = "command"' in r.stdout


def test_show_is_readable_and_json_errors(probed):
    shown = snapagent("show", probed.bid, config=probed.cfg, check=True).stdout
    block = shown[shown.index("quiescer:"):shown.index("versions:")].splitlines()
    assert block[0] == "quiescer:      command" and {"  name: store", "  consistency: application"} <= set(block)
    assert "  pre:" in block and f"    argv: {PY} -c 'print(1)'" in block and "    rc: 0" in block
    assert "{" not in shown and "'rc'" not in shown
    assert "quiescers" in json.loads(snapagent("--json", "show", probed.bid, config=probed.cfg, check=True).stdout)

    cases = [(["show", "j-20990101T000000Z"], 1, "no backup"),           # an operation failure
             (["show"], 2, "the following arguments are required: id"),  # a usage error
             (["verify", "j@latest", "--from", "nope"], 2, "--from: unknown target 'nope'")]
    for args, code, words in cases:
        r = snapagent("--json", *args, config=probed.cfg)
        obj = json.loads(r.stdout)
        assert r.returncode == code == obj["exit_code"] and words in obj["error"], (args, r.stdout, r.stderr)
        assert words in r.stderr  # the error line is still on stderr for whoever watches
    probed.cfg.write_text(probed.cfg.read_text() + "\n[jobs.k]\ndriver = \"btrfs\"\nvolumes = [\"rel\"]\n"
                          "target = \"local\"\nbogus = 1\n")
    r = snapagent("config", "check", "--json", config=probed.cfg)
    obj = json.loads(r.stdout)
    assert r.returncode == 2 == obj["exit_code"] and "jobs.k" in r.stdout

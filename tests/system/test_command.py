"""Command quiescer on real processes, through the real CLI, on a real btrfs subvolume: the etc/hooks
examples (a MuroDB-like hold lock with checkpoint, an rstmdb-like compaction whose WAL offset goes
into the manifest), the environment, post-only-after-pre, and hold failures."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.cli import ROOT, snapagent, toml_str, write_config
from tests.helpers.snapplaces import snapdir as snapdir_of

pytestmark = [pytest.mark.root, pytest.mark.btrfs]
HELPERS = ROOT / "tests" / "helpers"
PY = sys.executable


def from_example(name: str, workdir: Path, repl: dict[str, str]) -> Path:
    """Return a config made from ``etc/hooks/<name>`` with its paths replaced by ``repl``."""
    text = (ROOT / "etc" / "hooks" / name).read_text()
    repl = {"/var/lib/snapagent": str(workdir / "state"), "/var/backups/snapagent": str(workdir / "backups"), **repl}
    for old, new in repl.items():
        assert old in text, f"{old} not in etc/hooks/{name}"
        text = text.replace(f'"{old}"', new if new.startswith('"') else toml_str(new))
        if not new.startswith('"'):  # a probe's placeholder names the volume too
            text = text.replace(f'"{{restored:{old}}}"', toml_str(f"{{restored:{new}}}"))
    cfg = workdir / name
    cfg.write_text(text)
    return cfg


def backup(cfg: Path, job: str) -> dict:
    r = snapagent("backup", job, config=cfg, check=True)
    bid = r.stdout.strip().splitlines()[-1]
    return json.loads(snapagent("--json", "show", bid, config=cfg, check=True).stdout)


def assert_nothing_left(cfg: Path, workdir: Path, vol: Path) -> None:
    listed = json.loads(snapagent("--json", "list", config=cfg, check=True).stdout)
    assert listed == []
    snapdir = snapdir_of(vol)
    assert not snapdir.exists() or list(snapdir.iterdir()) == []
    assert list((workdir / "state").glob("journal/*/*.jsonl")) == []


def test_murodb_hold_example(subvol, workdir, tmp_path):
    """The hold command checkpoints and keeps the writer lock across the snapshot: the restored
    WAL is empty although a writer was writing the whole time."""
    db = subvol("murodb")
    ack = tmp_path / "ack"
    writer = subprocess.Popen([PY, HELPERS / "murodb_admin.py", "writer", db, ack])
    try:
        time.sleep(0.5)
        cfg = from_example("murodb.toml", workdir, {
            "/srv/murodb": str(db),
            "/usr/local/bin/murodb-admin": f"{toml_str(PY)}, {toml_str(HELPERS / 'murodb_admin.py')}"})
        m = backup(cfg, "murodb")
        assert writer.poll() is None
    finally:
        writer.kill()
        writer.wait()
    hold = m["quiescers"][0]["hold"]
    assert hold["rc"] == 0 and int(hold["values"]["checkpointed"]) > 0
    assert "released_after_ms" in hold["values"] and hold["ready_ms"] < 5000
    dest = tmp_path / "restored"
    r = snapagent("restore", m["id"], "--to", str(dest), config=cfg, check=True)
    vol = dest / m["volumes"][0]["label"]
    # the example's handover: its check line, pasted as printed, runs the tool on the restored copy
    assert f"  command database: {vol}" in r.stdout, r.stdout
    check = shlex.split(re.search(r"(?m)^    check: +(.*)$", r.stdout).group(1))
    assert check[-1] == str(vol) and subprocess.run(check, capture_output=True, text=True).stdout.endswith("numbered without a gap\n")
    assert (vol / "wal").read_bytes() == b""  # the lock was held from the checkpoint to the snapshot
    data = (vol / "data").read_text().splitlines()
    acked = int(ack.read_text().splitlines()[-1].split()[0])
    assert 0 < len(data) <= acked
    print(f"\nmurodb hold: ready in {hold['ready_ms']} ms, held {hold['held_ms']} ms, "
          f"freeze window {m['freeze_window_ms']:.0f} ms, {len(data)} records in the snapshot")
    d = snapagent("drill", m["id"], config=cfg)  # the example's probe: the tool's own check
    assert d.returncode == 0 and "records, numbered without a gap" in d.stdout, d.stdout + d.stderr
    assert f"drill of {m['id']}: PASSED" in d.stdout


def test_rstmdb_pre_output_in_manifest(subvol, workdir):
    db = subvol("rstmdb")
    (db / "segments").mkdir()
    for i in range(3):
        (db / "segments" / f"{i:03d}.log").write_text(f"segment {i}\n")
    (db / "wal").write_bytes(b"w" * 12345)
    cfg = from_example("rstmdb.toml", workdir, {
        "/srv/rstmdb": str(db),
        "/usr/local/bin/rstmdb-admin": f"{toml_str(PY)}, {toml_str(HELPERS / 'rstmdb_admin.py')}"})
    m = backup(cfg, "rstmdb")
    pre = m["quiescers"][0]["pre"]
    assert pre["rc"] == 0 and pre["values"] == {"segments": "3", "wal_offset": "12345"}
    assert "compaction done" in pre["stdout"]
    assert "post" not in m["quiescers"][0]
    d = snapagent("drill", m["id"], config=cfg)
    assert d.returncode == 0 and "PASS command rstmdb: rstmdb " in d.stdout and "segment(s)" in d.stdout, d.stdout
    r = snapagent("restore", m["id"], "--to", str(workdir / "restored"), config=cfg, check=True)
    assert "  command: no database hand-over" in r.stdout, r.stdout  # issue 12: said, not silent


def test_environment_and_nasty_names(subvol, workdir, tmp_path):
    vol = subvol("a vol;$(touch x) -n")
    out = tmp_path / "env.json"
    dump = "import json, os, sys; json.dump({k: v for k, v in os.environ.items() if k.startswith('SNAPAGENT_')} | {'argv': sys.argv[1:]}, open(sys.argv[1], 'a')); open(sys.argv[1], 'a').write('\\n')"
    cfg = write_config(workdir, f"""
[jobs.j]
driver = "btrfs"
volumes = [{toml_str(vol)}]
target = "local"
[[jobs.j.quiesce]]
type = "command"
pre = [{toml_str(PY)}, "-c", {toml_str(dump)}, {toml_str(out)}, "--x y", "a;b", "$(id)", "-"]
post = [{toml_str(PY)}, "-c", {toml_str(dump)}, {toml_str(out)}]
""")
    backup(cfg, "j")
    pre, post = [json.loads(line) for line in out.read_text().splitlines()]
    assert pre["argv"][1:] == ["--x y", "a;b", "$(id)", "-"]
    assert pre["SNAPAGENT_JOB"] == "j" and pre["SNAPAGENT_PHASE"] == "pre" and pre["SNAPAGENT_DRY_RUN"] == "0"
    assert pre["SNAPAGENT_VOLUMES"].split("\n") == [str(vol)]
    assert post["SNAPAGENT_PHASE"] == "post"
    assert not (Path.cwd() / "x").exists()


def test_failed_pre_skips_snapshot_and_post(subvol, workdir, tmp_path):
    vol = subvol("v")
    marker = tmp_path / "post-ran"
    cfg = write_config(workdir, f"""
[jobs.j]
driver = "btrfs"
volumes = [{toml_str(vol)}]
target = "local"
[[jobs.j.quiesce]]
type = "command"
pre = [{toml_str(PY)}, "-c", "import sys; print('cannot lock', file=sys.stderr); sys.exit(3)"]
post = [{toml_str(PY)}, "-c", "import sys; open(sys.argv[1], 'w')", {toml_str(marker)}]
""")
    r = snapagent("backup", "j", config=cfg)
    assert r.returncode == 1, r.stderr
    assert "pre failed" in r.stderr and "exit 3" in r.stderr and "cannot lock" in r.stderr
    assert not marker.exists()
    assert_nothing_left(cfg, workdir, vol)


@pytest.mark.parametrize("script, msg", [
    ("import sys; print('no lock for you', file=sys.stderr); sys.exit(4)", "exited (rc 4) before printing 'READY'"),
    ("import time; print('starting'); time.sleep(30)", "did not print 'READY'"),
])
def test_hold_that_never_gets_ready_fails(subvol, workdir, tmp_path, script, msg):
    vol = subvol("v")
    cfg = write_config(workdir, f"""
[jobs.j]
driver = "btrfs"
volumes = [{toml_str(vol)}]
target = "local"
max_freeze = "1500ms"
[[jobs.j.quiesce]]
type = "command"
hold = [{toml_str(PY)}, "-c", {toml_str(script)}]
""")
    t0 = time.monotonic()
    r = snapagent("backup", "j", config=cfg)
    took = time.monotonic() - t0
    assert r.returncode == 1 and msg in r.stderr, r.stderr
    assert took < 10
    assert_nothing_left(cfg, workdir, vol)


def test_hold_with_pre_and_post_order(subvol, workdir, tmp_path):
    """pre → hold → snapshot → hold released → post, every step logged in order."""
    vol = subvol("v")
    log = tmp_path / "log"
    step = "import os, sys; open(sys.argv[1], 'a').write(os.environ['SNAPAGENT_PHASE'] + '\\n')"
    hold = step + "; print('LOCKED', flush=True); sys.stdin.read(); open(sys.argv[1], 'a').write('hold-released\\n')"
    cfg = write_config(workdir, f"""
[jobs.j]
driver = "btrfs"
volumes = [{toml_str(vol)}]
target = "local"
[[jobs.j.quiesce]]
type = "command"
name = "ordered"
pre = [{toml_str(PY)}, "-c", {toml_str(step)}, {toml_str(log)}]
hold = [{toml_str(PY)}, "-c", {toml_str(hold)}, {toml_str(log)}]
ready = "LOCKED"
post = [{toml_str(PY)}, "-c", {toml_str(step)}, {toml_str(log)}]
""")
    m = backup(cfg, "j")
    assert log.read_text().split() == ["pre", "hold", "hold-released", "post"]
    q = m["quiescers"][0]
    assert q["name"] == "ordered" and q["hold"]["rc"] == 0 and q["post"]["rc"] == 0

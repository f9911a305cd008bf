"""Unit tests of the zfs driver against a fake runner: exact argv (hostile but legal names),
refusal of names ZFS can never accept, stderr parsed into typed errors, holds and incremental
bases, restore destinations. The real-pool tests are tests/vm/test_zfs.py."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import pytest

from plugins.zfs import ZfsDriver, ZfsOptions
from plugins.zfs.names import dataset_problem
from plugins.zfs.zfscmd import classify
from snapagent.config import parse
from snapagent.errors import ConfigError, ExportFailed, OperationFailed, PreflightFailed, RestoreRefused, SnapshotFailed
from snapagent.journal import Journal, read_open
from snapagent.plugin.driver import DatasetDest, DatasetSpace, PreparedDataset, Snapshot
from snapagent.plugin.target import Stored
from snapagent.restore_dest import precheck
from tests.helpers.fakerunner import FakeRunner
from tests.helpers.fakezfs import FakeZfs, zfs_runner
from tests.helpers.manifests import manifest, volume

SPACE = "tank/app db"           # spaces are legal in ZFS names
LEAD = "tank/-lead:x.y_z"       # so are a leading '-', ':', '.', '_'
LIST_PROPS = "name,type,mounted,mountpoint,available"


def make(*datasets: str, opts: dict | None = None, journal=None, **kw) -> tuple[ZfsDriver, FakeRunner]:
    fake = FakeZfs()
    for d in datasets:
        fake.add(d)
    runner = zfs_runner(fake, **kw)
    drv = ZfsDriver(runner, ZfsOptions(**(opts or {})))
    drv.journal = journal
    return drv, runner


def far() -> float:
    return time.monotonic() + 10


# -- names ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["tank", SPACE, LEAD, "tank/a/b c/d", "Pool9/x"])
def test_legal_names_pass(name):
    assert dataset_problem(name) is None


@pytest.mark.parametrize("name,why", [
    ("tank/x;rm -rf /", "';'"), ("tank/$(id)", "'$'"), ("tank/a\nb", "'\\n'"), ("tank/`id`", "'`'"),
    ("/tank/x", "not a path"), ("tank/x@s", "snapshot delimiter"), ("tank//x", "empty component"),
    ("tank/..", "'..'"), ("1tank/x", "begin with a letter"), ("tank/x/", "trailing"), ("", "empty"),
    ("mirror1/x", "reserved"), ("tank/" + "x" * 260, "longer"), ("tank/a\tb", "'\\t'"),
])
def test_illegal_names_are_refused_before_any_command(name, why):
    assert why in (dataset_problem(name) or "")
    drv, runner = make("tank/ok")
    with pytest.raises(ConfigError) as e:
        drv.preflight(["tank/ok", name])
    assert "volumes:" in str(e.value) and "not a valid ZFS dataset name" in str(e.value)
    assert runner.argvs() == []


# -- preflight ------------------------------------------------------------------------------------
def test_preflight_one_list_call_with_exact_argv():
    drv, runner = make(SPACE, LEAD)
    roots = drv.preflight([SPACE, LEAD])
    assert runner.argvs() == [["zfs", "list", "-H", "-p", "-o", LIST_PROPS, "-t", "filesystem,volume", "--", SPACE, LEAD]]
    assert roots == [Path("/mnt/tank/app db"), Path("/mnt/tank/-lead:x.y_z")]
    assert len(runner.argvs()) == 1  # the mountpoints come from the one list call


def test_preflight_names_the_missing_dataset():
    drv, _ = make(SPACE)
    with pytest.raises(PreflightFailed, match=r"dataset 'tank/gone one' does not exist"):
        drv.preflight([SPACE, "tank/gone one"])


def test_preflight_module_not_loaded():
    drv, runner = make(SPACE)
    runner.fake.fail_next["list"] = "The ZFS modules are not loaded.\nTry running '/sbin/modprobe zfs' as root to load them."
    with pytest.raises(PreflightFailed, match="ZFS kernel module is not loaded"):
        drv.preflight([SPACE])


def test_preflight_refuses_two_pools_unless_cross_pool():
    drv, runner = make("tank/a", "other/b")
    with pytest.raises(PreflightFailed, match=r"span pools 'tank', 'other'.*cross_pool"):
        drv.preflight(["tank/a", "other/b"])
    assert runner.argvs() == []
    drv, _ = make("tank/a", "other/b", opts={"cross_pool": True})
    drv.preflight(["tank/a", "other/b"])


def test_preflight_refuses_nested_volumes_when_recursive():
    drv, _ = make("tank/a", "tank/a/b", opts={"recursive": True})
    with pytest.raises(PreflightFailed, match=r"'tank/a/b' lies below 'tank/a'"):
        drv.preflight(["tank/a", "tank/a/b"])


@pytest.mark.parametrize("change,msg", [
    ({"mounted": "no"}, "is not mounted"),
    ({"type": "volume"}, "is a volume, not a filesystem"),
    ({"available": str(10 << 20)}, r"10 MiB available, less than options.min_free \(64 MiB\)"),
])
def test_preflight_checks_type_mount_and_space(change, msg):
    drv, runner = make(SPACE)
    runner.fake.datasets[SPACE].update(change)
    with pytest.raises(PreflightFailed, match=msg):
        drv.preflight([SPACE])


# -- snapshots ------------------------------------------------------------------------------------
class SpyJournal:
    def __init__(self, runner: FakeRunner):
        self.events, self.runner = [], runner

    def open(self, kind, key, owner, **data):
        self.events.append(("open", key, len(self.runner.argvs()), data))

    def close(self, kind, key):
        self.events.append(("close", key, len(self.runner.argvs()), {}))


def test_snapshot_is_one_call_journaled_first():
    drv, runner = make(SPACE, LEAD)
    drv.journal = j = SpyJournal(runner)
    snaps = drv.snapshot([SPACE, LEAD], "snapagent-job-1", far())
    assert runner.argvs() == [["zfs", "snapshot", "--", f"{SPACE}@snapagent-job-1", f"{LEAD}@snapagent-job-1"]]
    assert [(e[0], e[1], e[2]) for e in j.events] == [("open", f"{SPACE}@snapagent-job-1", 0), ("open", f"{LEAD}@snapagent-job-1", 0)]
    assert [s.handle for s in snaps] == [f"{SPACE}@snapagent-job-1", f"{LEAD}@snapagent-job-1"]
    assert {s.info["atomic_group"] for s in snaps} == {0}
    assert ZfsDriver.atomic is True


def test_snapshot_recursive_and_cross_pool_groups():
    drv, runner = make("tank/a", "other/b", "tank/c", opts={"recursive": True, "cross_pool": True})
    snaps = drv.snapshot(["tank/a", "other/b", "tank/c"], "s", far())
    assert runner.argvs() == [["zfs", "snapshot", "-r", "--", "tank/a@s", "tank/c@s"],
                            ["zfs", "snapshot", "-r", "--", "other/b@s"]]
    assert [s.info["atomic_group"] for s in snaps] == [0, 1, 0]
    assert all(s.info["recursive"] for s in snaps)


def test_snapshot_failure_is_parsed():
    drv, runner = make(SPACE)
    runner.fake.snapshots[f"{SPACE}@s"] = {"name": f"{SPACE}@s", "guid": "1", "createtxg": "1", "holds": set()}
    with pytest.raises(SnapshotFailed, match=r"zfs snapshot of 'tank/app db' failed: cannot create snapshot 'tank/app db@s': dataset already exists"):
        drv.snapshot([SPACE], "s", far())


def test_snapshot_dry_run_runs_nothing():
    drv, runner = make(SPACE, dry_run=True)
    drv.snapshot([SPACE], "s", far())
    assert runner.argvs() == [] and runner.fake.snapshots == {}
    assert runner.echoed and "snapshot" in runner.echoed[0]


def test_release_destroys_deferred_and_is_idempotent():
    drv, runner = make(SPACE)
    drv.journal = j = SpyJournal(runner)
    (snap,) = drv.snapshot([SPACE], "s", far())
    drv.release(snap)
    assert ["zfs", "destroy", "-d", "--", f"{SPACE}@s"] in runner.argvs()
    assert runner.fake.snapshots == {}
    drv.release(snap)  # already gone: no error
    assert j.events[-1][0] == "close"


def test_real_journal_undo_after_a_killed_run(tmp_path):
    drv, runner = make(SPACE, LEAD)
    drv.journal = Journal.start(tmp_path, "job", "run1")
    drv.snapshot([SPACE, LEAD], "s", far())
    runner.fake.snapshots[f"{LEAD}@s"]["holds"].add("snapagent")  # killed between hold and close
    open_recs = read_open(drv.journal.path)
    assert [r["key"] for r in open_recs] == [f"{SPACE}@s", f"{LEAD}@s"]
    msgs = [ZfsDriver.undo(r, runner) for r in reversed(open_recs)]
    assert msgs[0].startswith(f"zfs snapshot {LEAD}@s: destroyed") and msgs[1].startswith(f"zfs snapshot {SPACE}@s: destroyed")
    assert ["zfs", "release", "--", "snapagent", f"{LEAD}@s"] in runner.argvs()
    assert runner.fake.snapshots == {}
    assert ZfsDriver.undo(open_recs[0], runner) == f"zfs snapshot {SPACE}@s: already gone"


def test_undo_respects_someone_elses_hold():
    drv, runner = make(SPACE)
    drv.snapshot([SPACE], "s", far())
    runner.fake.snapshots[f"{SPACE}@s"]["holds"].add("admin")
    ZfsDriver.undo({"kind": "snapshot", "key": f"{SPACE}@s"}, runner)
    assert ["zfs", "destroy", "-d", "--", f"{SPACE}@s"] in runner.argvs()
    assert runner.fake.snapshots[f"{SPACE}@s"]["defer"] is True


# -- export, keep, incremental bases --------------------------------------------------------------
def read_export(drv, snap, fmt, parent=None) -> bytes:
    with drv.export(snap, fmt, parent) as s:
        return s.read()


def test_send_full_then_incremental_from_held_base():
    drv, runner = make(SPACE, opts={"compressed": True, "raw": True, "large_blocks": True})
    assert drv.keeps_base("send") and not drv.keeps_base("tar")
    (s1,) = drv.snapshot([SPACE], "snapagent-b1", far())
    read_export(drv, s1, "send")
    assert runner.procs[-1].argv == ["zfs", "send", "-w", "-c", "-L", "--", f"{SPACE}@snapagent-b1"]
    assert s1.info["createtxg"] == 100 and "parent_snapshot" not in s1.info
    drv.keep(s1)
    assert ["zfs", "hold", "--", "snapagent", f"{SPACE}@snapagent-b1"] in runner.argvs()
    item = volume(SPACE, "app_db", "send", snapshot=s1.handle, kept=True, info=s1.info)
    (s2,) = drv.snapshot([SPACE], "snapagent-b2", far())
    read_export(drv, s2, "send", item)
    assert runner.procs[-1].argv == ["zfs", "send", "-w", "-c", "-L", "-i", f"{SPACE}@snapagent-b1", "--", f"{SPACE}@snapagent-b2"]
    assert s2.info["parent_snapshot"] == f"{SPACE}@snapagent-b1"
    drv.keep(s2)
    drv.release_base(item)
    assert ["zfs", "release", "--", "snapagent", f"{SPACE}@snapagent-b1"] in runner.argvs()
    assert list(runner.fake.snapshots) == [f"{SPACE}@snapagent-b2"]
    drv.release_base(item)  # idempotent


@pytest.mark.parametrize("spoil,why", [
    (lambda f, b: f.snapshots.pop(b), "gone"),
    (lambda f, b: f.snapshots[b].update(guid="999"), "guid changed"),
])
def test_unusable_base_falls_back_to_full_send(spoil, why, caplog):
    drv, runner = make(SPACE)
    (s1,) = drv.snapshot([SPACE], "b1", far())
    read_export(drv, s1, "send")
    item = volume(SPACE, "app_db", "send", snapshot=s1.handle, kept=True, info={"guid": s1.info["guid"]})
    spoil(runner.fake, s1.handle)
    (s2,) = drv.snapshot([SPACE], "b2", far())
    read_export(drv, s2, "send", item)
    assert "-i" not in runner.procs[-1].argv and "parent_snapshot" not in s2.info


def test_release_base_leaves_a_same_named_other_snapshot():
    drv, runner = make(SPACE)
    (s1,) = drv.snapshot([SPACE], "b1", far())
    drv.release_base(volume(SPACE, "app_db", "send", snapshot=s1.handle, info={"guid": "not-this-one"}))
    (s2,) = drv.snapshot([SPACE], "snapagent-b2", far())
    drv.release_base(volume(SPACE, "app_db", "send", snapshot=s2.handle, info={"guid": "not-this-one"}))
    assert s2.handle in runner.fake.snapshots
    drv.release_base(volume(LEAD, "lead", "send", snapshot=s2.handle, info={"guid": s2.info.get("guid", "1")}))
    assert s2.handle in runner.fake.snapshots  # a record of another volume never touches this one
    assert s1.handle in runner.fake.snapshots


def test_tar_export_reads_the_snapshot_directory(tmp_path):
    drv, runner = make()
    runner.fake.add(SPACE, mountpoint=str(tmp_path / "app db"))
    (tmp_path / "app db" / ".zfs" / "snapshot" / "s").mkdir(parents=True)
    drv.preflight([SPACE])
    (snap,) = drv.snapshot([SPACE], "s", far())
    read_export(drv, snap, "tar")
    argv = runner.procs[-1].argv
    assert argv[0] == "tar" and argv[argv.index("--directory") + 1] == str(tmp_path / "app db/.zfs/snapshot/s")


def test_tar_of_recursive_snapshot_is_refused():
    drv, _ = make(SPACE, opts={"recursive": True})
    (snap,) = drv.snapshot([SPACE], "s", far())
    with pytest.raises(ExportFailed, match="only be exported as `send`"):
        read_export(drv, snap, "tar")


def test_keep_failure_is_typed():
    drv, runner = make(SPACE)
    snap = Snapshot(SPACE, f"{SPACE}@s", "s", {})
    with pytest.raises(OperationFailed, match="cannot hold snapshot 'tank/app db@s': dataset 'tank/app db@s' does not exist"):
        runner.fake.fail_next["hold"] = "cannot open 'tank/app db@s': dataset does not exist"
        drv.keep(snap)


# -- restore destinations -------------------------------------------------------------------------
MANIFEST = manifest("job", [volume(SPACE, "app_db", "send")], export_format="send")


def test_prepare_dataset_for_send_creates_a_new_dataset():
    drv, runner = make("tank")
    assert drv.prepare_dataset("tank/restored x", MANIFEST, force=False) == \
        PreparedDataset("tank/restored x", Path("/mnt/tank/restored x"), None)
    assert runner.argvs()[-2] == ["zfs", "create", "-p", "--", "tank/restored x"]


def test_prepare_dataset_refusals():
    drv, runner = make("tank", "tank/exists")
    with pytest.raises(RestoreRefused, match="names a NEW ZFS dataset.*not a path"):
        drv.prepare_dataset("/srv/restore", MANIFEST, force=False)
    with pytest.raises(RestoreRefused, match="pool 'nopool' does not exist"):
        drv.prepare_dataset("nopool/x", MANIFEST, force=False)
    with pytest.raises(RestoreRefused, match="already exists.*--force"):
        drv.prepare_dataset("tank/exists", MANIFEST, force=False)
    assert not [c for c in runner.argvs() if c[1] in ("create", "rename")]
    prepared = drv.prepare_dataset("tank/exists", MANIFEST, force=True)
    assert prepared.moved_aside.startswith("tank/exists.pre-restore-") and prepared.moved_aside in runner.fake.datasets
    assert drv.prepare_dataset("/srv/restore", MANIFEST.model_copy(update={"export_format": "tar"}), False) is None


def test_prepare_dataset_is_journaled_and_undone(tmp_path):
    j = Journal.start(tmp_path, "_restore", "r1")
    drv, runner = make("tank", "tank/exists", journal=j)
    prepared = drv.prepare_dataset("tank/exists", MANIFEST, force=True)
    recs = read_open(j.path)
    assert [(r["kind"], r["key"]) for r in recs] == [("renamed", prepared.moved_aside), ("dataset", "tank/exists")]
    for rec in reversed(recs):  # what cleanup does after a kill
        ZfsDriver.undo(rec, runner)
    assert "tank/exists" in runner.fake.datasets and prepared.moved_aside not in runner.fake.datasets
    assert ["zfs", "destroy", "-r", "--", "tank/exists"] in runner.argvs()


def test_receive_chain_argv():
    drv, runner = make("tank")
    runner.fake.on_receive = lambda argv: runner.fake.add(argv[-1], mounted="no")
    rec = volume(SPACE, "app_db", "send", snapshot="x")
    full = drv.restore(io.BytesIO(b"full"), "send", DatasetDest("tank/r/app_db"), rec, None)
    assert runner.procs[-1].argv == ["zfs", "receive", "-x", "mountpoint", "--", "tank/r/app_db"]
    assert runner.procs[-1].received == b"full"
    assert ["zfs", "mount", "--", "tank/r/app_db"] in runner.argvs() and full == Path("/mnt/tank/r/app_db")
    runner.fake.on_receive = None
    incr = rec.model_copy(update={"parent": "job-20261202T040000Z"})
    drv.restore(io.BytesIO(b"incr"), "send", DatasetDest("tank/r/app_db"), incr, None)
    assert runner.procs[-1].argv == ["zfs", "receive", "-x", "mountpoint", "-F", "--", "tank/r/app_db"]


def test_drill_dataset_and_its_undo():
    drv, runner = make("tank")
    name = drv.drill_dataset(MANIFEST, "job-1.42")
    assert name == "tank/snapagent-drill/job-1.42"
    assert ["zfs", "create", "-p", "--", "tank/snapagent-drill"] in runner.argvs()
    runner.fake.add(name)
    ZfsDriver.undo({"kind": "dataset", "key": name}, runner)
    assert ["zfs", "destroy", "-r", "--", name] in runner.argvs() and name not in runner.fake.datasets
    drv2, _ = make("tank", opts={"drill_parent": "tank/scratch space"})
    assert drv2.drill_dataset(MANIFEST, "u") == "tank/scratch space/u"


# -- stderr parsing and config --------------------------------------------------------------------
@pytest.mark.parametrize("stderr,kind,subject", [
    ("cannot open 'tank/a b': dataset does not exist", "no-dataset", "tank/a b"),
    ("cannot create snapshot 'tank/x@s': dataset already exists\nno snapshots were created", "exists", "tank/x@s"),
    ("cannot destroy snapshot tank/x@s: dataset is busy", "busy", None),
    ("cannot release hold from snapshot 'tank/x@s': no such tag on this dataset", "no-tag", "tank/x@s"),
    ("cannot hold snapshot 'tank/x@s': tag already exists on this dataset", "tag-exists", "tank/x@s"),
    ("cannot create snapshots : out of space", "no-space", None),
    ("The ZFS modules are not loaded.\nTry running '/sbin/modprobe zfs' as root to load them.", "no-module", None),
    ("cannot receive new filesystem stream: destination 'tank/r' exists", "exists", "tank/r"),
    ("cannot open 'tank': pool I/O is currently suspended", "suspended", "tank"),
    ("something new", "other", None),
])
def test_classify(stderr, kind, subject):
    p = classify(stderr)
    assert (p.kind, p.subject) == (kind, subject)


def _cfg(tmp_path, options: str) -> str:
    return (f'[agent]\nstate_dir = {json.dumps(str(tmp_path))}\n[targets.local]\ntype = "directory"\n'
            f'path = {json.dumps(str(tmp_path / "b"))}\n[jobs.db]\ndriver = "zfs"\nvolumes = ["tank/app db"]\n'
            f'target = "local"\n[jobs.db.options]\n{options}\n')


def test_config_options(tmp_path):
    import tomllib

    cfg = parse(tomllib.loads(_cfg(tmp_path, 'recursive = true\nmin_free = "1GiB"\ndrill_parent = "tank/drill"')), tmp_path / "c.toml")
    job = cfg.job("db")
    assert job.export == "send" and job.options.min_free == 1 << 30 and job.options.recursive
    for bad, key in (('drill_parent = "tank/x;y"', "jobs.db.options.drill_parent"), ("bogus = 1", "jobs.db.options.bogus")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            parse(tomllib.loads(_cfg(tmp_path, bad)), tmp_path / "c.toml")


def test_check_dataset_reads_only_and_reports_the_space_of_the_nearest_ancestor():
    drv, runner = make("tank", "tank/exists")
    runner.fake.add("tank/restores", available=5 << 20)
    assert drv.check_dataset("tank/restores/new/deeper", MANIFEST, force=False) == \
        DatasetSpace(5 << 20, "zfs dataset tank/restores")
    assert drv.check_dataset("/srv/restore", MANIFEST.model_copy(update={"export_format": "tar"}), False) is None
    with pytest.raises(RestoreRefused, match="already exists.*--force"):
        drv.check_dataset("tank/exists", MANIFEST, force=False)
    with pytest.raises(RestoreRefused, match="pool 'nopool' does not exist"):
        drv.check_dataset("nopool/x", MANIFEST, force=False)
    assert {c[1] for c in runner.argvs()} == {"list"}  # nothing created, renamed or received


def test_restore_precheck_refuses_a_dataset_without_the_space_and_reads_no_artifact():
    drv, runner = make("tank")
    runner.fake.add("tank/small", available=1 << 20)
    big = MANIFEST.model_copy(update={"artifacts": [MANIFEST.artifacts[0].model_copy(update={"raw_size": 3 << 20})]})

    class NoReads:  # the precheck must never open an artifact
        name = "local"

        def __getattr__(self, attr):
            raise AssertionError(f"precheck touched the target ({attr})")

    stored = Stored(big, NoReads(), "nowhere")
    NO_CHAIN = None  # a full backup: finding its chain needs no config
    with pytest.raises(RestoreRefused, match=r"--to tank/small/x: the restore needs about 3\.0 MiB .* "
                                             r"zfs dataset tank/small has 1\.0 MiB free.*--no-space-check"):
        precheck(NO_CHAIN, drv, stored, "tank/small/x")
    assert precheck(NO_CHAIN, drv, stored, "tank/small/x", space=False).need is None
    assert precheck(NO_CHAIN, drv, stored, "tank/x").free == 1 << 30

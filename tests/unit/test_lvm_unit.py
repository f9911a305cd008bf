"""Unit tests of the LVM drivers with a fake runner: exact argv, size policy, Snap% and lvs parsing,
mountinfo lookup by device number, journaling and undo. The real thing is proven in tests/vm."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import pytest

from plugins.lvm import LvmDriver, LvmThinDriver
from plugins.lvm.monitor import SnapWatch
from plugins.lvm.names import name_problem, parse_volume, snapshot_name
from plugins.lvm.options import LvmOptions, LvmThinOptions
from plugins.lvm.report import parse_lv, parse_snap_status, snap_status_argv
from plugins.lvm.sizing import parse_policy, room_problems, snapshot_bytes
from snapagent.errors import ConfigError, PreflightFailed, SnapshotFailed
from snapagent.journal import Journal, read_open
from snapagent.util import mountinfo
from tests.helpers.fakerunner import FakeRunner
from tests.helpers.lvm_fakes import MIB, lv_line, lvm_runner, lvs_info_argv, not_found

MOUNTINFO = (
    "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
    "40 22 254:0 /sub /srv/bind rw - ext4 /dev/mapper/vg0-data rw\n"
    "41 22 254:0 / /srv/my\\040data rw - ext4 /dev/mapper/vg0-data rw\n"
    "42 22 254:1 / /srv/x rw - xfs /dev/mapper/vg0-x rw\n"
)


@pytest.fixture
def mounts(monkeypatch):
    """Make mountinfo.read return MOUNTINFO (plus whatever a test appends to the list)."""
    extra: list[str] = []
    monkeypatch.setattr(mountinfo, "read", lambda path=None: mountinfo.parse(MOUNTINFO + "".join(extra)))
    return extra


# -- names ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["data", "my.lv", "a+b_c-d", "X9"])
def test_valid_names(name):
    assert name_problem(name) is None


@pytest.mark.parametrize("volume,fragment", [
    ("vg0/my data", "' '"), ("vg0/a;b", "';'"), ("vg0/$(reboot)", "'$'"), ("vg0/-lv", "starts with '-'"),
    ("vg0/a\nb", "'\\n'"), ("vg0/..", "'.' or '..'"), ("vg0/x_tmeta", "_tmeta"), ("vg0/" + "a" * 128, "longer"),
    ("vg0", "'vg/lv'"), ("vg0/a/b", "'vg/lv'"), ("/dev/vg0/data", "'vg/lv'"), ("vg 0/data", "volume group name"),
])
def test_invalid_volume_names_are_config_errors(volume, fragment):
    with pytest.raises(ConfigError) as e:
        parse_volume(volume)
    assert fragment in str(e.value) and repr(volume) in str(e.value)
    assert e.value.exit_code == 2


def test_snapshot_names():
    assert snapshot_name("snapagent-j-1", 0, 1) == "snapagent-j-1"
    assert snapshot_name("snapagent-j-1", 1, 3) == "snapagent-j-1.1"
    with pytest.raises(ConfigError):
        snapshot_name("x" * 130, 0, 1)


# -- size policy -----------------------------------------------------------------------------------
@pytest.mark.parametrize("origin,extent,policy,want", [
    (100 * MIB, 4 * MIB, "20%", 20 * MIB),       # exact
    (100 * MIB, 4 * MIB, "10%", 12 * MIB),       # 10 MiB rounds up to 3 extents
    (8 * MIB, 4 * MIB, "1%", 4 * MIB),           # at least one extent
    (100 * MIB, 4 * MIB, "10M", 12 * MIB),       # absolute size, rounded up
    (100 * MIB, 4 * MIB, "1G", 1024 * MIB),      # absolute may exceed the origin
    (1000 * MIB, 1 * MIB, "33.3%", 333 * MIB),   # ceil(333.0) MiB
    (100 * MIB, 4 * MIB, "100%", 100 * MIB),
])
def test_size_policy_arithmetic(origin, extent, policy, want):
    assert snapshot_bytes(parse_policy(policy), origin, extent) == want


@pytest.mark.parametrize("bad", ["0%", "150%", "-1%", "abc", "12", "", "5 %x"])
def test_size_policy_rejects(bad):
    with pytest.raises(ValueError):
        parse_policy(bad)


def test_room_problems_names_the_numbers():
    ok = room_problems({"vg0": [("vg0/a", 8 * MIB), ("vg0/b", 8 * MIB)]}, {"vg0": 16 * MIB})
    assert ok == []
    [msg] = room_problems({"vg0": [("vg0/a", 8 * MIB), ("vg0/b", 12 * MIB)]}, {"vg0": 16 * MIB})
    assert "16.0 MiB (16777216 bytes) free" in msg and "20.0 MiB (20971520 bytes)" in msg
    assert "vg0/a 8.0 MiB" in msg and "vg0/b 12.0 MiB" in msg


def test_options_validation_names_the_key(tmp_path):
    from snapagent import config

    base = {"targets": {"t": {"type": "directory", "path": str(tmp_path)}}}
    for opts, key in (({"snapshot_size": "200%"}, "jobs.j.options.snapshot_size"),
                      ({"mount_base": "rel"}, "jobs.j.options.mount_base"),
                      ({"mount_options": ["ro,rw"]}, "jobs.j.options.mount_options"),
                      ({"poll_interval": "0s"}, "jobs.j.options.poll_interval"),
                      ({"bogus": 1}, "jobs.j.options.bogus")):
        data = {**base, "jobs": {"j": {"driver": "lvm", "volumes": ["vg0/data"], "target": "t", "options": opts}}}
        with pytest.raises(ConfigError) as e:
            config.parse(data, tmp_path / "c.toml")
        assert key in str(e.value), str(e.value)
    data = {**base, "jobs": {"j": {"driver": "lvm-thin", "volumes": ["vg0/data"], "target": "t",
                                   "options": {"max_data_percent": 0}}}}
    with pytest.raises(ConfigError, match="jobs.j.options.max_data_percent"):
        config.parse(data, tmp_path / "c.toml")


# -- parsing ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,pct,failed,invalid", [
    ("  12.50|swi-aos---\n", 12.5, False, False),
    ("  0.00|swi-a-s---\n", 0.0, False, False),
    ("  99.99|swi-a-s---\n", 99.99, False, False),
    ("  100.00|swi-a-s---\n", 100.0, True, False),
    ("  100.00|swi-I-s---\n", 100.0, True, True),
    ("  |Swi-I-s---\n", None, True, True),
    ("  |swi-a-s---\n", None, False, False),
])
def test_snap_percent_parsing(text, pct, failed, invalid):
    st = parse_snap_status(text)
    assert (st.percent, st.failed, st.invalid) == (pct, failed, invalid)
    assert "Snap%" in st.describe()


@pytest.mark.parametrize("text", ["", "a|b|c\n", "  12.5|\n", "x|y\nz|w\n"])
def test_snap_percent_parsing_rejects_garbage(text):
    with pytest.raises(ValueError):
        parse_snap_status(text)


def test_parse_lv():
    info = parse_lv(lv_line(pool="pool0", attr="Vwi-aotz--", data="12.34", meta=""))
    assert (info.vg, info.lv, info.size, info.vg_free, info.extent_size) == ("vg0", "data", 100 * MIB, 128 * MIB, 4 * MIB)
    assert (info.major, info.minor, info.data_percent, info.metadata_percent) == (254, 0, 12.34, None)
    assert info.is_thin and info.active and not info.is_snapshot
    assert not parse_lv(lv_line(major=-1, minor=-1, attr="-wi-------")).active


def test_mountinfo_by_device_number_unescapes_spaces():
    entries = mountinfo.parse(MOUNTINFO)
    e = mountinfo.find_device(254, 0, entries)
    assert e.mount_point == "/srv/my data" and e.root == "/" and e.fstype == "ext4"
    assert mountinfo.find_device(254, 9, entries) is None
    assert mountinfo.mounted_at(Path("/srv/x/"), entries).fstype == "xfs"
    assert mountinfo.unescape("a\\011b\\134c\\012") == "a\tb\\c\n"


def test_mountinfo_of_this_process_parses():
    entries = mountinfo.read()
    assert any(e.mount_point == "/" for e in entries)


# -- driver: preflight -----------------------------------------------------------------------------
def classic(answers=None, **opts) -> tuple[LvmDriver, FakeRunner]:
    r = lvm_runner(answers)
    return LvmDriver(r, LvmOptions(**opts)), r


def test_preflight_exact_argv_and_volume_root(mounts, tmp_path):
    d, r = classic({lvs_info_argv("vg0/data"): lv_line()}, mount_base=tmp_path)
    d.preflight(["vg0/data"])
    assert r.argvs() == [["lvs", "--noheadings", "--nosuffix", "--units", "b", "--separator", "|", "-o",
                          "vg_name,lv_name,lv_attr,lv_size,vg_free,vg_extent_size,lv_kernel_major,lv_kernel_minor,"
                          "origin,pool_lv,data_percent,metadata_percent,lv_dm_path", "vg0/data"]]
    assert d.volume_root("vg0/data") == Path("/srv/my data")  # the whole-fs mount, not the bind of /sub


def test_preflight_refuses_bad_names_before_any_command(mounts):
    d, r = classic()
    with pytest.raises(ConfigError, match="';'"):
        d.preflight(["vg0/ok", "vg0/x;rm -rf"])
    assert r.calls == []


def test_preflight_refuses_missing_tool(mounts):
    r = lvm_runner(missing=("lvcreate",))
    with pytest.raises(PreflightFailed, match="lvcreate.*lvm2"):
        LvmDriver(r, LvmOptions()).preflight(["vg0/data"])


def test_preflight_refuses_missing_lv(mounts):
    d, r = classic({lvs_info_argv("vg0/nope"): not_found})
    with pytest.raises(PreflightFailed, match="'vg0/nope': no such logical volume.*Failed to find"):
        d.preflight(["vg0/nope"])


def test_preflight_refuses_unmounted_and_inactive(mounts):
    d, _ = classic({lvs_info_argv("vg0/data"): lv_line(minor=7)})
    with pytest.raises(PreflightFailed, match=r"254:7\) is not mounted"):
        d.preflight(["vg0/data"])
    d, _ = classic({lvs_info_argv("vg0/data"): lv_line(attr="-wi-------", major=-1, minor=-1)})
    with pytest.raises(PreflightFailed, match="not active"):
        d.preflight(["vg0/data"])


def test_preflight_refuses_thin_and_snapshot_origins(mounts):
    d, _ = classic({lvs_info_argv("vg0/data"): lv_line(attr="Vwi-aotz--", pool="pool0")})
    with pytest.raises(PreflightFailed, match="lvm-thin"):
        d.preflight(["vg0/data"])
    d, _ = classic({lvs_info_argv("vg0/data"): lv_line(attr="swi-a-s---", origin="o")})
    with pytest.raises(PreflightFailed, match="itself a snapshot"):
        d.preflight(["vg0/data"])


def test_preflight_refuses_vg_without_room_with_numbers(mounts):
    # two 100 MiB LVs at 20% need 40 MiB; the VG has 36 MiB free
    answers = {lvs_info_argv("vg0/data"): lv_line(vg_free=36 * MIB),
               lvs_info_argv("vg0/x"): lv_line(lv="x", minor=1, vg_free=36 * MIB)}
    d, r = classic(answers)
    with pytest.raises(PreflightFailed) as e:
        d.preflight(["vg0/data", "vg0/x"])
    msg = str(e.value)
    assert "'vg0' has 36.0 MiB (37748736 bytes) free" in msg and "40.0 MiB (41943040 bytes)" in msg
    assert "snapshot_size = '20%'" in msg
    assert r.argvs(mutating=True) == []
    d, _ = classic(answers, snapshot_size="16M")  # 2 x 16 MiB fits in 36 MiB
    d.preflight(["vg0/data", "vg0/x"])


# -- driver: snapshot, release, undo ---------------------------------------------------------------
def test_classic_snapshot_argv_and_journal(mounts, tmp_path):
    answers = {lvs_info_argv("vg0/data"): lv_line(), lvs_info_argv("vg0/x"): lv_line(lv="x", minor=1, size=10 * MIB)}
    d, r = classic(answers)
    d.journal = j = Journal.start(tmp_path, "job", "run1")
    d.preflight(["vg0/data", "vg0/x"])
    del r.calls[:]
    snaps = d.snapshot(["vg0/data", "vg0/x"], "snapagent-job-1", time.monotonic() + 10)
    assert r.argvs() == [["lvcreate", "-s", "-n", "snapagent-job-1.0", "-L", f"{20 * MIB}b", "vg0/data"],
                         ["lvcreate", "-s", "-n", "snapagent-job-1.1", "-L", f"{4 * MIB}b", "vg0/x"]]
    assert [s.handle for s in snaps] == ["vg0/snapagent-job-1.0", "vg0/snapagent-job-1.1"]
    assert snaps[0].info == {"lv": "vg0/snapagent-job-1.0", "fstype": "ext4", "snapshot_type": "cow", "cow_bytes": 20 * MIB}
    assert snaps[1].info["fstype"] == "xfs"
    recs = read_open(j.path)
    assert [(x["kind"], x["key"], x["owner"]["name"], x["origin"]) for x in recs] == [
        ("snapshot", "vg0/snapagent-job-1.0", "lvm", "data"), ("snapshot", "vg0/snapagent-job-1.1", "lvm", "x")]


def test_snapshot_failure_is_typed(mounts):
    answers = {lvs_info_argv("vg0/data"): lv_line()}
    argv = ("lvcreate", "-s", "-n", "s", "-L", f"{20 * MIB}b", "vg0/data")
    from snapagent.errors import CommandFailed
    answers[argv] = CommandFailed(list(argv), 5, "  Volume group \"vg0\" has insufficient free space (1 extents): 5 required.\n")
    d, _ = classic(answers)
    d.preflight(["vg0/data"])
    with pytest.raises(SnapshotFailed, match="insufficient free space"):
        d.snapshot(["vg0/data"], "s", time.monotonic() + 10)


def test_dry_run_prints_lvcreate_and_runs_nothing_mutating(mounts):
    r = lvm_runner({lvs_info_argv("vg0/data"): lv_line()}, dry_run=True)
    d = LvmDriver(r, LvmOptions())
    d.preflight(["vg0/data"])
    d.snapshot(["vg0/data"], "snapagent-j-1", time.monotonic() + 10)
    assert r.echoed == [f"would run: lvcreate -s -n snapagent-j-1 -L {20 * MIB}b vg0/data"]


def test_release_checks_origin_then_removes(mounts, tmp_path):
    from snapagent.plugin.driver import Snapshot

    snap_ref = "vg0/snapagent-j-1"
    d, r = classic({lvs_info_argv(snap_ref): lv_line(lv="snapagent-j-1", attr="swi-a-s---", origin="data")})
    d.journal = j = Journal.start(tmp_path, "job", "run1")
    j.open("snapshot", snap_ref, {"kind": "driver", "name": "lvm"}, origin="data")
    d.release(Snapshot("vg0/data", snap_ref, "snapagent-j-1"))
    assert r.argvs(mutating=True) == [["lvremove", "-f", snap_ref]]
    assert read_open(j.path) == []


def test_release_refuses_to_remove_a_stranger(mounts):
    from snapagent.errors import OperationFailed
    from snapagent.plugin.driver import Snapshot

    d, r = classic({lvs_info_argv("vg0/snapagent-j-1"): lv_line(lv="snapagent-j-1", origin="other", attr="swi-a-s---")})
    with pytest.raises(OperationFailed, match="not a snapshot of vg0/data"):
        d.release(Snapshot("vg0/data", "vg0/snapagent-j-1", "snapagent-j-1"))
    assert r.argvs(mutating=True) == []


def test_undo_snapshot_and_mount(mounts, tmp_path):
    ref = "vg0/snapagent-j-1"
    r = lvm_runner({lvs_info_argv(ref): lv_line(lv="snapagent-j-1", attr="swi-a-s---", origin="data")})
    msg = LvmDriver.undo({"kind": "snapshot", "key": ref, "origin": "data"}, r)
    assert msg == f"removed LVM snapshot {ref}" and r.argvs(mutating=True) == [["lvremove", "-f", ref]]
    gone = lvm_runner({("lvs", "--noheadings", "-o", "lv_name", ref): not_found})
    assert LvmThinDriver.undo({"kind": "snapshot", "key": ref, "origin": "data"}, gone) == f"LVM snapshot {ref} already gone"
    assert gone.argvs(mutating=True) == []
    # a mount with a space in its path: umount, then the private directories are removed
    mnt = tmp_path / "mount base" / "snapagent-j-1" / "root"
    mnt.mkdir(parents=True)
    mounts.append(f"50 22 254:5 / {str(mnt).replace(' ', chr(92) + '040')} ro - ext4 /dev/mapper/vg0-snapagent--j--1 ro\n")
    calls = []

    def umount(argv):
        calls.append(argv)
        mounts.clear()
        return ""

    r = lvm_runner({("umount", str(mnt)): umount})
    assert LvmDriver.undo({"kind": "mount", "key": str(mnt)}, r) == f"unmounted {mnt}"
    assert calls == [["umount", str(mnt)]]
    assert not mnt.parent.exists() and (tmp_path / "mount base").is_dir()
    assert LvmDriver.undo({"kind": "mount", "key": str(mnt)}, lvm_runner()) == f"mount {mnt} already gone"


# -- thin ------------------------------------------------------------------------------------------
def thin_answers(data="10.00", meta="5.00"):
    return {lvs_info_argv("vg0/data"): lv_line(attr="Vwi-aotz--", pool="pool0", data="3.00"),
            lvs_info_argv("vg0/pool0"): lv_line(lv="pool0", attr="twi-aotz--", major=254, minor=9, data=data, meta=meta)}


def test_thin_snapshot_argv(mounts):
    r = lvm_runner(thin_answers())
    d = LvmThinDriver(r, LvmThinOptions())
    d.preflight(["vg0/data"])
    del r.calls[:]
    [snap] = d.snapshot(["vg0/data"], "snapagent-j-1", time.monotonic() + 10)
    assert r.argvs() == [["lvcreate", "-s", "-kn", "-n", "snapagent-j-1", "vg0/data"]]
    assert snap.info["snapshot_type"] == "thin" and snap.info["pool"] == "pool0"


@pytest.mark.parametrize("data,meta,fragment", [
    ("85.50", "5.00", "data is 85.50% full, above options.max_data_percent = 80%"),
    ("10.00", "91.25", "metadata is 91.25% full, above options.max_metadata_percent = 80%"),
    ("", "", "usage unknown"),
])
def test_thin_pool_usage_refused_with_numbers(mounts, data, meta, fragment):
    d = LvmThinDriver(lvm_runner(thin_answers(data, meta)), LvmThinOptions())
    with pytest.raises(PreflightFailed, match="vg0/pool0") as e:
        d.preflight(["vg0/data"])
    assert fragment in str(e.value)


def test_thin_refuses_thick_lv(mounts):
    d = LvmThinDriver(lvm_runner({lvs_info_argv("vg0/data"): lv_line()}), LvmThinOptions())
    with pytest.raises(PreflightFailed, match='not a thin volume.*use driver "lvm"'):
        d.preflight(["vg0/data"])


# -- Snap% watch and export ------------------------------------------------------------------------
def test_snapwatch_stops_export_when_full():
    seq = iter(["  10.00|swi-aos---", "  55.00|swi-aos---", "  100.00|swi-I-s---"])
    fired = threading.Event()
    w = SnapWatch(lambda: parse_snap_status(next(seq)), 0.01, on_fail=fired.set).start()
    assert fired.wait(5)
    w.stop()
    assert w.failure.invalid and w.max_percent == 100.0 and w.polls == 3


def test_export_fails_naming_snap_percent_when_snapshot_fills(mounts, tmp_path):
    """lvs reports the snapshot invalid after a few polls while a (stand-in, endless) export runs."""
    base = tmp_path / "mount base"
    base.mkdir()
    ref = "vg0/snapagent-j-1"
    polls = {"n": 0}

    def status(argv):
        polls["n"] += 1
        return "  42.00|swi-aos---" if polls["n"] < 3 else "  100.00|swi-I-s---"

    answers = {lvs_info_argv(ref): lv_line(lv="snapagent-j-1", attr="swi-a-s---", origin="data", minor=5),
               tuple(snap_status_argv(ref)): status}

    from snapagent.plugin.driver import Snapshot

    r = lvm_runner(answers, stream=lambda argv: ["sleep", "30"])  # a tar that would take 30 s
    d = LvmDriver(r, LvmOptions(mount_base=base, poll_interval="0.05s"))
    snap = Snapshot("vg0/data", ref, "snapagent-j-1", {"fstype": "ext4", "cow_bytes": 4 * MIB})
    t0 = time.monotonic()
    with pytest.raises(SnapshotFailed) as e:
        with d.export(snap, "tar") as stream:
            stream.read()
    assert time.monotonic() - t0 < 10, "the watch must kill tar as soon as the snapshot fails"
    assert "Snap% 100.00%" in str(e.value) and "invalid" in str(e.value) and "snapshot_size" in str(e.value)
    mnt = base / "snapagent-j-1" / "root"
    assert ["mount", "-t", "ext4", "-o", "ro", "--source", "/dev/mapper/vg0-snapagent--j--1", "--target", str(mnt)] in r.argvs()
    assert not (base / "snapagent-j-1").exists()
    assert snap.info["snap_percent_max"] == 100.0


def test_export_ok_records_max_snap_percent_and_xfs_nouuid(mounts, tmp_path):
    ref = "vg0/s"
    answers = {lvs_info_argv(ref): lv_line(lv="s", attr="swi-a-s---", origin="x", minor=5),
               tuple(snap_status_argv(ref)): "  7.25|swi-a-s---"}

    from snapagent.plugin.driver import Snapshot

    r = lvm_runner(answers, stream=lambda argv: argv)  # the real tar
    d = LvmDriver(r, LvmOptions(mount_base=tmp_path, mount_options=["norecovery"]))
    snap = Snapshot("vg0/x", ref, "s", {"fstype": "xfs"})
    with d.export(snap, "tar") as stream:
        data = stream.read()
    assert len(data) >= 1024
    assert ["mount", "-t", "xfs", "-o", "ro,nouuid,norecovery", "--source", "/dev/mapper/vg0-s", "--target",
            str(tmp_path / "s" / "root")] in r.argvs()
    assert snap.info["snap_percent_max"] == 7.25


def test_cli_refuses_bad_lv_name_with_exit_2_before_any_command(tmp_path):
    """The real CLI: a volume name LVM would refuse is a config error (exit 2) naming the volume."""
    import json
    import sys

    cfg = tmp_path / "c.toml"
    cfg.write_text(f"[agent]\nstate_dir = {json.dumps(str(tmp_path / 'state'))}\n"
                   f"[targets.t]\ntype = \"directory\"\npath = {json.dumps(str(tmp_path / 'b'))}\n"
                   "[jobs.j]\ndriver = \"lvm\"\nvolumes = [\"vg0/my data; $(reboot)\"]\ntarget = \"t\"\n")
    r = subprocess.run([sys.executable, "-m", "snapagent", "-c", str(cfg), "backup", "j"], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "volume 'vg0/my data; $(reboot)': logical volume name 'my data; $(reboot)' contains" in r.stderr
    assert "LVM names may only use A-Z a-z 0-9 + _ . -" in r.stderr
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob("state/journal/*/*"))

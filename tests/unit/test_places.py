"""snapagent.places: a configured snapshot place inside a volume or a database's data is refused,
naming the key and a better place; config check decides it from the config's paths alone."""

from pathlib import Path

from plugins.btrfs import BtrfsDriver, BtrfsOptions
from plugins.lvm.base import LvmDriverBase
from plugins.lvm.options import LvmCommonOptions
from snapagent import places
from snapagent.plugin.driver import SnapshotPlaces

VOL = [("volume '/srv/pg'", Path("/srv/pg"))]


def test_outside_is_accepted():
    assert places.refusals("jobs.a", [("options.snapshot_dir", "/srv/snaps")], VOL) == []
    assert places.refusals("jobs.a", [("options.snapshot_dir", "/srv/pg-snaps")], VOL) == []  # a prefix is not inside


def test_inside_a_volume_names_the_key_and_a_better_place():
    [msg] = places.refusals("jobs.a", [("options.snapshot_dir", "/srv/pg/data/../snaps")], VOL)
    assert msg.startswith("jobs.a.options.snapshot_dir: /srv/pg/data/../snaps lies inside volume '/srv/pg'")
    assert msg.endswith("e.g. /srv/snaps")


def test_the_better_place_is_outside_the_outermost_root():
    roots = [*VOL, ("the data of sqlite", Path("/srv/pg/db"))]
    [msg] = places.refusals("jobs.a", [("options.mount_base", "/srv/pg/db/m")], roots)
    assert "inside volume '/srv/pg'" in msg and msg.endswith("e.g. /srv/m")


def test_relative_lies_inside_every_volume():
    [msg] = places.refusals("jobs.a", [("options.snapshot_dir", ".snapagent-snapshots")], VOL)
    assert "jobs.a.options.snapshot_dir: '.snapagent-snapshots' is relative" in msg


def test_resolved_paths_follow_symlinks(tmp_path):
    vol = tmp_path / "vol"
    vol.mkdir()
    (tmp_path / "link").symlink_to(vol)
    place = str(tmp_path / "link" / "snaps")
    roots = [("volume", vol)]
    assert places.refusals("jobs.a", [("k", place)], roots) == []  # as written: not inside
    assert len(places.refusals("jobs.a", [("k", place)], roots, resolve=True)) == 1


def test_drivers_name_their_configured_places():
    assert issubclass(BtrfsDriver, SnapshotPlaces) and issubclass(LvmDriverBase, SnapshotPlaces)
    assert BtrfsDriver.configured_places(BtrfsOptions()) == []
    assert BtrfsDriver.configured_places(BtrfsOptions(snapshot_dir="/s")) == [("options.snapshot_dir", "/s")]
    assert LvmDriverBase.configured_places(LvmCommonOptions()) == []
    assert LvmDriverBase.configured_places(LvmCommonOptions(mount_base="/m")) == [("options.mount_base", "/m")]

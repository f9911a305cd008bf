"""mountinfo parsing and the mount a path lies on."""

import pytest

from snapagent.util.mountinfo import MountEntry, find_mount, mount_of, read

INFO = """\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
30 22 0:27 / /srv rw shared:2 - btrfs /dev/vdb rw,subvol=/
31 30 0:27 /sub /srv/sub\\040dir rw shared:3 - btrfs /dev/vdb rw,subvol=/sub
40 22 7:0 / /mnt/disk rw - ext4 /dev/loop0 rw
41 40 7:9 / /mnt/disk rw - xfs /dev/loop9 rw
"""


@pytest.fixture
def table(tmp_path):
    p = tmp_path / "mountinfo"
    p.write_text(INFO)
    return read(str(p))


def test_parse(table):
    assert table[2] == MountEntry(0, 27, "/sub", "/srv/sub dir", "btrfs", "/dev/vdb", "rw,subvol=/sub")
    assert table[2].dev == "0:27"
    assert table[1].dev == table[2].dev  # one btrfs filesystem under two mount points


def test_longest_prefix(table):
    assert find_mount("/srv/sub dir/a/b", table).mount_point == "/srv/sub dir"
    assert find_mount("/srv/sub", table).mount_point == "/srv"  # a prefix of a name is not a parent
    assert find_mount("/srv", table).mount_point == "/srv"
    assert find_mount("/etc/passwd", table).mount_point == "/"


def test_overmount_last_wins(table):
    assert find_mount("/mnt/disk/x", table).fstype == "xfs"


def test_real_root():
    assert mount_of("/").mount_point == "/"
    assert mount_of("/proc/self/nonexistent").mount_point == "/proc"

"""What a failed restore says: a full disk recognised in an OSError or a tool's stderr, one line
naming what was removed or exactly what is left where (restore_undo)."""

from __future__ import annotations

import errno
import logging

from snapagent.errors import CommandFailed, OperationFailed
from snapagent.restore_dest import DestCheck
from snapagent.restore_undo import out_of_space, ran_out_of_space, report


def test_a_full_disk_is_recognised_wherever_it_shows():
    assert out_of_space(OSError(errno.ENOSPC, "No space left on device"))
    assert out_of_space(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not out_of_space(OSError(errno.EACCES, "Permission denied"))
    assert out_of_space(CommandFailed(["btrfs", "receive"], 1, "ERROR: write: No space left on device\n"))
    assert not out_of_space(CommandFailed(["tar"], 2, "tar: x: Cannot open: Permission denied\n"))
    assert out_of_space(OperationFailed("zfs receive into 'tank/x' failed: No space left on device"))


def test_running_out_of_space_is_one_line_with_the_figures():
    e = CommandFailed(["/usr/bin/tar", "--extract"], 2, "tar: big: Cannot write: No space left on device\n")
    msg = str(ran_out_of_space(DestCheck("/srv/r", 3 << 20, 2 << 20), e))
    assert msg == ("restore into /srv/r ran out of space (tar: no space left on device): "
                   "it needs about 3.0 MiB and 2.0 MiB was free when it started")
    assert "\n" not in msg
    assert str(ran_out_of_space(DestCheck("tank/r"), OSError(errno.ENOSPC, "x"))) == \
        "restore into tank/r ran out of space (no space left on device)"


def test_the_line_names_what_is_left_where(caplog):
    caplog.set_level(logging.INFO, logger="snapagent")
    taken = [{"kind": "renamed", "key": "/srv/r.pre-restore-1", "back_to": "/srv/r"},
             {"kind": "dir", "key": "/srv/r"}, {"kind": "received", "key": "/srv/r/snap.0"},
             {"kind": "dataset", "key": "tank/r"}]
    report("/srv/r", taken, taken)
    assert caplog.records[-1].levelno == logging.ERROR
    assert caplog.records[-1].getMessage() == (
        "restore failed part-way and left /srv/r.pre-restore-1 (the previous content of /srv/r, not moved back); "
        "/srv/r (partly restored); /srv/r/snap.0 (a received subvolume); zfs dataset tank/r (partly received); "
        "`snapagent cleanup` removes it (and moves previous content back)")
    report("/srv/r", taken, [])
    assert caplog.records[-1].levelno == logging.WARNING
    assert caplog.records[-1].getMessage() == ("restore failed part-way: removed what it wrote to /srv/r; its "
                                               "previous content is back in place (from /srv/r.pre-restore-1)")
    n = len(caplog.records)
    report("/srv/r", [], [])  # refused before anything was taken: nothing to say
    assert len(caplog.records) == n

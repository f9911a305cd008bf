"""A restore writes back what it extracts while it extracts (``fs.flushing`` of DEST's
filesystem), a drill's scratch copy does not, and a flush that fails fails the restore — with
fake plugins, a real tar export, the real directory target, check pass and GNU tar."""

from __future__ import annotations

import contextlib
import errno
import io
import tarfile
import time

import pytest

from snapagent import drill, restore
from snapagent.errors import OperationFailed
from snapagent.util import fs, tar
from snapagent.util.runner import Runner
from tests.helpers.fakeplugins import FakeDriver, backup_run


class TarDriver(FakeDriver):
    """Exports each volume as a small tar; restores it with ``tar.extract``, slowly enough for
    the flusher to run while it writes (it notes how many flushes ran meanwhile)."""

    flushes_while_writing: list[int] = []

    @contextlib.contextmanager
    def export(self, snap, fmt, base=None):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
            data = b"content of " + snap.volume.encode()
            info = tarfile.TarInfo("./f.txt")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        buf.seek(0)
        yield buf

    def restore(self, stream, fmt, dest, record, scan, allow_special=False):
        dest.path.mkdir(mode=0o700)
        before = len(SYNCED)
        tar.extract(Runner(), stream, dest.path, scan, allow_special)
        time.sleep(0.1)
        self.flushes_while_writing.append(len(SYNCED) - before)
        return dest.path


SYNCED: list[str] = []


@pytest.fixture
def backed_up(tmp_path, monkeypatch):
    """(config, backup id) of one backup of the fake job; fs._syncfs records its paths in SYNCED,
    flushes come every 10 ms."""
    SYNCED.clear()
    TarDriver.flushes_while_writing = []
    monkeypatch.setattr(fs, "_syncfs", lambda fd, path: SYNCED.append(str(path)))
    monkeypatch.setattr(fs, "FLUSH_EVERY", 0.01)
    for module in (restore, drill):
        monkeypatch.setattr(module, "driver_for", lambda config, m, runner: TarDriver(runner))
    run, cfg = backup_run(tmp_path, [])
    run.driver = TarDriver(run.runner)
    return cfg, run.run().manifest.id


def test_a_restore_flushes_its_destination_while_it_writes(backed_up, tmp_path):
    cfg, bid = backed_up
    dest = tmp_path / "dest"
    restore.restore(cfg, Runner(), bid, dest)
    assert (dest / "v1" / "f.txt").read_bytes() == b"content of /v1"
    assert TarDriver.flushes_while_writing and all(n > 0 for n in TarDriver.flushes_while_writing)
    assert str(dest) in SYNCED  # the flusher's; then the final flush of each volume (_durable)
    assert set(SYNCED) <= {str(dest), str(dest / "v1"), str(dest / "v2")}


def test_a_drill_does_not_flush_its_scratch_copy(backed_up):
    cfg, bid = backed_up
    drill.drill(cfg, Runner(), bid)
    assert TarDriver.flushes_while_writing == [0, 0] and SYNCED == []


def test_a_flush_that_fails_fails_the_restore(backed_up, tmp_path, monkeypatch):
    cfg, bid = backed_up

    def broken(fd, path):  # the flusher's flushes of DEST fail, the final ones (of each volume) do not
        if path == tmp_path / "dest":
            raise OSError(errno.EIO, "Input/output error", str(path))

    monkeypatch.setattr(fs, "_syncfs", broken)
    with pytest.raises(OperationFailed, match="cannot flush the restored files to disk"):
        restore.restore(cfg, Runner(), bid, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()

"""The directory target's data path: a multi-threaded zstd store (bounded jobs, written back while
writing) reads back byte for byte with every hash checked; a restore flushes what it wrote; the
pipes a restore feeds tar through hold a whole chunk."""

from __future__ import annotations

import hashlib
import io
import os
import time

import pytest

from snapagent import restore
from snapagent.errors import OperationFailed, VerifyFailed
from snapagent.manifest import Artifact
from snapagent.targets import streams
from snapagent.targets.directory import DirectoryConfig
from snapagent.targets.streams import HashingSink, VerifyingReader, store_plain
from snapagent.util import fs


def _data() -> bytes:
    """~12 MiB: several zstd jobs, more than one writeback step once compressed."""
    text = b"".join(b"line %d of a log that compresses well\n" % i for i in range(60_000))
    return os.urandom(10 << 20) + text


def test_threaded_store_reads_back_with_hashes_checked(tmp_path):
    data = _data()
    cfg = DirectoryConfig(path=tmp_path, zstd_threads=2)
    path = tmp_path / "a.tar.zst"
    with open(path, "wb") as f:
        sink = HashingSink(f, writeback=True)
        raw = store_plain(io.BytesIO(data), sink, cfg)
        f.flush()
    stored = path.read_bytes()
    assert raw == len(data) and sink.size == len(stored) > streams.WRITEBACK
    assert sink.h.hexdigest() == hashlib.sha256(stored).hexdigest()
    art = Artifact(name=path.name, size=sink.size, sha256=sink.h.hexdigest(), compression="zstd", raw_size=raw)
    with VerifyingReader(path, art) as r:
        out = b"".join(iter(lambda: r.read(1 << 20), b""))
        r.finish()
    assert out == data
    bad = art.model_copy(update={"sha256": "0" * 64})
    with VerifyingReader(path, bad) as r, pytest.raises(VerifyFailed, match="sha256 mismatch"):
        r.finish()


def test_a_restore_flushes_its_volumes_and_extras(tmp_path, monkeypatch):
    flushed = []
    monkeypatch.setattr(fs, "syncfs", lambda paths: flushed.extend(paths))
    result = restore.Restored({"volumes": [{"path": str(tmp_path / "v")}]}, lambda live: tmp_path,
                              [{"artifacts": [{"restored": str(tmp_path / "dump")}]}])
    restore._durable(result)
    assert flushed == [tmp_path / "v", tmp_path / "dump"]


def test_syncfs_flushes_once_per_filesystem_and_names_what_fails(tmp_path):
    (tmp_path / "a").mkdir()
    fs.syncfs([tmp_path, tmp_path / "a"])  # one filesystem: one flush
    result = restore.Restored({"volumes": [{"path": str(tmp_path / "gone")}]}, lambda live: tmp_path)
    with pytest.raises(OperationFailed, match="cannot flush the restored files to disk.*gone"):
        restore._durable(result)


def test_widen_pipe_grows_a_pipe_and_leaves_anything_else():
    import fcntl

    r, w = os.pipe()
    try:
        with os.fdopen(w, "wb") as f:
            fs.widen_pipe(f)
            assert fcntl.fcntl(r, fcntl.F_GETPIPE_SZ) == 1 << 20
    finally:
        os.close(r)
    fs.widen_pipe(io.BytesIO())  # no pipe: nothing happens, nothing raised


def test_read_ahead_hands_out_exactly_what_it_hashed_in_any_read_sizes():
    data = os.urandom(5 * streams.CHUNK + 123)
    src = streams.ReadAhead(io.BytesIO(data))
    assert src._thread is None  # opened only: nothing read yet
    out, asked, sizes = [], [], [1000, streams.CHUNK, 3 * streams.CHUNK + 5, 7]
    while chunk := src.read(n := sizes[len(out) % 4]):
        out.append(chunk)
        asked.append(n)
    assert b"".join(out) == data and src.read(10) == b""
    assert [len(c) for c in out[:-1]] == asked[:-1]  # short only at the end, like a buffered file
    assert src.size == len(data) and src.h.hexdigest() == hashlib.sha256(data).hexdigest()
    assert streams.ReadAhead(io.BytesIO(data)).read() == data  # read(): all of it
    src.stop()


class _Failing(io.RawIOBase):
    """Two chunks, then EIO."""

    def __init__(self):
        self.n = 0

    def readinto(self, b):
        self.n += 1
        if self.n > 2:
            raise OSError(5, "Input/output error")
        b[:] = b"x" * len(b)
        return len(b)

    def readable(self):
        return True


def test_read_ahead_raises_a_read_error_where_the_consumer_reaches_it():
    src = streams.ReadAhead(_Failing())
    assert len(src.read(2 * streams.CHUNK)) == 2 * streams.CHUNK
    with pytest.raises(OSError, match="Input/output error"):
        src.read(1)
    src.stop()
    art = Artifact(name="a", size=1, sha256="0" * 64, compression="none", raw_size=1)
    with streams.StreamReader(_Failing(), art) as r, pytest.raises(VerifyFailed, match="read error"):
        r.finish()


def test_stopping_a_read_ahead_early_does_not_wait_for_the_rest():
    src = streams.ReadAhead(io.BytesIO(bytes(64 * streams.CHUNK)))
    assert src.read(10) == bytes(10)
    t = time.monotonic()
    src.stop()
    assert not src._thread.is_alive() and time.monotonic() - t < 0.5
    with pytest.raises(ValueError):  # a reader left waiting is not stuck
        src.read(streams.CHUNK)

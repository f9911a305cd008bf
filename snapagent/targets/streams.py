"""The directory target's data path: what goes to disk (compressed, optionally age-encrypted,
hashed while streaming) and what comes back (``VerifyingReader``: decompressed, decrypted, every
hash checked at ``finish``). Constant memory both ways."""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import stat
import sys
import threading
from pathlib import Path
from typing import IO, TYPE_CHECKING

import zstandard

from snapagent.errors import ExportFailed, UsageError, VerifyFailed
from snapagent.manifest import Artifact
from snapagent.plugin.target import ArtifactReader
from snapagent.util import age

if TYPE_CHECKING:
    from snapagent.targets.directory import DirectoryConfig

CHUNK = 1 << 20
#: zstd's multi-threaded job size. Its memory is about threads × a few jobs in flight, and the
#: default job is 4 windows (8 MiB at level 3): ~100 MiB at 2 threads, reached a few dozen MB into
#: any export. 2 MiB jobs keep it at ~35 MiB; overlapping each job with a full window (overlap_log
#: 9) keeps the ratio of the default jobs. Measured by ``bench/cases/datapath.py``.
JOB_SIZE = 2 << 20
#: a writing sink hands every this many bytes to the kernel's writeback (``HashingSink``)
WRITEBACK = 8 << 20


class HashingSink:
    """File-like sink that hashes and counts what it writes before writing it to ``f``.

    ``writeback``: ``f`` is a regular file; every ``WRITEBACK`` bytes, start writing what was
    written to disk and drop it from the page cache once it is there (``POSIX_FADV_DONTNEED``),
    so the closing fsync has little left to wait for and a backup does not push the databases'
    pages out of the cache."""

    def __init__(self, f: IO[bytes], writeback: bool = False):
        self.f = f
        self.h = hashlib.sha256()
        self.size = 0
        self._written_back = 0 if writeback else None

    def write(self, data: bytes) -> int:
        self.h.update(data)
        self.size += len(data)
        n = self.f.write(data)
        if self._written_back is not None and self.size - self._written_back >= WRITEBACK:
            self.f.flush()
            os.posix_fadvise(self.f.fileno(), self._written_back, self.size - self._written_back,
                             os.POSIX_FADV_DONTNEED)
            self._written_back = self.size
        return n

    def flush(self) -> None:
        self.f.flush()


class HashingSource:
    """File-like source that hashes and counts what is read from ``f``."""

    def __init__(self, f: IO[bytes]):
        self.f = f
        self.h = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self.h.update(data)
        self.size += len(data)
        return data

    def readable(self) -> bool:
        return True


class ReadAhead(HashingSource):
    """A HashingSource whose reading and hashing run in a thread of their own, up to ``DEPTH``
    chunks ahead of the consumer: the sha256 of the stored bytes costs about as much CPU as their
    decompression, and the two then run side by side instead of one after the other (both
    release the GIL). Hands out exactly the bytes it hashed, in order; a read error of ``f`` is
    raised by the ``read`` that reaches it. The thread starts at the first ``read`` (an artifact
    opened only to see that it is there costs nothing); ``stop()`` ends it (it never closes ``f``)."""

    DEPTH = 4

    def __init__(self, f: IO[bytes]):
        super().__init__(f)
        self._q: queue.Queue = queue.Queue(self.DEPTH)
        self._stopped = threading.Event()
        self._buf, self._off, self._eof = b"", 0, False
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                data = self.f.read(CHUNK)
            except Exception as e:  # noqa: BLE001 - raised in the consumer's read
                self._put(e)
                return
            self.h.update(data)
            self.size += len(data)
            self._put(data)
            if not data:
                return

    def _put(self, item: bytes | Exception) -> None:
        while not self._stopped.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _next(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="snapagent-read-ahead", daemon=True)
            self._thread.start()
        item = self._q.get()
        if isinstance(item, Exception):
            self._eof = True
            raise item
        self._buf, self._off, self._eof = item, 0, not item

    def read(self, n: int = -1) -> bytes:
        """Return ``n`` bytes (all that is left when ``n`` < 0), fewer only at the end, like a
        buffered file."""
        if n < 0:
            n = sys.maxsize
        out = []
        while n > 0 and not (self._eof and self._off == len(self._buf)):
            if self._off == len(self._buf):
                self._next()
                continue
            if self._off == 0 and n >= len(self._buf):
                piece = self._buf  # a whole chunk: no copy
            else:
                piece = self._buf[self._off:self._off + n]
            self._off += len(piece)
            n -= len(piece)
            out.append(piece)
        return out[0] if len(out) == 1 else b"".join(out)

    def stop(self) -> None:
        """End the thread (it finishes the read it is in) and wait for it; a ``read`` waiting in
        another thread (age's decryption) then raises ValueError instead of waiting for ever."""
        self._stopped.set()
        if self._thread is not None:
            with contextlib.suppress(queue.Empty):  # a put waiting for room returns at once
                while True:
                    self._q.get_nowait()
            self._thread.join()
            with contextlib.suppress(queue.Full):
                self._q.put_nowait(ValueError("read of a stopped reader"))


class StreamReader(ArtifactReader):
    """Reads an artifact from ``raw``, the stream of its stored bytes: decompressed (and decrypted)
    by ``read``; ``finish()`` drains it and checks size and sha256 of the stored bytes — and of
    the age plaintext, when decrypting. ``stored``: hand out the bytes as stored (a copy's
    source), neither decrypted nor decompressed.

    An encrypted artifact without ``identities`` can only be checked (``finish``: the ciphertext
    against the manifest); ``read`` raises UsageError asking for ``--identity``. A wrong identity
    is a UsageError too, a damaged age file VerifyFailed."""

    def __init__(self, raw: IO[bytes], art: Artifact, identities: age.Identities | None = None, stored: bool = False):
        self.art = art
        self.identities = identities
        self.stored = stored
        self._wrap(raw)

    def _wrap(self, raw: IO[bytes]) -> None:
        """Read the stored bytes from ``raw``: hashed and counted, then decrypted (when there is an
        identity) and decompressed."""
        art, identities = self.art, self.identities
        self._raw = raw
        self._src = ReadAhead(self._raw)
        self._dec: age.Decrypting | None = None
        self._plain: HashingSource | None = None
        inner = self._src
        if self.stored:
            self._r = inner
            return
        if art.encryption == "age" and identities is not None:
            self._dec = age.Decrypting(self._src, identities)
            inner = self._plain = HashingSource(self._dec)
        if art.compression == "zstd":
            self._r = zstandard.ZstdDecompressor().stream_reader(inner, read_size=CHUNK, closefd=False)
        else:
            self._r = inner

    def read(self, n: int = -1) -> bytes:
        if self.art.encryption != "none" and self._dec is None and not self.stored:
            raise UsageError(f"artifact {self.art.name} is encrypted with {self.art.encryption}: give --identity FILE "
                             "(the identity of one of the target's recipients)")
        try:
            return self._r.read(n)
        except age.DecryptFailed as e:
            raise self._decrypt_error(e) from None
        except zstandard.ZstdError as e:
            raise VerifyFailed(f"artifact {self.art.name}: corrupt compressed data ({e})") from None
        except OSError as e:
            raise VerifyFailed(f"artifact {self.art.name}: read error ({e.strerror or e})") from None

    def _decrypt_error(self, e: age.DecryptFailed) -> Exception:
        if e.wrong_key:
            return UsageError(f"--identity {self.identities.path}: cannot decrypt artifact {self.art.name}: {e}")
        return VerifyFailed(f"artifact {self.art.name}: {e}")

    def readable(self) -> bool:
        return True

    def finish(self) -> None:
        """Read what is left of the stored file (through decryption, when decrypting) and raise
        VerifyFailed on a size or sha256 mismatch of the stored bytes or of the plaintext."""
        self._drain()
        self._check_all()

    def _drain(self) -> None:
        """Read what is left (through decryption, when decrypting); raise VerifyFailed/UsageError
        on a read or decryption failure."""
        try:
            if self._plain is not None:
                while self._plain.read(CHUNK):
                    pass
            while self._src.read(CHUNK):
                pass
        except age.DecryptFailed as e:
            try:  # a damaged file (the ciphertext's sha256) says more than the failure itself
                while self._src.read(CHUNK):
                    pass
            except OSError:
                pass
            else:
                self._check(self._src, self.art.size, self.art.sha256, "")
            raise self._decrypt_error(e) from None
        except OSError as e:
            raise VerifyFailed(f"artifact {self.art.name}: read error ({e.strerror or e})") from None

    def _check_all(self) -> None:
        """Raise VerifyFailed when what was read differs from the manifest (stored bytes, plaintext)."""
        self._check(self._src, self.art.size, self.art.sha256, "")
        if self._plain is not None:
            self._check(self._plain, self.art.plain_size, self.art.plain_sha256, " decrypted")

    def _check(self, src: HashingSource, size: int | None, sha256: str | None, what: str) -> None:
        name = self.art.name
        if src.size != size:
            raise VerifyFailed(f"artifact {name}{what}: size {src.size} != {size} in manifest")
        got = src.h.hexdigest()
        if got != sha256:
            raise VerifyFailed(f"artifact {name}{what}: sha256 mismatch (manifest {sha256[:16]}…, file {got[:16]}…)")

    def close(self) -> None:
        if self._dec is not None:
            self._dec.close()
        self._src.stop()
        self._raw.close()


def compressor(cfg: DirectoryConfig) -> zstandard.ZstdCompressor:
    """Return the zstd compressor of ``cfg`` (level, threads; frames with a checksum) with its
    memory bounded (``JOB_SIZE``), whatever the size of what it compresses."""
    params = zstandard.ZstdCompressionParameters.from_level(
        cfg.zstd_level, threads=cfg.zstd_threads, job_size=JOB_SIZE, overlap_log=9, write_checksum=1)
    return zstandard.ZstdCompressor(compression_params=params)


def store_plain(stream: IO[bytes], sink: HashingSink, cfg: DirectoryConfig) -> int:
    """Copy ``stream`` (compressed as configured) into ``sink``; return the bytes read."""
    raw_size = 0
    if cfg.compression == "zstd":
        out = compressor(cfg).stream_writer(sink, closefd=False)
    else:
        out = sink
    while chunk := read_chunk(stream):
        raw_size += len(chunk)
        out.write(chunk)
    if cfg.compression == "zstd":
        out.flush(zstandard.FLUSH_FRAME)
    return raw_size


class _ExportSource:
    """The export stream as a pull source: counts what is read; a read error is ExportFailed."""

    def __init__(self, stream: IO[bytes]):
        self.stream = stream
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.stream.read(n)
        except OSError as e:
            raise ExportFailed(f"reading the exported stream failed: {e.strerror or e}") from None
        self.size += len(data)
        return data

    def readable(self) -> bool:
        return True


def store_encrypted(stream: IO[bytes], sink: HashingSink, cfg: DirectoryConfig) -> tuple[int, HashingSource]:
    """Compress ``stream`` as configured, encrypt it to ``cfg.recipients`` into ``sink``, pulling
    (constant memory); return the bytes read and the hashed plaintext (the compressed stream)."""
    src = _ExportSource(stream)
    inner = src
    if cfg.compression == "zstd":
        inner = compressor(cfg).stream_reader(src, read_size=CHUNK)
    plain = HashingSource(inner)
    age.encrypt(plain, sink, cfg.recipients)
    return src.size, plain


class VerifyingReader(StreamReader):
    """A StreamReader of the artifact file at ``path`` (a regular file, never followed through a
    symlink); raises VerifyFailed when it cannot be opened."""

    def __init__(self, path: Path, art: Artifact, identities: age.Identities | None = None, stored: bool = False):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise OSError(0, "not a regular file")
        except OSError as e:
            raise VerifyFailed(f"artifact {art.name}: cannot be read ({e.strerror or e})") from None
        super().__init__(os.fdopen(fd, "rb"), art, identities, stored)


def read_chunk(stream: IO[bytes]) -> bytes:
    """Return the next chunk of an export stream; raise ExportFailed when reading it fails."""
    try:
        return stream.read(CHUNK)
    except OSError as e:
        raise ExportFailed(f"reading the exported stream failed: {e.strerror or e}") from None

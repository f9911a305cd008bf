"""age encryption of stored bytes, in process (pyrage: measured against the age CLI in
``bench/age_bench.py``, see ``docs/encryption.md``), streamed in constant memory.

Recipients (public keys, ``age1…``) are checked when the config is read; an identity (secret
key, ``AGE-SECRET-KEY-1…``) is read only from a file named by ``--identity``, which must be 0600,
and its content never appears in a message, a log line or a child's argv (no child is involved).
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import IO

from snapagent.errors import UsageError
from snapagent.util.secretfiles import secret_stat_problem

HEADER = b"age-encryption.org/v1\n"
RECIPIENT_RE = re.compile(r"^age1[02-9ac-hj-np-z]{58}$")
SECRET_PREFIX = "AGE-SECRET-KEY-"
MAX_IDENTITY_BYTES = 64 << 10

# pyrage is imported in the functions that use it: reading a config whose target does not encrypt,
# or listing backups, never needs it (start-up time, tests/unit/test_startup.py).


def check_recipient(value: str) -> str:
    """Given a config ``recipients`` entry, return it when it is an age X25519 public key; raise
    ValueError saying what is wrong (never echoing a secret key put there by mistake)."""
    import pyrage

    if value.strip().upper().startswith(SECRET_PREFIX):
        raise ValueError("this is an age identity (a secret key), not a recipient: put only public keys "
                         "(age1…, `age-keygen -y IDENTITY`) here and keep the identity off this host")
    shown = value if len(value) <= 80 else value[:80] + "…"
    if not RECIPIENT_RE.match(value):
        raise ValueError(f"{shown!r} is not an age recipient (age1 followed by 58 bech32 characters)")
    try:
        pyrage.x25519.Recipient.from_str(value)
    except pyrage.RecipientError as e:
        raise ValueError(f"{shown!r} is not a valid age recipient ({e})") from None
    return value


class Identities:
    """The age identities of one ``--identity`` file. Never printed: its repr names only the file."""

    def __init__(self, path: Path, keys: list):
        self.path = path
        self.keys = keys

    def __repr__(self) -> str:
        return f"Identities({str(self.path)!r}, {len(self.keys)} key(s))"


def load_identities(path: Path, arg: str = "--identity") -> Identities:
    """Read an age identity file (``age-keygen`` output: comments and ``AGE-SECRET-KEY-1…`` lines).
    Raise UsageError naming ``arg`` when it is missing, not a regular file, readable by anyone but
    its owner (it must be 0600 or stricter), owned by another user than root or the running one
    (``snapagent.util.secretfiles``), or holds no valid identity."""
    import pyrage

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise UsageError(f"{arg} {path}: cannot be read ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if (why := secret_stat_problem(path, st)) is not None:
            raise UsageError(f"{arg}: {why}")
        raw = f.read(MAX_IDENTITY_BYTES + 1)
    if len(raw) > MAX_IDENTITY_BYTES:
        raise UsageError(f"{arg} {path}: larger than any age identity file")
    keys = []
    for n, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            keys.append(pyrage.x25519.Identity.from_str(line))
        except pyrage.IdentityError:
            raise UsageError(f"{arg} {path}: line {n} is not an age identity (AGE-SECRET-KEY-1…)") from None
    if not keys:
        raise UsageError(f"{arg} {path}: holds no age identity (make one with `age-keygen -o FILE`)")
    return Identities(path, keys)


class _Guarded:
    """A file-like wrapper that remembers the first exception its ``read``/``write`` raised: pyrage
    turns them into its own errors, and the caller wants the original (typed) one back."""

    def __init__(self, f):
        self.f = f
        self.error: BaseException | None = None

    def read(self, n: int = -1) -> bytes:
        try:
            return self.f.read(n)
        except BaseException as e:
            self.error = self.error or e
            raise

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except BaseException as e:
            self.error = self.error or e
            raise

    def readable(self) -> bool:
        return True

    def flush(self) -> None:
        self.f.flush()


def encrypt(src, sink, recipients: list[str]) -> None:
    """Encrypt everything read from ``src`` to ``recipients``, writing the age file to ``sink``
    (8 KiB at a time: constant memory). An exception raised by ``src`` or ``sink`` is re-raised as
    it was; any other failure raises OSError."""
    import pyrage

    rsrc, rsink = _Guarded(src), _Guarded(sink)
    try:
        pyrage.encrypt_io(rsrc, rsink, [pyrage.x25519.Recipient.from_str(r) for r in recipients])
    except (pyrage.EncryptError, OSError) as e:
        if rsrc.error or rsink.error:
            raise (rsrc.error or rsink.error) from None
        raise OSError(0, f"age encryption failed ({e})") from None


class DecryptFailed(Exception):
    """The age file cannot be decrypted: ``wrong_key`` when no identity matches, else damaged
    (truncated, tampered, not an age file)."""

    def __init__(self, message: str, wrong_key: bool = False):
        super().__init__(message)
        self.wrong_key = wrong_key


class Decrypting:
    """A pull reader of the plaintext of the age file read from ``src``: a thread runs pyrage's
    decryption into a pipe. age writes plaintext before it can know the file is truncated or
    tampered, so a caller checks the stored bytes before acting on what it reads, and ``read``
    raises DecryptFailed at the end of the stream when decryption failed."""

    def __init__(self, src, identities: Identities):
        rfd, wfd = os.pipe()
        self._r = os.fdopen(rfd, "rb")
        self._w = os.fdopen(wfd, "wb", buffering=0)
        self._src = _Guarded(src)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(identities.keys,), daemon=True,
                                        name="age-decrypt")
        self._thread.start()

    def _run(self, keys) -> None:
        import pyrage

        try:
            pyrage.decrypt_io(self._src, _PipeSink(self._w), keys)
        except BaseException as e:  # handed to the reading thread
            self._error = self._src.error or e
        finally:
            self._w.close()

    def read(self, n: int = -1) -> bytes:
        data = self._r.read(n)
        if not data or (n is not None and n < 0):
            self._thread.join()
            self._raise()
        return data

    def _raise(self) -> None:
        import pyrage

        e = self._error
        if e is None:
            return
        if isinstance(e, pyrage.DecryptError) and "no matching keys" in str(e).lower():
            raise DecryptFailed("none of the given identities is one of its recipients", wrong_key=True)
        if isinstance(e, (pyrage.DecryptError, OSError)) and not isinstance(self._src.error, OSError):
            raise DecryptFailed(f"age decryption failed: truncated, tampered or not an age file ({e})")
        raise e

    def readable(self) -> bool:
        return True

    def close(self) -> None:
        """Stop early: closing the pipe makes the thread's next write fail, so it ends."""
        self._r.close()
        self._thread.join()


class _PipeSink:
    """Writes all of each chunk to the pipe (a blocking write releases the GIL for the reader)."""

    def __init__(self, w: IO[bytes]):
        self.w = w

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            view = view[self.w.write(view):]
        return len(data)

    def flush(self) -> None:
        pass

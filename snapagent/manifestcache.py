"""The cache of validated manifests: what ``list``, ``status`` and ``check`` need of a backup they
have validated before, keyed by the sha256 of the manifest's bytes.

A listing still reads every ``manifest.json`` (as ``find -exec cat`` would) and hashes its bytes;
only when that hash was validated by ``snapagent.manifest.loads`` before does it skip the parse,
the checksum and the model validation (~60 µs a manifest, most of a 10,000-backup listing). A
manifest changed or forged after it was cached has other bytes, so another hash: it is validated
(and reported damaged) as if there were no cache. The cache holds no definition of a valid
manifest, only results of the one in ``snapagent.manifest``; the full Manifest of a cached backup
is still validated from its bytes whenever code asks for it (``Stored.manifest``).

Where: ``<state_dir>/cache/manifests.json``, JSON (never pickle), written atomically, 0600, in a
0700 directory, both owned by the user running snapagent (root). It is used only when the state
dir exists; a file that is not a regular file, is owned by another user, has another mode, does
not parse or was written by another snapagent (version, or the code that validated it) is
ignored and rewritten; a directory that is a symlink or owned by another user is neither read
nor written. Its size is bounded: the entries the last listings saw, plus at most
``KEEP_UNSEEN`` older ones (backups since deleted, other jobs). Deleting it is always safe: the
next listing validates every manifest again. See docs/architecture.md ("The manifest cache").
"""

from __future__ import annotations

import json
import logging
import os
import stat
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from snapagent import __version__

if TYPE_CHECKING:
    from snapagent.manifest import Manifest

log = logging.getLogger("snapagent.cache")

FORMAT = 1
CACHE_DIR = "cache"
CACHE_FILE = "manifests.json"
#: A bigger file is not one this module wrote for any sane number of backups: not even parsed.
MAX_BYTES = 64 << 20
#: Entries kept beyond those the last listings saw (other jobs' backups, deleted ones).
KEEP_UNSEEN = 20_000
_PKG = Path(__file__).resolve().parent
#: The code whose results the cache holds: a change to any of them (an upgrade, an edit in a
#: checkout) makes every entry a stranger.
_CODE = (_PKG / "manifest.py", _PKG / "util" / "names.py", _PKG / "manifestcache.py")


class Summary:
    """What a listing shows of one validated manifest: ``id``, ``job``, ``created_iso`` and
    ``completed_iso`` (as the manifest writes times: ``manifest.iso``), ``created`` and
    ``completed`` (aware datetimes, parsed when first read), stored ``size`` (all artifacts),
    ``freeze_window_ms``, and ``order``: the listing's sort key of ``created``."""

    __slots__ = ("id", "job", "created_iso", "completed_iso", "order", "size", "freeze_window_ms",
                 "_created", "_completed")

    def __init__(self, id: str, job: str, created_iso: str, completed_iso: str, order: str, size: int,
                 freeze_window_ms: float):
        self.id, self.job, self.order = id, job, order
        self.created_iso, self.completed_iso = created_iso, completed_iso
        self.size, self.freeze_window_ms = size, freeze_window_ms
        self._created: datetime | None = None
        self._completed: datetime | None = None

    @classmethod
    def of(cls, m: "Manifest") -> "Summary":
        """Return the summary of the validated manifest ``m``."""
        from snapagent.manifest import iso

        s = cls(m.id, m.job, iso(m.created), iso(m.completed), order_key(m.created), m.size, m.freeze_window_ms)
        s._created, s._completed = m.created, m.completed
        return s

    @property
    def created(self) -> datetime:
        if self._created is None:
            self._created = datetime.fromisoformat(self.created_iso)
        return self._created

    @property
    def completed(self) -> datetime:
        if self._completed is None:
            self._completed = datetime.fromisoformat(self.completed_iso)
        return self._completed

    def to_json(self) -> list:
        return [self.id, self.job, self.created_iso, self.completed_iso, self.order, self.size,
                self.freeze_window_ms]

    @classmethod
    def from_json(cls, v: Any) -> "Summary":
        """Return the summary an entry of the cache file holds; raise ValueError when it is not
        one this module wrote (times are parsed when read: they were written by ``of``)."""
        if type(v) is not list or len(v) != 7:
            raise ValueError("not a summary")
        i, job, created, completed, order, size, fw = v
        if type(i) is not str or type(job) is not str or type(created) is not str or type(completed) is not str \
                or type(order) is not str or type(size) is not int or type(fw) not in (int, float):
            raise ValueError("not a summary")
        return cls(i, job, created, completed, order, size, float(fw))


def order_key(created: datetime) -> str:
    """Return the listing's sort key of a backup created at ``created``
    (``snapagent.plugin.target.listing_order``)."""
    return created.strftime("%Y%m%dT%H%M%S.%f")


def _code_key() -> str:
    parts = [__version__]
    for p in _CODE:
        try:
            st = os.stat(p)
            parts.append(f"{st.st_mtime_ns}:{st.st_size}")
        except OSError:
            parts.append("?")
    return " ".join(parts)


def _private(st: os.stat_result, mode: int) -> bool:
    return st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) == mode


class ManifestCache:
    """The cache in one state dir. ``get``/``put`` by the hex sha256 of a manifest's bytes;
    ``save`` writes it when something changed. Never raises for the cache's own reasons: a cache
    that cannot be read or written is as if there were none."""

    def __init__(self, state_dir: Path):
        self.dir = state_dir / CACHE_DIR
        self.path = self.dir / CACHE_FILE
        self._key = _code_key()
        self._old: dict[str, Any] | None = None  # what the file held (raw entries), loaded on first use
        self._seen: dict[str, Summary] = {}
        self._dirty = False
        self._off = False  # the directory cannot be used: neither read nor written

    def _open_dir(self) -> bool | None:
        """Return whether the cache directory may be used (None: not at all; False: yes, but what
        it holds is not trusted). It is created 0700 inside an existing state dir when absent;
        a mode of ours that is too open is repaired, and the file it holds is ignored."""
        try:
            st = os.lstat(self.dir)
        except FileNotFoundError:
            if not self.dir.parent.is_dir():
                return None  # no state dir yet: a read command does not create it
            try:
                os.mkdir(self.dir, 0o700)
            except OSError as e:
                log.debug("manifest cache: cannot create %s: %s", self.dir, e)
                return None
            return True
        except OSError as e:  # e.g. a state dir this user cannot enter
            log.debug("manifest cache: %s: %s", self.dir, e)
            return None
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            log.debug("manifest cache: %s is not a directory of this user: not used", self.dir)
            return None
        if stat.S_IMODE(st.st_mode) != 0o700:
            try:
                os.chmod(self.dir, 0o700)
            except OSError:
                return None
            return False
        return True

    def _load(self) -> dict[str, Any]:
        """Return the entries of the cache file (read once), {} when there is none or it is
        ignored (then marked to be rewritten)."""
        if self._old is not None:
            return self._old
        self._old = {}
        usable = self._open_dir()
        if usable is None:
            self._off = True
            return self._old
        if not usable:
            self._dirty = True
            return self._old
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return self._old
        except OSError as e:
            log.debug("manifest cache %s ignored (rewritten): %s", self.path, e)
            self._dirty = True
            return self._old
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or not _private(st, 0o600) or st.st_size > MAX_BYTES:
                raise ValueError("not a regular 0600 file of this user, or too big")
            with os.fdopen(fd, "rb", closefd=False) as f:
                data = json.loads(f.read(MAX_BYTES + 1))
            if not isinstance(data, dict) or data.get("format") != FORMAT or data.get("key") != self._key \
                    or not isinstance(data.get("entries"), dict):
                raise ValueError("written by another snapagent, or not a cache")
            self._old = data["entries"]
        except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            log.debug("manifest cache %s ignored (rewritten): %s", self.path, e)
            self._dirty = True
        finally:
            os.close(fd)
        return self._old

    def get(self, digest: str) -> Summary | None:
        """Return the summary of the manifest whose bytes have sha256 ``digest`` (hex), or None
        when those bytes were not validated before (or their entry is unreadable)."""
        if (s := self._seen.get(digest)) is not None:
            return s
        raw = self._load().get(digest)
        if raw is None:
            return None
        try:
            s = Summary.from_json(raw)
        except (ValueError, TypeError):
            self._dirty = True
            return None
        self._seen[digest] = s
        return s

    def put(self, digest: str, summary: Summary) -> None:
        """Record that the manifest whose bytes have sha256 ``digest`` validated, with ``summary``."""
        self._load()
        self._seen[digest] = summary
        self._dirty = True

    def save(self) -> None:
        """Write the cache when something changed: every entry seen by this process, and the
        newest ``KEEP_UNSEEN`` of the others. Atomic, 0600; a failure is only logged (debug)."""
        if not self._dirty or self._off:
            return
        from snapagent.util.fs import write_atomic

        unseen = [(k, v) for k, v in self._load().items() if k not in self._seen]
        entries = dict(unseen[max(0, len(unseen) - KEEP_UNSEEN):])
        entries.update((k, s.to_json()) for k, s in self._seen.items())
        body = json.dumps({"format": FORMAT, "key": self._key, "entries": entries}, separators=(",", ":"))
        try:
            write_atomic(self.path, body.encode())
        except OSError as e:
            log.debug("manifest cache %s not written: %s", self.path, e)
            return
        self._old = entries
        self._dirty = False


_CACHES: dict[Path, ManifestCache] = {}


def for_state_dir(state_dir: Path | None) -> ManifestCache | None:
    """Return the cache of ``state_dir`` (one per process and state dir), or None without one."""
    if state_dir is None:
        return None
    if state_dir not in _CACHES:
        _CACHES[state_dir] = ManifestCache(state_dir)
    return _CACHES[state_dir]

"""The local directory target (the embedded default).

Layout: ``<path>/<job>/<id>/`` holding the artifacts and ``manifest.json``. A backup is written in
``<path>/<job>/.partial-<id>/`` (journaled), each artifact to a temp name → fsync → rename, the
manifest last, then the directory is renamed into place and its parent fsynced: a backup exists iff
its manifest exists. Artifacts are zstd-compressed by default; size and sha256 of the stored bytes
are computed while streaming. Files are 0600, directories 0700.

With ``encryption = "age"`` the compressed stream is encrypted to ``recipients`` (public keys
only) on its way to disk (``NAME.zst.age``); the manifest records the sha256 of the ciphertext
(checked without a key) and of the plaintext (checked with ``--identity``). See
``docs/encryption.md``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Iterator, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from snapagent import manifest as manifestmod
from snapagent import manifestcache
from snapagent.config import Strict, absolute
from snapagent.errors import NotFound, PreflightFailed, TargetFailed, VerifyFailed
from snapagent.manifest import Artifact, Manifest, ManifestDamaged
from snapagent.plugin.target import Damaged, Stored, Target, Writer, listing_order
from snapagent.util import age
from snapagent.util.fs import fsync_dir, write_atomic
from snapagent.util.names import BACKUP_ID_RE, NAME_RE
from snapagent.util.runner import Runner

if TYPE_CHECKING:
    from snapagent.targets.streams import VerifyingReader

# streams (zstandard, pyrage) are imported where they are used: listing backups, the
# read commands' work, needs neither (start-up time, see tests/unit/test_startup.py).

PARTIAL = ".partial-"
DELETING = ".deleting-"


class DirectoryConfig(Strict):
    path: Path
    _absolute = field_validator("path")(absolute)
    compression: Literal["zstd", "none"] = "zstd"
    zstd_level: int = Field(default=3, ge=1, le=19)
    zstd_threads: int = Field(default=-1, ge=-1, le=64)  # -1: one per core
    encryption: Literal["none", "age"] = "none"
    recipients: list[Annotated[str, AfterValidator(age.check_recipient)]] = Field(default_factory=list)

    @model_validator(mode="after")
    def _recipients_iff_age(self) -> "DirectoryConfig":
        if self.encryption == "age" and not self.recipients:
            raise ValueError('encryption = "age" needs recipients = ["age1…"] (public keys; `age-keygen -y IDENTITY`)')
        if self.encryption == "none" and self.recipients:
            raise ValueError('recipients are used only with encryption = "age"')
        return self


class DirectoryWriter(Writer):
    def __init__(self, target: "DirectoryTarget", tmp: Path, final: Path, journal):
        self.t = target
        self.tmp = tmp
        self.final = final
        self.journal = journal

    def add_artifact(self, name: str, stream: IO[bytes]) -> Artifact:
        """Store ``stream`` as artifact ``name`` (compressed, encrypted when configured, hashed,
        fsynced); return its record. Raises TargetFailed when the target cannot take it (full,
        I/O error), ExportFailed when the stream cannot be read."""
        from snapagent.targets.streams import HashingSink, store_encrypted, store_plain

        cfg = self.t.cfg
        comp = cfg.compression
        fname = name + (".zst" if comp == "zstd" else "") + (".age" if cfg.encryption == "age" else "")
        part = self.tmp / f".{fname}.part"
        plain = None
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                sink = HashingSink(f, writeback=True)
                if cfg.encryption == "age":
                    raw_size, plain = store_encrypted(stream, sink, cfg)
                else:
                    raw_size = store_plain(stream, sink, cfg)
                f.flush()
                os.fsync(f.fileno())
            os.replace(part, self.tmp / fname)
        except OSError as e:
            raise TargetFailed(f"target {self.t.name!r} cannot store {fname} in {self.tmp.parent}: "
                               f"{e.strerror or e}; nothing was stored") from None
        crypt = {"encryption": "age", "plain_size": plain.size, "plain_sha256": plain.h.hexdigest()} if plain else {}
        return Artifact(name=fname, size=sink.size, sha256=sink.h.hexdigest(), compression=comp, raw_size=raw_size,
                        **crypt)

    def add_stored(self, art: Artifact, stream: IO[bytes]) -> Artifact:
        """Store the bytes of ``art`` exactly as they come (already compressed: never re-encoded),
        hashed and fsynced like ``add_artifact``; return the record of what was written."""
        from snapagent.targets.streams import HashingSink, read_chunk

        part = self.tmp / f".{art.name}.part"
        try:
            fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                sink = HashingSink(f, writeback=True)
                while chunk := read_chunk(stream):
                    sink.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            os.replace(part, self.tmp / art.name)
        except OSError as e:
            raise TargetFailed(f"target {self.t.name!r} cannot store {art.name} in {self.tmp.parent}: "
                               f"{e.strerror or e}; nothing was stored") from None
        return art.model_copy(update={"size": sink.size, "sha256": sink.h.hexdigest()})

    def commit(self, manifest: Manifest) -> None:
        """Write the manifest last and move the backup into place atomically. Raises TargetFailed."""
        try:
            write_atomic(self.tmp / "manifest.json", manifestmod.dumps(manifest))
            fsync_dir(self.tmp)
            os.rename(self.tmp, self.final)
            fsync_dir(self.final.parent)
        except OSError as e:
            raise TargetFailed(f"target {self.t.name!r} cannot commit {self.final.name}: {e.strerror or e}; "
                               "nothing was stored") from None
        self.journal.close("temp", str(self.tmp))


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB ({n} bytes)"


class DirectoryTarget(Target):
    type = "directory"
    Config = DirectoryConfig

    def describe(self) -> str:
        return f"directory {self.cfg.path}"

    def local_paths(self) -> list[Path]:
        return [self.cfg.path]

    def preflight(self, job: str) -> None:
        """Check the directory (or its nearest existing parent) is writable, and that it has room
        for a backup the size of this job's last one; raise PreflightFailed with the numbers."""
        p = self.cfg.path
        probe = p
        while not probe.exists():
            probe = probe.parent
        if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
            raise PreflightFailed(f"target {self.name!r}: {p} is not a writable directory")
        last = [b for b in self.list(job) if isinstance(b, Stored)][-1:]
        free = shutil.disk_usage(probe).free
        if last and free < last[0].manifest.size:
            need = last[0].manifest.size
            raise PreflightFailed(
                f"target {self.name!r}: {p} has {_mib(free)} free, but the last backup of job {job!r} "
                f"({last[0].id}) took {_mib(need)}; free space there (or remove old backups) first")

    def begin(self, job: str, backup_id: str, journal) -> DirectoryWriter:
        jobdir = self.cfg.path / job
        tmp = jobdir / f"{PARTIAL}{backup_id}"
        journal.open("temp", str(tmp), {"kind": "target", "name": self.type})
        try:
            jobdir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.cfg.path, 0o700)
            tmp.mkdir(mode=0o700)
        except OSError as e:
            raise TargetFailed(f"target {self.name!r} cannot create {tmp}: {e.strerror or e}") from None
        return DirectoryWriter(self, tmp, jobdir / backup_id, journal)

    def _dirs(self, job: str | None) -> Iterator[tuple[str, os.DirEntry]]:
        """Yield (job, directory entry) of every entry of a job directory but the hidden ones
        (``.partial-``, ``.deleting-``): the candidates ``_read`` decides about."""
        root = self.cfg.path
        if not root.is_dir():
            return
        jobdirs = [root / job] if job else sorted(d for d in root.iterdir() if not d.name.startswith("."))
        for jd in jobdirs:
            if jd.is_dir() and not jd.is_symlink():
                with os.scandir(jd) as entries:
                    for e in entries:
                        if not e.name.startswith("."):
                            yield jd.name, e

    def _read(self, job: str, d: os.DirEntry | Path) -> Stored | Damaged | None:
        """Return the backup in directory ``d`` of job directory ``job``, or why it is damaged;
        None when ``d`` holds no ``manifest.json`` (not a backup). Every name and the manifest
        itself are checked on each read (``manifest.loads``): nothing read back is trusted."""
        path = os.fspath(d)

        def damaged(reason: str) -> Damaged:
            return Damaged(d.name, job, self, path, reason)

        mpath = f"{path}/manifest.json"
        if not NAME_RE.match(job) or not BACKUP_ID_RE.match(d.name):
            return damaged("stored under a name snapagent never writes") if os.path.lexists(mpath) else None
        if d.is_symlink():
            return damaged("the backup directory is a symlink") if os.path.lexists(mpath) else None
        try:
            fd = os.open(mpath, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):  # no manifest (or a stray file): not a backup
            return None
        except OSError as e:
            return damaged(f"manifest.json cannot be read ({e.strerror})")
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return damaged("manifest.json is not a regular file")
            raw = _read_at_most(fd, st.st_size, manifestmod.MAX_BYTES + 1)
        except OSError as e:
            return damaged(f"manifest.json cannot be read ({e.strerror})")
        finally:
            os.close(fd)
        return self._validated(job, d.name, path, raw, damaged)

    def _validated(self, job: str, name: str, path: str, raw: bytes, damaged) -> Stored | Damaged:
        """Return the backup whose manifest bytes are ``raw``: from the manifest cache when these
        very bytes validated before (a lazy Stored), else validated now (and cached when good)."""
        cache = manifestcache.for_state_dir(self.state_dir)
        digest = hashlib.sha256(raw).hexdigest() if cache is not None else ""
        s = cache.get(digest) if cache is not None else None
        if s is not None and s.id == name and s.job == job:  # else: the checks below say why
            return Stored.lazy(s, self, path, lambda: manifestmod.loads(raw, expected_id=name))
        try:
            m = manifestmod.loads(raw, expected_id=name)
        except ManifestDamaged as e:
            return damaged(str(e))
        if m.job != job:
            return damaged(f"manifest says job {m.job!r} but it is stored under job {job!r}")
        if cache is not None:
            cache.put(digest, manifestcache.Summary.of(m))
        return Stored(m, self, path)

    def list(self, job: str | None = None) -> list[Stored | Damaged]:
        found = [b for j, d in self._dirs(job) if (b := self._read(j, d)) is not None]
        self._save_cache()
        return sorted(found, key=listing_order)

    def _save_cache(self) -> None:
        if (cache := manifestcache.for_state_dir(self.state_dir)) is not None:
            cache.save()

    def _find(self, backup_id: str) -> tuple[str, Path] | None:
        if not BACKUP_ID_RE.match(backup_id):
            return None
        root = self.cfg.path
        if not root.is_dir():
            return None
        for jd in root.iterdir():
            d = jd / backup_id
            if not jd.name.startswith(".") and jd.is_dir() and os.path.lexists(d / "manifest.json"):
                return jd.name, d
        return None

    def get(self, backup_id: str) -> Stored | Damaged | None:
        found = self._find(backup_id)
        if found is None:
            return None
        b = self._read(*found)
        self._save_cache()
        return b

    def open_artifact(self, backup_id: str, art: Artifact) -> VerifyingReader:
        return self._open(backup_id, art)

    def _open(self, backup_id: str, art: Artifact, stored: bool = False) -> VerifyingReader:
        from snapagent.targets.streams import VerifyingReader

        found = self._find(backup_id)
        if found is None:
            raise NotFound(f"no backup {backup_id!r} in target {self.name!r}")
        path = found[1] / art.name  # art.name is one safe component (validated by the manifest)
        if not os.path.lexists(path):
            raise VerifyFailed(f"artifact {art.name} of {backup_id} is missing")
        return VerifyingReader(path, art, self.identities, stored=stored)

    def open_stored(self, backup_id: str, art: Artifact) -> VerifyingReader:
        return self._open(backup_id, art, stored=True)

    def delete(self, backup_id: str) -> None:
        """Remove backup ``backup_id``: its directory is renamed to ``.deleting-<id>`` (the backup
        stops existing in one step), then its manifest goes, then the artifacts. Crash-safe: a
        leftover ``.deleting-`` directory is never listed and ``undo`` of a ``delete`` record
        finishes it. Raise NotFound, TargetFailed."""
        found = self._find(backup_id)
        if found is None:
            raise NotFound(f"no backup {backup_id!r} in target {self.name!r}")
        d = found[1]
        try:
            os.rename(d, d.with_name(f"{DELETING}{d.name}"))
            fsync_dir(d.parent)
        except OSError as e:
            raise TargetFailed(f"target {self.name!r} cannot remove {d}: {e.strerror or e}; the backup is intact") from None
        _finish_delete(d)

    @classmethod
    def undo(cls, record: dict, runner: Runner) -> str:
        """Undo a killed run's record: remove a partial backup (``temp``), or finish a ``delete``
        that prune began (the backup was renamed away: remove the rest; it was not: it is intact
        and stays for the next prune to decide)."""
        path = Path(record["key"])
        if record.get("kind") == "delete":
            gone = path.with_name(f"{DELETING}{path.name}")
            if not BACKUP_ID_RE.match(path.name) or not os.path.lexists(gone):
                return f"backup {path} was not being removed yet: left intact"
            if runner.dry_run:
                return f"would finish removing backup {path}"
            _finish_delete(path)
            return f"finished removing backup {path}"
        if not path.name.startswith(PARTIAL):
            raise ValueError(f"refusing to remove {path}: not a partial backup directory")
        if runner.dry_run:
            return f"would remove partial backup {path}"
        shutil.rmtree(path, ignore_errors=True)
        return f"removed partial backup {path}"


def _read_at_most(fd: int, size: int, limit: int) -> bytes:
    """Return the content of file ``fd`` (``size`` bytes by its fstat), at most ``limit`` bytes:
    read in the file's own size, not in a buffer of ``limit`` (a manifest is a few KiB; the limit
    is 16 MiB, and allocating it for each of 10,000 manifests is what `list` would spend). A
    regular file's read returns less than asked only at its end: one read call for a file that
    did not grow since its fstat."""
    chunks, got = [], 0
    while got < limit:
        want = min(limit - got, size - got + 1 if got < size else 1 << 16)
        chunk = os.read(fd, want)
        chunks.append(chunk)
        got += len(chunk)
        if len(chunk) < want:
            break
    return b"".join(chunks)


def _finish_delete(d: Path) -> None:
    """Remove what is left of backup directory ``d`` (already renamed to ``.deleting-<name>``):
    the manifest first, then the artifacts, then the directory. Idempotent. Raise TargetFailed."""
    gone = d.with_name(f"{DELETING}{d.name}")
    try:
        if not os.path.lexists(gone):
            return
        if gone.is_symlink() or not gone.is_dir():
            raise OSError(0, f"{gone} is not a directory")
        (gone / "manifest.json").unlink(missing_ok=True)
        fsync_dir(gone)
        shutil.rmtree(gone)
        fsync_dir(d.parent)
    except OSError as e:
        raise TargetFailed(f"cannot remove {gone}: {e.strerror or e}; `snapagent cleanup` retries") from None

"""The restic target: backups stored as snapshots in a restic repository (local path, REST, S3,
SFTP…), for offsite copies.

Layout: each artifact is one ``restic backup --stdin`` snapshot of path ``/<job>/<id>/<artifact>``
tagged ``snapagent``, ``job=<job>``, ``backup=<id>``; the manifest is the last snapshot
(``/<job>/<id>/manifest.json``, also tagged ``manifest``): a backup exists iff its manifest
snapshot exists. Artifacts are zstd-compressed by snapagent (restic 0.14 does not compress), so
a manifest's sizes and sha256 mean exactly what they mean in the directory target: the stored
bytes. What a run wrote is journaled (``temp``, keyed by repository and backup id): an export
that fails — restic 0.14 stores a truncated snapshot when its input ends early — or a killed run
leaves snapshots without a manifest, which the run's undo (or ``snapagent cleanup``) forgets by
tag.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import IO

import zstandard

from snapagent import manifest as manifestmod
from snapagent.errors import CommandFailed, CommandNotFound, NotFound, PreflightFailed, TargetFailed, VerifyFailed
from snapagent.manifest import Artifact, Manifest, ManifestDamaged
from snapagent.plugin.target import Damaged, Stored, Target, Writer, listing_order
from snapagent.targets.restic.config import ResticConfig
from snapagent.targets.restic.repo import TAG, Repo, explain, lock_path, public
from snapagent.targets.restic.stall import Stall
from snapagent.targets.streams import HashingSink, StreamReader, read_chunk
from snapagent.util.names import BACKUP_ID_RE, NAME_RE
from snapagent.util.runner import Runner, Stream

MANIFEST = "manifest.json"
OWNER = {"kind": "target", "name": "restic"}


def _path_of(snap: dict) -> tuple[str, str, str] | None:
    """Return (job, backup id, file name) of a snapagent snapshot's one path, or None."""
    paths = snap.get("paths") or []
    if len(paths) != 1 or not isinstance(paths[0], str):
        return None
    parts = paths[0].strip("/").split("/")
    return tuple(parts) if len(parts) == 3 else None  # type: ignore[return-value]


class ResticWriter(Writer):
    """Streams artifacts into the repository, one snapshot each; the manifest snapshot last."""

    def __init__(self, target: "ResticTarget", job: str, backup_id: str, journal, key: str):
        self.t = target
        self.job = job
        self.id = backup_id
        self.journal = journal
        self.key = key

    def _store(self, fname: str, stream: IO[bytes], tags: tuple[str, ...] = (), as_is: bool = False) -> tuple[int, str, int]:
        """Send ``stream`` (compressed as configured, or ``as_is``: the bytes as they come) as
        snapshot ``/<job>/<id>/<fname>``; return (stored size, sha256 of the stored bytes, bytes
        read). Raise TargetFailed, ExportFailed."""
        cfg, repo = self.t.cfg, self.t.repo
        argv = repo.argv("backup", "--stdin", "--stdin-filename", f"{self.job}/{self.id}/{fname}", "--host", cfg.host,
                         "--tag", TAG, "--tag", f"job={self.job}", "--tag", f"backup={self.id}", "--json")
        for t in tags:
            argv += ["--tag", t]
        with repo.locked():
            return self._send(repo, argv, fname, stream, as_is)

    def _send(self, repo: Repo, argv: list[str], fname: str, stream: IO[bytes], as_is: bool) -> tuple[int, str, int]:
        cfg = self.t.cfg
        out = tempfile.TemporaryFile()  # --json status lines: a file, so restic never blocks on them
        try:
            st = repo.runner.stream(argv, mutating=True, stdin=subprocess.PIPE, stdout=out, env=repo.env())
        except CommandNotFound:
            raise TargetFailed("restic is not installed (apt install restic)") from None
        raw_size = 0
        comp = cfg.compression if fname != MANIFEST and not as_is else "none"
        doing = f"storing {fname}"
        with Stall(st, cfg.stall_timeout) as stall:
            try:
                sink = HashingSink(st.stdin if st.proc is not None else open(os.devnull, "wb"))  # else: dry run
                w = zstandard.ZstdCompressor(level=cfg.zstd_level, write_checksum=True).stream_writer(
                    sink, closefd=False) if comp == "zstd" else sink
                while chunk := read_chunk(stream):
                    raw_size += len(chunk)
                    w.write(chunk)
                    stall.tick()
                if comp == "zstd":
                    w.flush(zstandard.FLUSH_FRAME)
                stall.tick()
            except BrokenPipeError:
                self._wait(st, doing, stall)
                raise TargetFailed(f"restic stopped reading while {doing}; nothing was stored") from None
            except BaseException:
                st.kill()  # killed before its input ended: restic stores nothing
                raise
            self._wait(st, doing, stall)
        out.seek(0)
        summary = [ln for ln in out.read().decode(errors="replace").splitlines() if '"summary"' in ln]
        snap = json.loads(summary[-1]).get("snapshot_id") if summary else None
        if st.proc is not None and not snap:
            raise TargetFailed(f"restic repository {public(cfg.repository)}: no snapshot made of {fname}")
        return sink.size, sink.h.hexdigest(), raw_size

    def _wait(self, st: Stream, doing: str, stall: Stall) -> None:
        try:
            st.wait()
        except CommandFailed as e:
            why = explain(self.t.cfg, e.stderr or "", doing)
            if stall.fired:
                why = f"restic made no progress for {stall.seconds:g}s (stall_timeout) and was stopped: {why}"
            raise TargetFailed(why + "; nothing was stored") from None

    def add_artifact(self, name: str, stream: IO[bytes]) -> Artifact:
        comp = self.t.cfg.compression
        fname = name + (".zst" if comp == "zstd" else "")
        size, sha, raw = self._store(fname, stream)
        return Artifact(name=fname, size=size, sha256=sha, compression=comp, raw_size=raw)

    def add_stored(self, art: Artifact, stream: IO[bytes]) -> Artifact:
        """Store a copy's artifact exactly as another target stored it (compressed, encrypted: never
        re-encoded); the caller compares the returned size and sha256 with ``art``."""
        size, sha, _ = self._store(art.name, stream, as_is=True)
        return art.model_copy(update={"size": size, "sha256": sha})

    def commit(self, manifest: Manifest) -> None:
        """Store the manifest as the backup's last snapshot (tag ``manifest``); raise TargetFailed."""
        self._store(MANIFEST, io.BytesIO(manifestmod.dumps(manifest)), ("manifest",))
        self.journal.close("temp", self.key)


class ResticReader(StreamReader):
    """An artifact's bytes streamed from ``restic dump`` (no temporary copy), checked at ``finish()``."""

    def __init__(self, st: Stream, art: Artifact, cfg: ResticConfig, stored: bool = False, identities=None):
        self.st = st
        self.cfg = cfg
        super().__init__(st.stdout, art, identities, stored)  # identities: a copy of an age-encrypted backup

    def finish(self) -> None:
        """Read the rest, then check restic's exit status (its reason beats a short read), size, sha256."""
        self._drain()
        try:
            self.st.wait()
        except CommandFailed as e:
            raise VerifyFailed(f"artifact {self.art.name}: {explain(self.cfg, e.stderr or '', 'reading it')}") from None
        self._check_all()

    def close(self) -> None:
        self.st.kill()  # first: the read-ahead thread then reads to EOF and ends
        self._src.stop()


class ResticTarget(Target):
    type = "restic"
    Config = ResticConfig

    def __init__(self, name: str, cfg: ResticConfig, runner: Runner | None = None):
        super().__init__(name, cfg)
        self._runner = runner or Runner()

    @property
    def repo(self) -> Repo:
        lock = lock_path(self.state_dir, self.cfg.repository) if self.state_dir else None
        return Repo(self.cfg, self._runner, lock)

    def describe(self) -> str:
        return f"restic repository {public(self.cfg.repository)}"

    def preflight(self, job: str) -> None:
        """Open the repository (``restic cat config``); raise PreflightFailed saying why it cannot."""
        try:
            self.repo.run(["cat", "config"], "opening the repository", mutating=False)
        except TargetFailed as e:
            raise PreflightFailed(f"target {self.name!r}: {e}") from None

    def _key(self, job: str, backup_id: str) -> str:
        return f"{public(self.cfg.repository)}#{job}/{backup_id}"

    def begin(self, job: str, backup_id: str, journal) -> ResticWriter:
        key = self._key(job, backup_id)
        cfg = self.cfg
        lock = self.repo.lock
        journal.open("temp", key, OWNER, repository=cfg.repository, password_file=str(cfg.password_file),
                     lock=str(lock) if lock else None, stall_timeout=cfg.stall_timeout,
                     environment_file=str(cfg.environment_file) if cfg.environment_file else None,
                     backup=backup_id, job=job)
        return ResticWriter(self, job, backup_id, journal, key)

    def _dump(self, snap_id: str, path: str, limit: int) -> bytes:
        """Return at most ``limit`` bytes of file ``path`` of snapshot ``snap_id``; raise TargetFailed."""
        st = self.repo.runner.stream(self.repo.argv("dump", snap_id, path), mutating=False, env=self.repo.env())
        try:
            data = st.stdout.read(limit)
        except BaseException:
            st.kill()
            raise
        if len(data) >= limit:
            st.kill()  # not a manifest of ours: loads() says so
            return data
        try:
            st.wait()
        except CommandFailed as e:
            raise TargetFailed(explain(self.cfg, e.stderr or "", f"reading {path}")) from None
        return data

    def _read(self, snap: dict) -> Stored | Damaged | None:
        where = _path_of(snap)
        if where is None:
            return None
        job, bid, fname = where
        loc = self._key(job, bid)

        def damaged(reason: str) -> Damaged:
            return Damaged(bid, job, self, loc, reason)

        if not NAME_RE.match(job) or not BACKUP_ID_RE.match(bid) or fname != MANIFEST:
            return damaged("stored under a name snapagent never writes")
        try:
            raw = self._dump(snap["id"], f"/{job}/{bid}/{MANIFEST}", manifestmod.MAX_BYTES + 1)
            m = manifestmod.loads(raw, expected_id=bid)
        except TargetFailed as e:
            return damaged(f"manifest.json cannot be read ({e})")
        except ManifestDamaged as e:
            return damaged(str(e))
        if m.job != job:
            return damaged(f"manifest says job {m.job!r} but it is stored under job {job!r}")
        return Stored(m, self, loc)

    def _unique(self, snaps: list[dict]):
        seen = set()
        for s in snaps:
            where = _path_of(s)
            if where and where[:2] not in seen:
                seen.add(where[:2])
                yield s

    def list(self, job: str | None = None) -> list[Stored | Damaged]:
        tags = ("manifest",) + ((f"job={job}",) if job else ())
        found = (self._read(s) for s in self._unique(self.repo.snapshots(*tags)))
        return sorted((b for b in found if b is not None), key=listing_order)

    def get(self, backup_id: str) -> Stored | Damaged | None:
        if not BACKUP_ID_RE.match(backup_id):
            return None
        for s in self.repo.snapshots("manifest", f"backup={backup_id}"):
            if (b := self._read(s)) is not None:
                return b
        return None

    def open_artifact(self, backup_id: str, art: Artifact) -> ResticReader:
        return self._open(backup_id, art, stored=False)

    def open_stored(self, backup_id: str, art: Artifact) -> ResticReader:
        return self._open(backup_id, art, stored=True)

    def _open(self, backup_id: str, art: Artifact, stored: bool) -> ResticReader:
        if not BACKUP_ID_RE.match(backup_id):
            raise NotFound(f"no backup {backup_id!r} in target {self.name!r}")
        for s in self.repo.snapshots(f"backup={backup_id}"):
            where = _path_of(s)
            if where and where[1] == backup_id and where[2] == art.name:
                st = self.repo.runner.stream(self.repo.argv("dump", s["id"], f"/{where[0]}/{backup_id}/{art.name}"),
                                             mutating=False, env=self.repo.env())
                return ResticReader(st, art, self.cfg, stored=stored, identities=self.identities)
        raise VerifyFailed(f"artifact {art.name} of {backup_id} is missing")

    def check_repository(self) -> str:
        """Run restic's own ``check --read-data-subset``; return its verdict. Raise VerifyFailed."""
        try:
            self.repo.run(["check", f"--read-data-subset={self.cfg.check_subset}"], "checking the repository",
                          mutating=False, timeout=None)
        except TargetFailed as e:
            raise VerifyFailed(f"restic check: {e}") from None
        return f"restic check --read-data-subset={self.cfg.check_subset}: no errors"

    def delete(self, backup_id: str) -> None:
        """Forget the backup's manifest snapshot (it stops existing), then its artifacts' snapshots,
        then ``restic prune`` when ``prune = true``. Raise NotFound, TargetFailed."""
        snaps = self.repo.snapshots(f"backup={backup_id}")
        manifests = [s["id"] for s in snaps if "manifest" in (s.get("tags") or [])]
        if not manifests:
            raise NotFound(f"no backup {backup_id!r} in target {self.name!r}")
        self.repo.forget(manifests, f"removing backup {backup_id}")
        self.repo.forget([s["id"] for s in snaps if s["id"] not in manifests], f"removing backup {backup_id}")
        if self.cfg.prune:
            self.repo.run(["prune"], "pruning", mutating=True, timeout=None)

    @classmethod
    def undo(cls, record: dict, runner: Runner) -> str:
        """Undo a killed or failed run's ``temp`` record: clear restic's stale locks (``restic
        unlock`` removes only locks of dead processes of this host, or older than 30 min), then
        forget the snapshots of a backup that has no manifest. A ``delete`` record (prune
        journals it without the repository's credentials) is reported, not acted on."""
        if record.get("kind") == "delete":
            return (f"backup {record.get('key')}: removal may have been cut short; its leftover snapshots "
                    "(tag backup=ID) are forgotten by `restic forget` or the next prune of that repository")
        bid = str(record.get("backup", ""))
        if not BACKUP_ID_RE.match(bid):
            raise ValueError(f"refusing to undo {record.get('key')!r}: no backup id in the record")
        cfg = ResticConfig.model_construct(
            repository=record["repository"], password_file=Path(record["password_file"]),
            environment_file=Path(record["environment_file"]) if record.get("environment_file") else None,
            stall_timeout=float(record.get("stall_timeout") or 300))
        repo = Repo(cfg, runner, Path(record["lock"]) if record.get("lock") else None)
        if runner.dry_run:
            return f"would forget the snapshots of unfinished backup {record['key']}"
        repo.run(["unlock"], "removing stale locks", mutating=True)
        snaps = repo.snapshots(f"backup={bid}")
        if any("manifest" in (s.get("tags") or []) for s in snaps):
            return f"backup {record['key']} was committed: left intact"
        repo.forget([s["id"] for s in snaps], f"removing unfinished backup {bid}")
        return f"forgot {len(snaps)} snapshot(s) of unfinished backup {record['key']}"

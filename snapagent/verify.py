"""Checking stored artifacts against their manifest: size and sha256 of every stored file, and for
tar artifacts (with ``scan``) every member, before anything is restored."""

from __future__ import annotations

import time
from dataclasses import dataclass

from snapagent.errors import RestoreRefused, VerifyFailed
from snapagent.manifest import Manifest
from snapagent.plugin.target import Stored
from snapagent.util import progress, tar
from snapagent.util.runner import Runner
from snapagent.util.tar import ScanReport


@dataclass
class ArtifactCheck:
    """The outcome for one artifact: ``refused`` when its content is unsafe to restore (not merely
    corrupt); ``scan`` holds the checked member list of a scanned tar."""

    name: str
    ok: bool
    size: int
    message: str = "ok"
    seconds: float = 0.0
    refused: bool = False
    scan: ScanReport | None = None
    link: str | None = None  # the chain link (an earlier backup) this artifact belongs to

    def as_dict(self) -> dict:
        out = {"name": self.name, "ok": self.ok, "size": self.size, "message": self.message}
        if self.link:
            out["backup"] = self.link
        if self.ok:
            out["seconds"] = self.seconds
        if self.refused:
            out["refused"] = True
        return out


def tar_artifacts(m: Manifest) -> dict[str, str]:
    """Return {artifact name: format} of every artifact a restore reads: volumes and extras."""
    out = {v.artifact: v.format for v in m.volumes}
    out.update({e.artifact: e.format for q in m.quiescers for e in q.artifacts})
    return out


def check(stored: Stored, names: list[str] | None = None, scan: bool = False,
          allow_special: bool = False, runner: Runner | None = None) -> list[ArtifactCheck]:
    """Recompute size and sha256 of the artifacts ``names`` of ``stored`` (default: all of them,
    volumes first, then the quiescers' extras), checking tar members too when ``scan`` (as GNU
    tar, run by ``runner``, reads them). Never raises VerifyFailed itself."""
    m = stored.manifest
    formats = tar_artifacts(m)
    if names is None:
        names = list(formats) + [a.name for a in m.artifacts if a.name not in formats]
    results = []
    for name in names:
        art = m.artifact(name)
        t = time.monotonic()
        try:
            report = refusal = None
            with stored.target.open_artifact(m.id, art) as r:
                if scan and formats.get(name) == "tar":
                    try:
                        with progress.reading(r, f"check {name}", art.raw_size) as counted:
                            report = tar.scan(counted, allow_special, runner)
                    except RestoreRefused as e:
                        refusal = RestoreRefused(f"artifact {name}: {e}")
                r.finish()  # a damaged file explains a refusal better than the refusal itself
            if refusal is not None:
                raise refusal
            results.append(ArtifactCheck(name, True, art.size, seconds=round(time.monotonic() - t, 3), scan=report))
        except (VerifyFailed, RestoreRefused) as e:
            results.append(ArtifactCheck(name, False, art.size, str(e), refused=isinstance(e, RestoreRefused)))
    return results


def repository_check(stored: Stored) -> list[ArtifactCheck]:
    """Return the target's own check of its storage (restic's ``check --read-data-subset``) as
    one result, or none when the target has no such check (a directory). Never raises VerifyFailed."""
    own = getattr(stored.target, "check_repository", None)
    if own is None:
        return []
    t = time.monotonic()
    try:
        msg = own()
    except VerifyFailed as e:
        return [ArtifactCheck("(repository)", False, 0, str(e))]
    return [ArtifactCheck("(repository)", True, 0, msg, seconds=round(time.monotonic() - t, 3))]

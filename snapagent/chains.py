"""Incremental chains: which base the next backup exports from, and checking a stored chain.

A job with ``mode = "incremental"`` exports each volume incrementally from the snapshot the newest
good backup kept (``volumes[].kept``), so its backups form chains: a full export, then
incrementals, each naming its ``parent``. ``choose_base`` decides, before the export, whether the
next backup continues the chain or starts a new one with a full: ``full_every = N`` after N
incrementals, ``full_every = "7d"`` when the chain's full is that old, and a full with a warning
whenever the chain cannot be continued safely (the newest backup damaged, a link missing, an
artifact of a link gone). ``check_links`` verifies every link a restore of a backup reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from snapagent import catalog
from snapagent.config import Config, Job
from snapagent.errors import OperationFailed, VerifyFailed
from snapagent.manifest import Volume
from snapagent.plugin.target import Damaged, Stored
from snapagent.util.durations import format_duration
from snapagent.util.runner import Runner

if TYPE_CHECKING:
    from snapagent.verify import ArtifactCheck

Chains = dict[str, list[tuple[Stored, Volume]]]


@dataclass(frozen=True)
class BaseChoice:
    """The decision for one backup: ``prev`` is the backup whose kept snapshots are the bases
    (None: export in full). ``why_full`` says why a full is taken; ``warning`` is True when that
    is a fallback the operator should hear about (the chain could not be continued)."""

    prev: Stored | None
    why_full: str | None = None
    warning: bool = False


def choose_base(config: Config, job: Job, backups: list[Stored | Damaged], now: datetime) -> BaseChoice:
    """Given the job's backups in its target (oldest first, as ``Target.list`` returns them),
    return where the next incremental backup starts from. Reads only; never raises for a broken
    chain (that is a full with a warning)."""
    if not backups:
        return BaseChoice(None, "the job has no backup yet")
    newest = backups[-1]
    if isinstance(newest, Damaged):
        return BaseChoice(None, f"the newest backup {newest.id} is damaged ({newest.reason})", True)
    m = newest.manifest
    lengths, fulls = [], []
    for volume in job.cfg.volumes:
        rec = m.volume(volume)
        if rec is None or not rec.kept:
            return BaseChoice(None, f"the newest backup {newest.id} kept no base of {volume!r}"
                                    + (" (it was taken in mode \"full\")" if rec is not None else ""))
        try:
            links = catalog.chain(config, newest, rec)
            for link, item in links:
                with link.target.open_artifact(link.id, link.manifest.artifact(item.artifact)):
                    pass  # present and a regular file; its bytes are checked by verify/restore
        except OperationFailed as e:
            return BaseChoice(None, f"the chain of {newest.id} is broken: {e}", True)
        lengths.append(len(links) - 1)
        fulls.append(links[0][0])
    every = job.cfg.full_every
    incrementals = max(lengths)
    if isinstance(every, int) and incrementals >= every:
        return BaseChoice(None, f"full_every = {every}: the chain of {newest.id} holds {incrementals} incremental(s)")
    if isinstance(every, float):
        full = min(fulls, key=lambda s: s.manifest.created)
        age = (now - full.manifest.created).total_seconds()
        if age >= every:
            return BaseChoice(None, f"full_every = {_age(every)}: the chain's full backup {full.id} is {_age(age)} old")
    return BaseChoice(newest)


def _age(seconds: float) -> str:
    """Return ``seconds`` as an operator reads an age: ``7d``, ``36h``, ``1.5d``, ``45s``."""
    for unit, n in (("d", 86400), ("h", 3600)):
        if seconds >= n:
            return f"{round(seconds / n, 1):g}{unit}"
    return format_duration(seconds)


def check_links(config: Config, stored: Stored, scan: bool = False, allow_special: bool = False,
                runner: Runner | None = None) -> tuple[Chains, list[ArtifactCheck]]:
    """Return the chain of every volume of ``stored`` and the checks of the artifacts of its
    earlier links (``verify.check`` of ``stored`` itself is the caller's), each named
    ``LINK/ARTIFACT`` with a message naming the backup that needs it. Raise NotFound /
    BackupDamaged / VerifyFailed when a link is missing, damaged or loops."""
    from snapagent import verify  # a backup (choose_base) never verifies (start-up time)

    chains: Chains = {}
    results: list[ArtifactCheck] = []
    done: set[tuple[str, str]] = set()
    for vol in stored.manifest.volumes:
        chains[vol.volume] = links = catalog.chain(config, stored, vol)
        for i, (link, item) in enumerate(links[:-1]):
            if (link.id, item.artifact) in done:
                continue
            done.add((link.id, item.artifact))
            child = links[i + 1][0].id
            for r in verify.check(link, [item.artifact], scan=scan, allow_special=allow_special, runner=runner):
                r.link = link.id
                if not r.ok:
                    r.message = f"backup {child} is incremental on {link.id}, whose {r.message}"
                results.append(r)
    return chains, results


def raise_if_broken(stored: Stored, results: list[ArtifactCheck]) -> None:
    """Raise VerifyFailed naming every failed link check in one line (results of check_links)."""
    bad = [r for r in results if not r.ok]
    if bad:
        raise VerifyFailed(f"the chain of {stored.id} is damaged: " + "; ".join(r.message for r in bad))

"""Single-path restore: which paths of which volume ``restore --path REL`` asks for.

A REL names a file or directory relative to the volume root; with several volumes it starts with
the volume's label, exactly as the path appears under DEST (``DEST/<label>/…``), so one backup
of volumes ``data`` and ``logs`` takes ``--path data/app.db --path logs/2024``. Only tar exports
hold members one can pick (a send stream is all or nothing).

``select`` checks the syntax (exit 2, before anything is read); ``resolve`` checks that each path
is a member of the archive as GNU tar listed it during the restore check (exit 1); the same GNU
tar then extracts exactly those members (``snapagent.util.tar.extract(only=…)``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from snapagent.errors import NotFound, UsageError
from snapagent.manifest import Manifest
from snapagent.util.tar import ScanReport


def normalise(rel: str) -> str:
    """Return ``rel`` as a normalised relative path (``./a//b/`` → ``a/b``). Raise UsageError
    naming it when it is empty, absolute, holds ``..`` or a NUL byte, or names the root."""
    if rel.startswith("/"):
        raise UsageError(f"--path {rel!r}: must be relative to the volume root, not absolute")
    if "\0" in rel:
        raise UsageError(f"--path {rel!r}: holds a NUL byte")
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UsageError(f"--path {rel!r}: '..' is not allowed")
    if not parts:
        raise UsageError(f"--path {rel!r}: names the whole volume; restore without --path for that")
    return "/".join(parts)


def select(m: Manifest, rels: Sequence[str]) -> dict[str, list[str]]:
    """Given the manifest and the ``--path`` arguments, return {volume label: [normalised paths
    relative to that volume's root]}. Raise UsageError naming the argument: bad syntax, an
    unknown label, or a volume that is not a tar export."""
    labels = {v.label: v for v in m.volumes}
    out: dict[str, list[str]] = {}
    for rel in rels:
        norm = normalise(rel)
        if len(m.volumes) == 1:
            vol, inner = m.volumes[0], norm
        else:
            label, _, inner = norm.partition("/")
            vol = labels.get(label)
            if vol is None:
                raise UsageError(f"--path {rel!r}: backup {m.id} has {len(m.volumes)} volumes; a path starts "
                                 f"with its volume's label ({', '.join(sorted(labels))})")
            if not inner:
                raise UsageError(f"--path {rel!r}: names a whole volume; name paths inside it")
        if vol.format != "tar":
            raise UsageError(f"--path {rel!r}: backup {m.id} exported {vol.volume} as {vol.format!r}; "
                             "--path restores only from tar exports (restore the whole backup instead)")
        out.setdefault(vol.label, []).append(inner)
    return out


def resolve(m: Manifest, selection: Mapping[str, list[str]], scans: Mapping[str, ScanReport]) -> None:
    """Check every selected path is a member of its volume's archive (``scans``: label → the
    checked listing). Raise NotFound naming the first that is not."""
    for label, paths in selection.items():
        names = scans[label].names
        for p in paths:
            if p not in names:
                shown = p if len(m.volumes) == 1 else f"{label}/{p}"
                raise NotFound(f"--path {shown!r} is not in backup {m.id}")

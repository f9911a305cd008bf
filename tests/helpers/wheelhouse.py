"""A wheelhouse made from what the test venv already has installed, so that an install test runs
``pip install --no-index --find-links`` in seconds and offline instead of downloading from PyPI.

``repack(requirements, out, exclude)`` writes one wheel per distribution needed by ``requirements`` (their
dependencies followed, extras and markers evaluated for this interpreter), built from the installed
files listed in each distribution's RECORD, tagged as its WHEEL file says; returns ``out``.
Raises ``importlib.metadata.PackageNotFoundError`` for a distribution the venv lacks.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def closure(requirements: list[str]) -> list[metadata.Distribution]:
    """The installed distributions ``requirements`` need, each once, dependencies followed."""
    todo = [Requirement(r) for r in requirements]
    seen: dict[str, metadata.Distribution] = {}
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        dist = seen.get(name) or metadata.distribution(req.name)
        seen[name] = dist
        for text in dist.requires or []:
            dep = Requirement(text)
            envs = [{"extra": e} for e in req.extras] or [{"extra": ""}]
            if dep.marker is None or any(dep.marker.evaluate(e) for e in envs):
                if canonicalize_name(dep.name) not in seen:
                    todo.append(dep)
    return list(seen.values())


def _tag(dist: metadata.Distribution) -> str:
    tags = [line.split(":", 1)[1].strip() for line in (dist.read_text("WHEEL") or "").splitlines()
            if line.startswith("Tag:")]
    parts = [sorted({t.split("-")[i] for t in tags}) for i in range(3)]
    return "-".join(".".join(p) for p in parts)


def _wheel(dist: metadata.Distribution, out: Path) -> Path:
    info = next(f for f in dist.files if f.name == "METADATA").parent
    path = out / f"{str(info).removesuffix('.dist-info')}-{_tag(dist)}.whl"
    rows = io.StringIO()
    record = csv.writer(rows, lineterminator="\n")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for f in dist.files:
            if f.parts[0] == ".." or "__pycache__" in f.parts or f.name == "RECORD" or f.name == "INSTALLER":
                continue  # scripts (regenerated from entry_points.txt), bytecode, pip's own records
            data = Path(dist.locate_file(f)).read_bytes()
            z.writestr(str(f), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.writerow([str(f), f"sha256={digest}", len(data)])
        record.writerow([f"{info}/RECORD", "", ""])
        z.writestr(f"{info}/RECORD", rows.getvalue())
    return path


def repack(requirements: list[str], out: Path, exclude: tuple[str, ...] = ()) -> Path:
    """Write the wheels of ``requirements``' closure, but for the ``exclude``d names (e.g. the project
    itself, installed editable), into ``out``; return ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for dist in closure(requirements):
        if canonicalize_name(dist.metadata["Name"]) not in exclude:
            _wheel(dist, out)
    return out

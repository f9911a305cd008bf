"""tar export and safe tar restore, shared by every driver that exports a directory tree.

Export: GNU tar in POSIX format with xattrs, ACLs, sparse files and numeric owners, never crossing
into other filesystems. Restore: the archive is first scanned (``scan``) — absolute names, ``..``,
paths through a symlink of the archive, links pointing outside, and device/FIFO members (unless
allowed) are refused, setuid/setgid bits are noted — then GNU tar extracts into an empty directory
and the noted bits are cleared unless special files were allowed.
"""

from __future__ import annotations

import os
import posixpath
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from snapagent.errors import RestoreRefused
from snapagent.util.runner import Runner

CHUNK = 1 << 20


def create_argv(src: Path, excludes: list[str] = ()) -> list[str]:
    """Return the tar argv that streams directory ``src`` to stdout (members named ``./…``)."""
    argv = [
        "tar", "--create", "--file=-", "--format=posix", "--directory", str(src),
        "--xattrs", "--xattrs-include=*", "--acls", "--sparse", "--numeric-owner",
        "--one-file-system", "--no-wildcards",
    ]
    argv += [f"--exclude=./{e}" for e in excludes]
    return argv + ["."]


def extract_argv(dest: Path) -> list[str]:
    """Return the tar argv that extracts stdin into ``dest`` preserving owners, modes, xattrs, ACLs."""
    return [
        "tar", "--extract", "--file=-", "--directory", str(dest), "--numeric-owner", "--same-owner",
        "--preserve-permissions", "--xattrs", "--xattrs-include=*", "--acls",
    ]


@dataclass
class ScanReport:
    members: int = 0
    bytes: int = 0
    setid: list[str] = field(default_factory=list)
    special: list[str] = field(default_factory=list)


def _norm(name: str) -> str:
    n = posixpath.normpath(name)
    return "" if n == "." else n


def scan(stream: IO[bytes], allow_special: bool = False) -> ScanReport:
    """Read a whole tar stream and return what it holds; raise RestoreRefused on an unsafe member."""
    rep = ScanReport()
    symlinks: set[str] = set()
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tf:
            for m in tf:
                rep.members += 1
                rep.bytes += m.size
                name = _norm(m.name)
                if m.name.startswith("/") or name == ".." or name.startswith("../"):
                    raise RestoreRefused(f"archive member {m.name!r} would be written outside the destination")
                parts = name.split("/")
                for i in range(1, len(parts)):
                    if "/".join(parts[:i]) in symlinks:
                        raise RestoreRefused(f"archive member {m.name!r} lies below a symlink of the archive")
                if m.issym():
                    symlinks.add(name)
                    target = _norm(posixpath.join(posixpath.dirname(name), m.linkname))
                    if m.linkname.startswith("/") or target == ".." or target.startswith("../"):
                        pass  # a symlink's target is never followed by the restore itself
                if m.islnk():
                    tgt = _norm(m.linkname)
                    if m.linkname.startswith("/") or tgt == ".." or tgt.startswith("../"):
                        raise RestoreRefused(f"hard link {m.name!r} points outside the destination ({m.linkname!r})")
                if m.ischr() or m.isblk() or m.isfifo():
                    rep.special.append(m.name)
                if m.isfile() and m.mode & (stat.S_ISUID | stat.S_ISGID):
                    rep.setid.append(name)
    except tarfile.TarError as e:
        raise RestoreRefused(f"not a valid tar archive: {e}") from None
    if rep.special and not allow_special:
        shown = ", ".join(repr(s) for s in rep.special[:5])
        raise RestoreRefused(f"archive holds {len(rep.special)} device/FIFO member(s) ({shown}); pass --allow-special to restore them")
    return rep


def extract(runner: Runner, stream: IO[bytes], dest: Path, report: ScanReport, allow_special: bool = False) -> None:
    """Extract tar ``stream`` into existing directory ``dest``; clear setuid/setgid bits noted in
    ``report`` unless ``allow_special``. Raises CommandFailed when tar fails."""
    import subprocess

    proc = runner.stream(extract_argv(dest), mutating=True, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        proc.feed(stream, CHUNK)
        proc.wait()
    finally:
        proc.kill()
    if not allow_special:
        for rel in report.setid:
            p = dest / rel
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                os.chmod(p, stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))

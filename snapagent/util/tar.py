"""tar export and checked tar restore, shared by every driver that exports a directory tree.

Export: GNU tar in POSIX format with xattrs, ACLs, sparse files and numeric owners, never crossing
into other filesystems.

Restore has one parser, one truth: the archive is checked as **GNU tar itself reads it**
(``tar --list --verbose``, names C-quoted) and then extracted by the same GNU tar, so no member can
look one way to the check and another to the extractor (GNU long-name headers followed by pax
``path``, ``GNU.sparse.name`` …: whatever tar will write is what was checked). Before anything is
written, every member is checked (``check``):

- names: not absolute, no ``..`` component, not below a symlink of the archive (nor below a hard
  link to one), no second member replacing a symlink;
- hard links: to an earlier member, never through a symlink; a hard link to a symlink is a
  symlink for everything that follows;
- types: files, directories, symlinks, hard links; devices and FIFOs only with ``allow_special``;
  anything else (volume headers, unknown types) is refused;
- modes: setuid/setgid regular files are noted and their bits cleared after extraction, and
  ``security.capability`` xattrs are not restored, unless ``allow_special``.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Iterable, Sequence

from snapagent.errors import CommandFailed, RestoreRefused
from snapagent.util.fs import widen_pipe
from snapagent.util.runner import Runner

CHUNK = 1 << 20
#: mode, uid/gid, size or major,minor, date, time, then the C-quoted name and what follows it
_LINE = re.compile(r'^(\S)(\S{9}) +(\d+)/(\d+) +(\d+|\d+, *\d+) +(\S+) +(\S+) +(".*)$')
_REGULAR, _DIR, _SYMLINK, _HARDLINK = "-C", "d", "l", "h"
_SPECIAL = "cbp"
_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, '"': 34, "?": 63, "'": 39}


def create_argv(src: Path, excludes: Iterable[str] = ()) -> list[str]:
    """Return the tar argv that streams directory ``src`` to stdout (members named ``./…``)."""
    argv = [
        "tar", "--create", "--file=-", "--format=posix", "--directory", str(src),
        "--xattrs", "--xattrs-include=*", "--acls", "--sparse", "--numeric-owner",
        "--one-file-system", "--no-wildcards",
    ]
    argv += [f"--exclude=./{e}" for e in excludes]
    return argv + ["."]


def list_argv() -> list[str]:
    """Return the tar argv that lists stdin's members as GNU tar reads them (names C-quoted)."""
    return ["tar", "--list", "--verbose", "--file=-", "--numeric-owner", "--full-time", "--quoting-style=c"]


def extract_argv(dest: Path, allow_special: bool = False, members: Sequence[str] | None = None) -> list[str]:
    """Return the tar argv that extracts stdin into ``dest`` preserving owners, modes, xattrs,
    ACLs (file capabilities only with ``allow_special``); only ``members`` (names exactly as GNU
    tar listed them, directories with what is below them) when given."""
    argv = ["tar", "--extract", "--file=-", "--directory", str(dest), "--numeric-owner", "--same-owner",
            "--preserve-permissions", "--xattrs", "--xattrs-include=*", "--acls"]
    if not allow_special:
        argv.append("--xattrs-exclude=security.capability")
    if members is not None:
        argv += ["--no-wildcards", "--", *members]
    return argv


@dataclass
class Member:
    """One member as GNU tar reads it: type letter, permission bits, name and link target."""

    type: str
    mode: str
    name: str
    link: str | None = None
    size: int = 0


@dataclass
class ScanReport:
    """What a checked archive holds: counts, setuid/setgid files (normalised names) and special
    members (as named in the archive)."""

    members: int = 0
    bytes: int = 0
    setid: list[str] = field(default_factory=list)
    special: list[str] = field(default_factory=list)
    #: normalised name → the name as GNU tar listed it (what an extraction of one member names)
    names: dict[str, str] = field(default_factory=dict)
    #: hard links: normalised name → normalised name of the member it links to
    links: dict[str, str] = field(default_factory=dict)


def unquote(text: str) -> tuple[str, str]:
    """Given text starting with a C-quoted string (GNU tar ``--quoting-style=c``), return (the
    string, the rest). Non-UTF-8 bytes come back as surrogate escapes, like ``os`` file names.
    Raises ValueError on a malformed quote."""
    if not text.startswith('"'):
        raise ValueError("no opening quote")
    out, i = bytearray(), 1
    while i < len(text):
        c = text[i]
        if c == '"':
            return out.decode("utf-8", "surrogateescape"), text[i + 1:]
        if c != "\\":
            out += c.encode("utf-8", "surrogateescape")
            i += 1
            continue
        i += 1
        if i >= len(text):
            break
        e = text[i]
        if e in "01234567":
            digits = re.match(r"[0-7]{1,3}", text[i:]).group(0)
            out.append(int(digits, 8) & 0xFF)
            i += len(digits)
        elif e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 1
        else:
            raise ValueError(f"unknown escape \\{e}")
    raise ValueError("no closing quote")


def parse_listing(lines: Iterable[str]) -> list[Member]:
    """Given the lines of ``tar --list --verbose --quoting-style=c`` (``list_argv``), return the
    members. Raise RestoreRefused on a line that is not a member as expected."""
    out = []
    for line in lines:
        line = line.rstrip("\n")
        m = _LINE.match(line)
        if not m:
            raise RestoreRefused(f"archive member listed as {line[:200]!r}, which snapagent does not know")
        typ, mode, _uid, _gid, size, _date, _time, rest = m.groups()
        try:
            name, rest = unquote(rest)
            link = None
            if rest.startswith(" -> ") and typ == "l":
                link, rest = unquote(rest[4:])
            elif rest.startswith(" link to ") and typ == "h":
                link, rest = unquote(rest[9:])
        except ValueError as e:
            raise RestoreRefused(f"archive member listed as {line[:200]!r}: {e}") from None
        if rest:
            raise RestoreRefused(f"archive member {name!r} is listed with {rest.strip()!r}; refusing it")
        out.append(Member(typ, mode, name, link, int(size) if size.isdigit() else 0))
    return out


def _normal(name: str) -> str | None:
    """Return the normalised relative path of a member name, or None when it would leave DEST."""
    if name.startswith("/") or not name:
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        return None
    return "/".join(parts)


def check(members: Iterable[Member], allow_special: bool = False) -> ScanReport:
    """Check every member (the rules in the module docstring); return the ScanReport. Raise
    RestoreRefused naming the first member that is unsafe."""
    rep = ScanReport()
    symlinks: set[str] = set()
    seen: set[str] = set()
    for m in members:
        rep.members += 1
        rep.bytes += m.size
        name = _normal(m.name)
        if name is None:
            raise RestoreRefused(f"archive member {m.name!r} would be written outside the destination")
        below = _below_symlink(name, symlinks)
        if below:
            raise RestoreRefused(f"archive member {m.name!r} lies below a symlink of the archive ({below!r})")
        if name in symlinks:
            raise RestoreRefused(f"archive member {m.name!r} would replace a symlink of the archive")
        if m.type in _SYMLINK:
            symlinks.add(name)
        elif m.type in _HARDLINK:
            target = _normal(m.link or "")
            if target is None:
                raise RestoreRefused(f"hard link {m.name!r} points outside the destination ({m.link!r})")
            if _below_symlink(target, symlinks):
                raise RestoreRefused(f"hard link {m.name!r} points through a symlink of the archive ({m.link!r})")
            if target not in seen:
                raise RestoreRefused(f"hard link {m.name!r} points at {m.link!r}, which is not an earlier member")
            if target in symlinks:
                symlinks.add(name)  # a hard link to a symlink is that symlink
            rep.links[name] = target
        elif m.type in _SPECIAL:
            rep.special.append(m.name)
        elif m.type not in _REGULAR + _DIR:
            raise RestoreRefused(f"archive member {m.name!r} is of a type snapagent does not restore ({m.type!r})")
        if m.type in _REGULAR + _HARDLINK and (m.mode[2] in "sS" or m.mode[5] in "sS"):
            rep.setid.append(name)
        seen.add(name)
        if name:
            rep.names[name] = m.name
    if rep.special and not allow_special:
        shown = ", ".join(repr(s) for s in rep.special[:5])
        raise RestoreRefused(f"archive holds {len(rep.special)} device/FIFO member(s) ({shown}); "
                             "pass --allow-special to restore them")
    return rep


def _with_link_targets(only: Sequence[str], report: ScanReport) -> list[str]:
    """Return ``only`` plus the targets of the hard links it selects that it does not select."""
    sel = list(only)

    def covered(name: str) -> bool:
        return any(name == p or name.startswith(p + "/") for p in sel)

    for name, target in report.links.items():
        if covered(name) and not covered(target):
            sel.append(target)
    return sel


def _below_symlink(name: str, symlinks: set[str]) -> str | None:
    parts = name.split("/")
    for i in range(1, len(parts)):
        prefix = "/".join(parts[:i])
        if prefix in symlinks:
            return prefix
    return None


def scan(stream: IO[bytes], allow_special: bool = False, runner: Runner | None = None) -> ScanReport:
    """Read a whole tar stream as GNU tar reads it and check every member; return the report.
    Raise RestoreRefused on an unsafe member or when tar cannot read the stream."""
    runner = runner or Runner()
    with tempfile.TemporaryFile() as listing:
        proc = runner.stream(list_argv(), mutating=False, stdin=subprocess.PIPE, stdout=listing)
        try:
            widen_pipe(proc.stdin)
            proc.feed(stream, CHUNK)
            proc.wait()
        except CommandFailed as e:
            tail = "; ".join(e.stderr.strip().splitlines()[-3:]) or f"exit {e.returncode}"
            raise RestoreRefused(f"not a valid tar archive: {tail}") from None
        finally:
            proc.kill()
        listing.seek(0)
        lines = listing.read().decode("utf-8", "surrogateescape").splitlines()
    return check(parse_listing(lines), allow_special)


def extract(runner: Runner, stream: IO[bytes], dest: Path, report: ScanReport | None,
            allow_special: bool = False, only: Sequence[str] | None = None) -> None:
    """Extract the checked tar ``stream`` (``report`` is its ``scan``) into existing directory
    ``dest`` with GNU tar — only the normalised paths ``only`` (keys of ``report.names``) and
    what is below them when given, plus the member each selected hard link links to (GNU tar
    cannot make the link otherwise); clear the setuid/setgid bits noted in ``report`` unless
    ``allow_special``. Raises RestoreRefused without a report or for a path ``report`` does not
    hold, CommandFailed when tar fails."""
    if report is None:
        raise RestoreRefused("refusing to extract an archive that was not checked first")
    members = None
    if only is not None:
        missing = [p for p in only if p not in report.names]
        if missing:
            raise RestoreRefused(f"{missing[0]!r} is not in the archive")
        only = _with_link_targets(only, report)
        members = [report.names[p] for p in only]
    proc = runner.stream(extract_argv(dest, allow_special, members), mutating=True, stdin=subprocess.PIPE,
                         stdout=subprocess.DEVNULL)
    try:
        if proc.proc is not None:  # not a dry run
            widen_pipe(proc.stdin)
        proc.feed(stream, CHUNK)
        proc.wait()
    finally:
        proc.kill()
    if not allow_special:
        for rel in report.setid:
            if only is not None and not any(rel == p or rel.startswith(p + "/") for p in only):
                continue  # not extracted
            p = dest / rel
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                os.chmod(p, stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))


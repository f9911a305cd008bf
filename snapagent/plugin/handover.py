"""What a quiescer's ``prepare_restore`` uses to hand a restored database over (``Handover``): the
owner the database runs as, its files made theirs, a way through DEST for that user, a free port,
a private run directory for the socket and the log.

Everything here works on the restored tree only (below DEST); directories above DEST are never
changed — ``blocked_dirs`` names the ones the user cannot pass, for a hint.
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
import socket
import stat
import struct
from pathlib import Path
from typing import Any

from snapagent.plugin.quiescer import RestoreContext

#: Unix socket paths are limited to 108 bytes (107 and the NUL); a run directory whose socket
#: path would not fit is made in the temp dir instead.
SOCKET_PATH_MAX = 107


def record_owner(path: Path) -> dict[str, Any] | None:
    """Backup side: return {uid, gid, user, group} of ``path`` (names None when unknown here), or
    None when it cannot be read (the restore then uses the restored data's owner)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return {"uid": st.st_uid, "gid": st.st_gid, "user": _name(pwd.getpwuid, st.st_uid),
            "group": _name(grp.getgrgid, st.st_gid)}


def _name(lookup, ident: int) -> str | None:
    try:
        return lookup(ident)[0]
    except KeyError:
        return None


def resolve_owner(recorded: dict[str, Any] | None, restored: Path, default: str) -> tuple[str, int, int]:
    """Return (user, uid, gid) the restored database runs as: the recorded owner of the live data
    by name when that user exists here (a restore on another host), else by number; for a backup
    that recorded none, the restored data's owner unless it is root, else user ``default``.
    Raises KeyError when none of them exists here."""
    if recorded:
        try:
            pw = pwd.getpwnam(recorded["user"]) if recorded.get("user") else pwd.getpwuid(int(recorded["uid"]))
            return pw.pw_name, pw.pw_uid, pw.pw_gid
        except KeyError:
            if recorded.get("uid") is not None and recorded.get("user") is None:
                return str(recorded["uid"]), int(recorded["uid"]), int(recorded.get("gid", recorded["uid"]))
    st = os.stat(restored)
    if st.st_uid != 0:
        return _name(pwd.getpwuid, st.st_uid) or str(st.st_uid), st.st_uid, st.st_gid
    pw = pwd.getpwnam(default)
    return pw.pw_name, pw.pw_uid, pw.pw_gid


def claim(root: Path, uid: int, gid: int) -> int:
    """Give ``root`` and everything below it (never following symlinks) to uid:gid; return how
    many entries changed owner."""
    changed = 0
    paths = [root]
    for dirpath, dirnames, filenames in os.walk(root):
        paths += [Path(dirpath) / n for n in dirnames + filenames]
    for p in paths:
        st = os.lstat(p)
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.lchown(p, uid, gid)
            changed += 1
    return changed


def free_port(start: int, avoid: tuple[int, ...] = (), host: str = "127.0.0.1", tries: int = 500) -> int:
    """Return the first TCP port from ``start`` upward that is not in ``avoid`` and can be bound on
    ``host`` right now (nothing guarantees it stays free: the start command fails loudly if not).
    Raise OSError when none of ``tries`` ports is free."""
    for port in range(start, start + tries):
        if port in avoid:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free TCP port on {host} in {start}-{start + tries - 1}")


def run_dir(ctx: RestoreContext, name: str, uid: int, gid: int, longest: str, unsafe: str = "") -> Path:
    """Create the private run directory of a restored database (0700, owned by uid:gid, taken
    through ``ctx.held``): ``DEST/.snapagent-<name>``, or a temp dir when the socket path
    ``<dir>/<longest>`` would be too long for a unix socket, DEST's path holds one of the
    characters ``unsafe`` (e.g. PostgreSQL's list separator), or there is no DEST."""
    d = ctx.dest / f".snapagent-{name}" if ctx.dest is not None else None
    if d is None or len(os.fsencode(d / longest)) > SOCKET_PATH_MAX or any(c in str(d) for c in unsafe):
        d = ctx.held.tempdir(f"snapagent-run-{name}-")
    else:
        ctx.held.directory(d)
    os.chown(d, uid, gid)
    os.chmod(d, 0o700)
    return d


# -- who can traverse what (POSIX ACLs included) -------------------------------------------------
_ACL_USER_OBJ, _ACL_USER, _ACL_GROUP_OBJ, _ACL_GROUP, _ACL_MASK, _ACL_OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


def _acl(path: Path) -> list[tuple[int, int, int]] | None:
    """Return the access ACL of ``path`` as (tag, perm, id) entries, or None when it has none."""
    try:
        raw = os.getxattr(path, "system.posix_acl_access")
    except OSError:
        return None
    if len(raw) < 4 or struct.unpack_from("<I", raw)[0] != 2:
        return None
    return [struct.unpack_from("<HHI", raw, off) for off in range(4, len(raw) - 7, 8)]


def can_traverse(path: Path, uid: int, gids: list[int]) -> bool:
    """Return whether user ``uid`` (groups ``gids``) may search directory ``path``: the mode bits
    and, when there is one, the POSIX ACL (named entries, limited by the mask)."""
    if uid == 0:
        return True
    st = os.stat(path)
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    acl = _acl(path)
    if acl is None:
        if st.st_gid in gids:
            return bool(st.st_mode & stat.S_IXGRP)
        return bool(st.st_mode & stat.S_IXOTH)
    mask = next((perm for tag, perm, _ in acl if tag == _ACL_MASK), 7)
    for tag, perm, ident in acl:
        if tag == _ACL_USER and ident == uid:
            return bool(perm & mask & 1)
    groups = [perm for tag, perm, ident in acl
              if (tag == _ACL_GROUP_OBJ and st.st_gid in gids) or (tag == _ACL_GROUP and ident in gids)]
    if groups:
        return any(perm & mask & 1 for perm in groups)
    return bool(st.st_mode & stat.S_IXOTH)


def blocked_dirs(paths: list[Path], uid: int, gid: int, below: Path | None = None) -> list[Path]:
    """Return the ancestors of ``paths`` (only those at or under ``below``, when given) that user
    ``uid`` cannot traverse, top-down, each once."""
    try:
        gids = os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
    except KeyError:
        gids = [gid]
    out: list[Path] = []
    for p in paths:
        for a in reversed(p.parents):
            if below is not None and a != below and below not in a.parents:
                continue
            if a not in out and not can_traverse(a, uid, gids):
                out.append(a)
    return out


def reach(ctx: RestoreContext, paths: list[Path], uid: int, gid: int) -> list[str]:
    """Let user ``uid`` reach ``paths`` through DEST (an ACL entry on each directory below DEST
    it cannot traverse, taken through ``ctx.held``); return hint lines for the directories above
    DEST it cannot traverse (never changed here)."""
    if ctx.dest is not None:
        ctx.held.grant_traverse(blocked_dirs(paths, uid, gid, below=ctx.dest), uid)
    above = [d for d in blocked_dirs(paths, uid, gid) if ctx.dest is None or not d.is_relative_to(ctx.dest)]
    if not above:
        return []
    user = _name(pwd.getpwuid, uid) or str(uid)
    return [f"user {user} cannot enter {above[0]} (above DEST): restore below a directory it can enter, "
            f"or let it pass: {shlex.join(['setfacl', '-m', f'u:{user}:x', '--', *map(str, above)])}"]

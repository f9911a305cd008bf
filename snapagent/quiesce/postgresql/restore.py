"""Make a restored PostgreSQL data directory start as it is (``prepare``), safely.

What a by-hand restore on this machine type had to do, done for the user:

* remove ``postmaster.pid`` / ``postmaster.opts`` (the PostgreSQL docs list both as files to omit);
* repoint the ``pg_wal`` symlink and every ``pg_tblspc/<oid>`` symlink into the restore — left as
  they are they point at the *live* cluster's WAL and tablespaces;
* backup-api mode: write ``backup_label`` and ``tablespace_map`` (its paths repointed too, since
  PostgreSQL recreates the symlinks from it), empty ``pg_wal``, point ``restore_command`` at the
  WAL restored from the backup, create ``recovery.signal``;
* both modes: ``archive_mode = off`` for the copy, so it never writes into the live WAL archive;
* let the data directory's owner traverse the restored directories (a POSIX ACL entry).
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import stat
from pathlib import Path, PurePath
from typing import Any, Callable

from snapagent.errors import OperationFailed
from snapagent.util.runner import Runner

MARK = "# added by snapagent restore"


def restore_root(record: dict[str, Any], locate: Callable[[str], Path]) -> Path:
    """Return the restore destination DEST, derived from where PGDATA was restored."""
    live = record["data_directory"]
    relpath = record["locations"][live]["relpath"]
    return locate(live).parents[len(PurePath(relpath).parts)]


def conf_quote(value: str) -> str:
    """Quote ``value`` as a postgresql.conf string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def restore_command(wal_dir: Path) -> str:
    """Return a restore_command that copies segment %f from ``wal_dir`` (any characters) to %p."""
    return "cp -- " + shlex.quote(str(wal_dir) + "/").replace("%", "%%") + '%f "%p"'


def _escape_map_path(p: str) -> str:
    return "".join("\\" + c if c in "\\\n\r" else c for c in p)


def rewrite_tablespace_map(spcmap: str, new_paths: dict[str, str]) -> str:
    """Return ``spcmap`` (lines ``<oid> <path>``) with each path replaced by ``new_paths[oid]``.

    Raises OperationFailed for a tablespace that has no new path.
    """
    out = []
    for line in spcmap.splitlines():
        if not line:
            continue
        oid = line.split(" ", 1)[0]
        if oid not in new_paths:
            raise OperationFailed(f"tablespace_map names tablespace {oid}, which the backup did not record")
        out.append(f"{oid} {_escape_map_path(new_paths[oid])}\n")
    return "".join(out)


def _owned_write(path: Path, data: str, owner: os.stat_result, append: bool = False) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chown(path, owner.st_uid, owner.st_gid, follow_symlinks=False)


def _relink(link: Path, new: Path) -> str:
    """Replace symlink ``link`` by one to ``new``; return the old target. Raise when ``link`` is no symlink."""
    if not link.is_symlink():
        raise OperationFailed(f"{link} should be a symlink (it was one in the live cluster) but is not")
    old = os.readlink(link)
    tmp = link.with_name(f".{link.name}.snapagent-tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(new, tmp)
    os.lchown(tmp, *(lambda s: (s.st_uid, s.st_gid))(os.lstat(link)))
    os.replace(tmp, link)
    return old


def relink(pgdata: Path, record: dict[str, Any], locate: Callable[[str], Path]) -> dict[str, dict[str, str]]:
    """Point pg_wal and pg_tblspc/* of the restored ``pgdata`` at their restored copies; return
    {link: {from, to}}. Raises OperationFailed for a symlink into the live cluster it cannot map."""
    done = {}
    if record.get("pg_wal"):
        new = locate(record["pg_wal"])
        done["pg_wal"] = {"from": _relink(pgdata / "pg_wal", new), "to": str(new)}
    elif (pgdata / "pg_wal").is_symlink():
        raise OperationFailed(f"{pgdata / 'pg_wal'} is a symlink the backup did not record; refusing to follow it")
    tbl = pgdata / "pg_tblspc"
    for oid, loc in record.get("tablespaces", {}).items():
        if not str(oid).isdigit():
            raise OperationFailed(f"the backup records a tablespace oid {oid!r}, which is not a number")
        new = locate(loc)
        done[f"pg_tblspc/{oid}"] = {"from": _relink(tbl / oid, new), "to": str(new)}
    if tbl.is_dir():
        for entry in tbl.iterdir():
            if entry.is_symlink() and f"pg_tblspc/{entry.name}" not in done:
                raise OperationFailed(f"{entry} points at {os.readlink(entry)}, a tablespace the backup did not "
                                      "record; refusing to leave a link into the live cluster")
    return done


def empty_dir(d: Path, owner: os.stat_result) -> int:
    """Remove everything in directory ``d`` (never following symlinks); recreate an empty
    ``archive_status``. Return the number of entries removed."""
    n = 0
    for entry in os.scandir(d):
        p = Path(entry.path)
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(p)
        else:
            p.unlink()
        n += 1
    (d / "archive_status").mkdir(mode=0o700)
    os.chown(d / "archive_status", owner.st_uid, owner.st_gid)
    return n


def _can_traverse(st: os.stat_result, uid: int, gids: list[int]) -> bool:
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid in gids:
        return bool(st.st_mode & stat.S_IXGRP)
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
            if a not in out and not _can_traverse(os.stat(a), uid, gids):
                out.append(a)
    return out


def grant_traverse(runner: Runner, dirs: list[Path], uid: int) -> None:
    """Add a POSIX ACL entry letting ``uid`` traverse each of ``dirs``; raise CommandFailed."""
    for d in dirs:
        runner.run(["setfacl", "-m", f"u:{uid}:x", "--", str(d)], mutating=True, timeout=30)


def prepare(record: dict[str, Any], locate: Callable[[str], Path], runner: Runner) -> dict[str, Any]:
    """Make the restored cluster described by manifest ``record`` startable; return notes for the user.

    Raises OperationFailed when the restored tree is not what the record describes.
    """
    pgdata = locate(record["data_directory"])
    if pgdata.is_symlink() or not (pgdata / "PG_VERSION").is_file():
        raise OperationFailed(f"restored PostgreSQL data directory {pgdata} is missing or not a data directory")
    owner = os.stat(pgdata)
    for name in ("postmaster.pid", "postmaster.opts"):
        (pgdata / name).unlink(missing_ok=True)
    links = relink(pgdata, record, locate)
    wal_dir = locate(record["pg_wal"]) if record.get("pg_wal") else pgdata / "pg_wal"
    settings = {"archive_mode": "off"}
    notes: dict[str, Any] = {"pgdata": str(pgdata), "mode": record.get("mode"), "relinked": links}
    if record.get("mode") == "backup-api":
        archived = next((a for a in record.get("artifacts", []) if a["name"] == "wal"), None)
        if archived is None or "restored" not in archived:
            raise OperationFailed("the backup holds no archived WAL; it cannot be recovered")
        _owned_write(pgdata / "backup_label", record["labelfile"], owner)
        spcmap = record.get("spcmapfile") or ""
        if spcmap:
            new = {oid: str(locate(loc)) for oid, loc in record.get("tablespaces", {}).items()}
            _owned_write(pgdata / "tablespace_map", rewrite_tablespace_map(spcmap, new), owner)
        notes["pg_wal_entries_removed"] = empty_dir(wal_dir, owner)
        os.chown(archived["restored"], owner.st_uid, owner.st_gid)  # restore_command runs as the owner
        settings["restore_command"] = restore_command(Path(archived["restored"]))
        _owned_write(pgdata / "recovery.signal", "", owner)
        notes["wal_archive"] = archived["restored"]
    auto = pgdata / "postgresql.auto.conf"
    text = f"\n{MARK}\n" + "".join(f"{k} = {conf_quote(v)}\n" for k, v in settings.items())
    _owned_write(auto, text, owner, append=True)
    dest = restore_root(record, locate)
    targets = [pgdata, wal_dir] + [locate(loc) for loc in record.get("tablespaces", {}).values()]
    grant_traverse(runner, blocked_dirs(targets, owner.st_uid, owner.st_gid, below=dest), owner.st_uid)
    notes["instructions"] = instructions(record, pgdata, owner.st_uid, dest)
    return notes


def instructions(record: dict[str, Any], pgdata: Path, uid: int, dest: Path) -> list[str]:
    """Return the lines telling the user where the cluster is and how to start it."""
    try:
        user = pwd.getpwuid(uid).pw_name
    except KeyError:
        user = str(uid)
    major = int(record.get("server_version_num", 150000)) // 10000
    bindir = record.get("bindir") or f"/usr/lib/postgresql/{major}/bin"
    q = shlex.quote
    lines = [f"PostgreSQL data directory: {pgdata} ({record.get('mode')} backup, owner {user})"]
    if not (pgdata / "postgresql.conf").exists():
        lines.append(f"it has no postgresql.conf (the server used {record.get('config_file')}); copy that file and "
                     "pg_hba.conf/pg_ident.conf into it first")
    blocked = blocked_dirs([pgdata], uid, os.stat(pgdata).st_gid)
    if blocked:
        lines.append(f"user {user} cannot enter {blocked[0]}; grant it: setfacl -m u:{user}:x {q(str(blocked[0]))}")
    if any(ch in str(pgdata) for ch in '$`"\\\n'):
        # pg_ctl hands -D to /bin/sh inside double quotes: start the postmaster directly instead
        lines.append(f"start it (on another port if the original runs here): runuser -u {user} -- "
                     f"{q(bindir + '/postgres')} -D {q(str(pgdata))} -p 5433 >>{q(str(pgdata) + '/restore.log')} 2>&1 &")
    else:
        lines.append(f"start it (on another port if the original runs here): runuser -u {user} -- {q(bindir + '/pg_ctl')} "
                     f"-D {q(str(pgdata))} -o '-p 5433' -l {q(str(pgdata) + '/restore.log')} start")
    if record.get("mode") == "backup-api":
        lines.append("it replays the backup's WAL from the restore and then promotes itself (recovery.signal)")
    lines.append("archive_mode is off in postgresql.auto.conf; re-enable it when this copy replaces the original")
    return lines

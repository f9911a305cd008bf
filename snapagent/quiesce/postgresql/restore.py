"""Make a restored PostgreSQL data directory start as it is (``prepare``), safely.

What a by-hand restore on this machine type had to do, done for the user:

* remove ``postmaster.pid`` / ``postmaster.opts`` (the PostgreSQL docs list both as files to omit);
* repoint the ``pg_wal`` symlink and every ``pg_tblspc/<oid>`` symlink into the restore — left as
  they are they point at the *live* cluster's WAL and tablespaces;
* backup-api mode: write ``backup_label`` and ``tablespace_map`` (its paths repointed too, since
  PostgreSQL recreates the symlinks from it), empty ``pg_wal``, point ``restore_command`` at the
  WAL restored from the backup, create ``recovery.signal``;
* both modes: ``archive_mode = off`` for the copy, so it never writes into the live WAL archive;
* the files belong to the data directory's owner as recorded at backup (PGDATA 0700), who may
  traverse DEST (a POSIX ACL entry);
* the hand-over: a free port (from 5440; never 5432/5433), a private socket directory
  ``DEST/.snapagent-postgresql`` (also the server log's), the exact start/check/stop commands.
"""

from __future__ import annotations

import os
import shlex
import shutil
import stat
from pathlib import Path, PurePath
from typing import Any, Callable

from snapagent.errors import OperationFailed
from snapagent.plugin.handover import claim, free_port, reach, resolve_owner, run_dir
from snapagent.plugin.quiescer import Handover, RestoreContext

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


def prepare(record: dict[str, Any], locate: Callable[[str], Path], ctx: RestoreContext) -> Handover:
    """Make the restored cluster described by manifest ``record`` startable by its owner; return
    the hand-over (start, check and stop commands on a free port with a private socket directory).

    Raises OperationFailed when the restored tree is not what the record describes.
    """
    pgdata = locate(record["data_directory"])
    if pgdata.is_symlink() or not (pgdata / "PG_VERSION").is_file():
        raise OperationFailed(f"restored PostgreSQL data directory {pgdata} is missing or not a data directory")
    try:
        user, uid, gid = resolve_owner(record.get("owner"), pgdata, "postgres")
    except KeyError:
        raise OperationFailed("the restored cluster's owner (the backup's data directory owner, else user "
                              "postgres) does not exist on this host; create the user and restore again") from None
    for name in ("postmaster.pid", "postmaster.opts"):
        (pgdata / name).unlink(missing_ok=True)
    links = relink(pgdata, record, locate)
    wal_dir = locate(record["pg_wal"]) if record.get("pg_wal") else pgdata / "pg_wal"
    spaces = [locate(loc) for loc in record.get("tablespaces", {}).values()]
    # the server refuses a data directory it does not own or that others may enter
    for d in [pgdata, *([wal_dir] if record.get("pg_wal") else []), *spaces]:
        claim(d, uid, gid)
    if stat.S_IMODE(os.stat(pgdata).st_mode) & 0o027:  # 0700 or 0750, nothing more
        os.chmod(pgdata, 0o700)
    owner = os.stat(pgdata)
    settings = {"archive_mode": "off"}
    details: dict[str, Any] = {"mode": record.get("mode"), "relinked": links}
    if record.get("mode") == "backup-api":
        archived = next((a for a in record.get("artifacts", []) if a["name"] == "wal"), None)
        if archived is None or "restored" not in archived:
            raise OperationFailed("the backup holds no archived WAL; it cannot be recovered")
        _owned_write(pgdata / "backup_label", record["labelfile"], owner)
        spcmap = record.get("spcmapfile") or ""
        if spcmap:
            new = {oid: str(locate(loc)) for oid, loc in record.get("tablespaces", {}).items()}
            _owned_write(pgdata / "tablespace_map", rewrite_tablespace_map(spcmap, new), owner)
        details["pg_wal_entries_removed"] = empty_dir(wal_dir, owner)
        claim(Path(archived["restored"]), uid, gid)  # restore_command runs as the owner
        settings["restore_command"] = restore_command(Path(archived["restored"]))
        _owned_write(pgdata / "recovery.signal", "", owner)
        details["wal_archive"] = archived["restored"]
    auto = pgdata / "postgresql.auto.conf"
    text = f"\n{MARK}\n" + "".join(f"{k} = {conf_quote(v)}\n" for k, v in settings.items())
    _owned_write(auto, text, owner, append=True)
    extra = [Path(a["restored"]) for a in record.get("artifacts", []) if "restored" in a]
    notes = reach(ctx, [pgdata, wal_dir, *spaces, *extra], uid, gid)
    # unix_socket_directories is a comma-separated list
    run = run_dir(ctx, "postgresql", uid, gid, ".s.PGSQL.65535.lock", unsafe=',"')
    h = handover(record, pgdata, user, run, free_port(PORT_FROM, avoid=(5432, 5433)), notes)
    h.details = details
    h.files = [str(p) for p in [*([wal_dir] if record.get("pg_wal") else []), *spaces]]
    return h


PORT_FROM = 5440  # 5432 is PostgreSQL's default, 5433 Debian's second cluster
PUT_IN_PLACE = "docs/databases.md#put-a-restored-postgresql-cluster-in-place"
#: pg_ctl passes -D and -l to /bin/sh inside double quotes: these characters would be interpreted
_PG_CTL_UNSAFE = set('$`"\\\n')


def handover(record: dict[str, Any], pgdata: Path, user: str, run: Path, port: int,
             notes: list[str] | None = None) -> Handover:
    """Return the hand-over of the prepared cluster ``pgdata``: run as ``user`` on ``port``
    (127.0.0.1 and a socket in ``run``), its log ``run/server.log``; archiving stays off."""
    major = int(record.get("server_version_num", 150000)) // 10000
    bindir = record.get("bindir") or f"/usr/lib/postgresql/{major}/bin"
    runas = ["runuser", "-u", user, "--"]
    settings = {"port": str(port), "listen_addresses": "127.0.0.1", "unix_socket_directories": str(run)}
    lines = list(notes or [])
    if not (pgdata / "postgresql.conf").exists():
        # Debian keeps the configuration in /etc/postgresql/…: the copy runs on defaults and a
        # pg_hba.conf of its own (peer on the socket), written into the run directory
        owner = os.stat(pgdata)
        for name, text in (("postgresql.conf", ""), ("pg_hba.conf", "local all all peer\n"), ("pg_ident.conf", "")):
            _owned_write(run / name, text, owner)
        settings.update(config_file=str(run / "postgresql.conf"), hba_file=str(run / "pg_hba.conf"),
                        ident_file=str(run / "pg_ident.conf"))
        lines.append(f"the server kept its configuration outside the data directory ({record.get('config_file')}); "
                     f"the copy starts with PostgreSQL's defaults and peer authentication on its socket ({run})")
    log = run / "server.log"
    if _PG_CTL_UNSAFE.isdisjoint(str(pgdata) + str(log)):
        opts = " ".join(f"-c {k}={shlex.quote(v)}" for k, v in settings.items())  # -o goes through /bin/sh
        start = [*runas, f"{bindir}/pg_ctl", "-D", str(pgdata), "-l", str(log), "-o", opts, "start"]
    else:
        start = [*runas, f"{bindir}/postgres", "-D", str(pgdata), *[a for k, v in settings.items() for a in ("-c", f"{k}={v}")]]
        lines.append("the path holds characters pg_ctl would pass to a shell: the start command runs the server "
                     "in the foreground (add & or use another terminal); the stop command works all the same")
    if record.get("mode") == "backup-api":
        lines.append("it replays the backup's WAL from the restore, then promotes itself (recovery.signal)")
    lines.append("archive_mode is off in postgresql.auto.conf (below the line '# added by snapagent restore'): "
                 "remove that block when the copy replaces the live cluster")
    superuser = record.get("bootstrap_superuser") or "postgres"
    return Handover(
        kind="postgresql", data_dir=str(pgdata), owner=user, port=port, socket=str(run), start=start,
        check=[*runas, f"{bindir}/psql", "-h", str(run), "-p", str(port), "-U", superuser, "-d", "postgres", "-At",
               "-c", "SELECT datname FROM pg_database WHERE datallowconn ORDER BY 1"],
        stop=[*runas, f"{bindir}/pg_ctl", "-D", str(pgdata), "-m", "fast", "stop"],
        put_in_place=PUT_IN_PLACE, notes=lines)

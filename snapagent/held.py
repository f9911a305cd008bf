"""What a restore or a drill takes — scratch directories, bind mounts, ACL entries, throwaway server
processes — taken only through ``Held``, which journals each before taking it and gives it back
in reverse order. After a kill, ``snapagent cleanup`` calls ``undo`` on the records left open.

Records (owner ``{"kind": "core", "name": "held"}``):

- ``dir``: a directory made for the run; undo removes it (with the driver's ``discard`` when the
  record names a driver that has one: btrfs subvolumes), or only its content with ``keep``.
- ``renamed``: a directory moved aside (``restore --force``); undo moves it back when its old
  place is free again.
- ``mount``: a bind mount; undo unmounts it.
- ``acl``: a POSIX ACL entry letting ``uid`` traverse a directory; undo removes the entry.
- ``process``: a server started for a drill; undo finds it by ``marker`` (a unique path in its
  command line), sends ``stop_signal`` and kills it if it has not exited after ``stop_timeout``.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

from snapagent import registry, signals
from snapagent.errors import CommandFailed, OperationFailed
from snapagent.journal import Journal
from snapagent.util import mountinfo
from snapagent.util.runner import Runner, Stream

log = logging.getLogger("snapagent.held")
OWNER = {"kind": "core", "name": "held"}
STOPPING_GRACE = 0.5  # seconds a server gets to shut down when the run is stopping (signals)


class Held:
    """The things one restore/drill holds; ``release_all()`` gives them back, newest first."""

    def __init__(self, journal: Journal | None, runner: Runner):
        self.journal = journal
        self.runner = runner
        self._taken: list[dict[str, Any]] = []
        self._procs: dict[str, tuple[Stream, int, float]] = {}

    def _open(self, kind: str, key: str, **data: Any) -> dict[str, Any]:
        rec = {"kind": kind, "key": key, "owner": OWNER, **data}
        if self.journal is not None:
            self.journal.open(kind, key, OWNER, **data)
        self._taken.append(rec)
        return rec

    def _close(self, rec: dict[str, Any]) -> None:
        self._taken.remove(rec)
        if self.journal is not None:
            self.journal.close(rec["kind"], rec["key"])

    def keep(self, kind: str, key: str) -> None:
        """Keep what was taken as ``kind`` ``key`` (it is the result, e.g. a restore's DEST)."""
        for rec in list(self._taken):
            if (rec["kind"], rec["key"]) == (kind, key):
                self._close(rec)

    # -- taking ---------------------------------------------------------------------------------
    def directory(self, path: Path, *, keep_dir: bool = False, driver: str | None = None,
                  parents: bool = False) -> Path:
        """Create directory ``path`` (0700; journaled first). With ``keep_dir`` (the directory
        exists already and is empty) only what is created in it is removed on release."""
        self._open("dir", str(path), keep=keep_dir, **({"driver": driver} if driver else {}))
        if not keep_dir:
            path.mkdir(mode=0o700, parents=parents)
        return path

    def tempdir(self, prefix: str) -> Path:
        """Create a new private directory in the temp dir (name journaled before it exists)."""
        path = Path(tempfile.gettempdir()) / f"{prefix}{secrets.token_hex(6)}"
        return self.directory(path)

    def move_aside(self, path: Path, aside: Path) -> Path:
        """Rename ``path`` to ``aside`` (journaled first; undo moves it back)."""
        self._open("renamed", str(aside), back_to=str(path))
        os.rename(path, aside)
        return aside

    def bind_mount(self, source: Path, mount_point: Path) -> Path:
        """Bind-mount ``source`` at (existing, empty) ``mount_point``; raise CommandFailed."""
        self._open("mount", str(mount_point))
        self.runner.run(["mount", "--bind", "--", str(source), str(mount_point)], mutating=True, timeout=30)
        return mount_point

    def grant_traverse(self, dirs: list[Path], uid: int) -> None:
        """Let ``uid`` traverse each of ``dirs`` (a POSIX ACL entry each); raise CommandFailed."""
        for d in dirs:
            self._open("acl", str(d), uid=uid)
            self.runner.run(["setfacl", "-m", f"u:{uid}:x", "--", str(d)], mutating=True, timeout=30)

    def start(self, argv: list[str], marker: str, stop_signal: int = signal.SIGTERM,
              stop_timeout: float = 60.0, **stream_kw: Any) -> Stream:
        """Start a server process (``runner.stream``); ``marker`` is a unique string of its argv
        (a private socket directory) by which ``undo`` finds it after a kill."""
        if not any(marker in a for a in argv):
            raise ValueError("the marker must appear in the command line")
        rec = self._open("process", marker, argv0=argv[0], stop_signal=int(stop_signal), stop_timeout=stop_timeout)
        proc = self.runner.stream(argv, mutating=True, **stream_kw)
        self._procs[rec["key"]] = (proc, int(stop_signal), stop_timeout)
        return proc

    # -- giving back ----------------------------------------------------------------------------
    def release(self, kind: str, key: str) -> None:
        """Give back one thing now (e.g. stop a server before its data is removed)."""
        for rec in reversed(self._taken):
            if (rec["kind"], rec["key"]) == (kind, key):
                with signals.waiting(_giving_back(rec)):
                    self._give_back(rec)
                self._close(rec)
                return

    def release_all(self, skip: Callable[[dict[str, Any]], bool] = lambda rec: False) -> list[str]:
        """Give everything back (but what ``skip`` says to keep), newest first; return what could
        not be given back (its record stays open for ``snapagent cleanup``). Never raises an Exception."""
        failed = []
        for rec in list(reversed(self._taken)):
            if skip(rec):
                continue
            try:
                with signals.waiting(_giving_back(rec)):
                    self._give_back(rec)
                self._close(rec)
            except Exception as e:  # noqa: BLE001 - give back the rest; cleanup retries this one
                failed.append(f"{rec['kind']} {rec['key']}: {e}")
                log.warning("could not release %s %s (run `snapagent cleanup`): %s", rec["kind"], rec["key"], e)
        return failed

    def _give_back(self, rec: dict[str, Any]) -> None:
        if rec["kind"] == "process" and rec["key"] in self._procs:
            proc, sig, timeout = self._procs.pop(rec["key"])
            _stop_stream(proc, sig, timeout)
            return
        undo(rec, self.runner)


def _giving_back(rec: dict[str, Any]) -> str:
    """Return what giving ``rec`` back does, as a stopping run names it."""
    what = {"dir": "removing", "renamed": "moving back", "mount": "unmounting", "acl": "removing the ACL entry on",
            "process": "stopping the server"}.get(rec["kind"], f"releasing {rec['kind']}")
    more = f" (SIG{signal.Signals(int(rec['stop_signal'])).name[3:]}, killed after {rec['stop_timeout']:g}s)" \
        if rec["kind"] == "process" and "stop_signal" in rec else ""
    return f"{what} {rec['key']}{more}"


def _stop_stream(proc: Stream, sig: int, timeout: float) -> None:
    """Send ``sig`` to a started server and wait ``timeout`` for it to exit, then SIGKILL its
    process group (a server's workers are in it). A run that is stopping (a signal) waits
    STOPPING_GRACE at most: the server's copy is scratch, a clean shutdown (a PostgreSQL
    checkpoint, InnoDB's flush) not worth seconds of the operator's Ctrl-C."""
    p = proc.proc
    if p is None or p.poll() is not None:
        return
    p.send_signal(sig)
    if signals.caught() is not None:
        timeout = min(timeout, STOPPING_GRACE)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.kill()


def undo(record: dict[str, Any], runner: Runner) -> str:
    """Give back what ``record`` says was taken (see the module docstring); return what was done."""
    kind, key = record.get("kind"), str(record.get("key"))
    if kind == "dir":
        return _undo_dir(Path(key), record, runner)
    if kind == "renamed":
        back = Path(record["back_to"])
        if not os.path.lexists(key):
            return f"{key} is gone"
        if os.path.lexists(back):
            return f"left {key} where it is: {back} exists again"
        if runner.dry_run:
            return f"would move {key} back to {back}"
        os.rename(key, back)
        return f"moved {key} back to {back}"
    if kind == "mount":
        if mountinfo.mounted_at(key) is None:
            return f"{key} is not mounted"
        try:
            runner.run(["umount", "--", key], mutating=True, timeout=60)
        except CommandFailed:  # busy: detach it now, the kernel finishes when the last user goes
            runner.run(["umount", "-l", "--", key], mutating=True, timeout=60)
            return f"unmounted {key} (lazily: it was busy)"
        return f"unmounted {key}"
    if kind == "acl":
        if not os.path.isdir(key):
            return f"{key} is gone (no ACL entry to remove)"
        runner.run(["setfacl", "-x", f"u:{int(record['uid'])}", "--", key], mutating=True, timeout=30)
        return f"removed the ACL entry of uid {record['uid']} on {key}"
    if kind == "process":
        return _undo_process(key, int(record.get("stop_signal", signal.SIGTERM)),
                             float(record.get("stop_timeout", 60)), runner)
    raise OperationFailed(f"unknown journal record {kind!r}")


def _undo_dir(path: Path, record: dict[str, Any], runner: Runner) -> str:
    if path.is_symlink() or not path.is_dir():
        return f"{path} is gone"
    real = os.path.realpath(path)
    inside = [m.mount_point for m in mountinfo.read() if m.mount_point.startswith(real.rstrip("/") + "/")]
    if inside:
        raise OperationFailed(f"not removing {path}: {inside[0]} is mounted inside it")
    if runner.dry_run:
        return f"would remove {path}"
    targets = list(path.iterdir()) if record.get("keep") else [path]
    driver = registry.discover("driver").get(record.get("driver", ""))
    discard = getattr(driver.load(), "discard", None) if driver else None
    for t in targets:
        if discard is not None and t.is_dir() and not t.is_symlink():
            discard(t, runner)
        elif t.is_dir() and not t.is_symlink():
            shutil.rmtree(t)
        else:
            t.unlink()
    return f"removed {'the content of ' if record.get('keep') else ''}{path}"


def _undo_process(marker: str, sig: int, timeout: float, runner: Runner) -> str:
    import psutil  # here: a backup imports this module, and only an undo needs psutil (start-up time)

    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(marker in a for a in (p.info["cmdline"] or [])):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    if not found:
        return f"no process of {marker} is running"
    if runner.dry_run:
        return f"would stop pid {', '.join(str(p.pid) for p in found)} ({marker})"
    for p in found:
        try:
            p.send_signal(sig)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(found, timeout=timeout)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)
    return f"stopped pid {', '.join(str(p.pid) for p in found)} ({marker})" + (" (killed)" if alive else "")

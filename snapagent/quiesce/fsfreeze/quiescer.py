"""fsfreeze quiescer: FIFREEZE/FITHAW for filesystems that do not freeze themselves.

For ext4/xfs under a snapshot method that does not freeze (a block-level snapshot of a cloud disk,
a SAN, a reflinked image file). LVM snapshots freeze through device-mapper and ZFS/btrfs snapshots
are atomic: they need no fsfreeze. The image is *filesystem*-consistent (journal flushed, no
recovery needed), the databases in it are crash-consistent: ``consistency = "crash"``.

A freeze outlives the process that made it, so the agent never freezes by itself: a watchdog
process (``watchdog``: own session, ignores SIGTERM/SIGINT/SIGHUP) freezes on request and
thaws on release, at the deadline (what is left of ``max_freeze``), or as soon as its stdin pipe
from the agent closes (agent death). Each freeze is journaled before it is made; ``undo`` thaws
with ``fsfreeze -u``, so ``snapagent cleanup`` thaws whatever a dead run's journal says is frozen.

Preflight refuses a mount point that is not a mount point, and any filesystem holding ``/``, the
agent's state directory, a local target, the temporary directory, or one of the job's volume paths
(a btrfs snapshot of a frozen btrfs blocks in the kernel until the thaw).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

from snapagent.config import Strict
from snapagent.errors import CommandFailed, OperationFailed, PreflightFailed, QuiesceFailed
from snapagent.plugin.quiescer import Quiescer
from snapagent.util.lines import LineReader, send_line
from snapagent.util.mountinfo import MountEntry, mount_of
from snapagent.util.mountinfo import read as read_mounts
from snapagent.util.runner import Runner, Stream

log = logging.getLogger("snapagent.quiesce.fsfreeze")
OWNER = {"kind": "quiescer", "name": "fsfreeze"}
WATCHDOG = "snapagent.quiesce.fsfreeze.watchdog"
REPLY_TIMEOUT = 10.0  # seconds to wait for the watchdog's answers outside the freeze


class FsfreezeConfig(Strict):
    mountpoints: list[Path] = Field(min_length=1)

    @field_validator("mountpoints")
    @classmethod
    def _abs(cls, v: list[Path]) -> list[Path]:
        for p in v:
            if not p.is_absolute() or "\n" in str(p) or "\t" in str(p):
                raise ValueError(f"{str(p)!r} must be an absolute path without tabs or newlines")
        if len({os.path.normpath(p) for p in v}) != len(v):
            raise ValueError("a mount point is listed twice")
        return v


def protected_paths(ctx) -> dict[str, Path]:
    """Return {what: path} of the places the agent itself writes to or needs: never frozen."""
    out = {"the root filesystem": Path("/"), "the temporary directory": Path(tempfile.gettempdir()),
           "the agent's Python installation": Path(sys.prefix), "snapagent's code": Path(__file__).parent}
    out.update(getattr(ctx, "protected", None) or {})
    return out


class FsfreezeQuiescer(Quiescer):
    type = "fsfreeze"
    Config = FsfreezeConfig
    releases_on_death = False  # FIFREEZE outlives its process: the watchdog and cleanup thaw
    consistency = "crash"

    def __init__(self, cfg: FsfreezeConfig, ctx):
        super().__init__(cfg, ctx)
        self.mps: list[str] = [os.path.realpath(p) for p in cfg.mountpoints]
        self.rec: dict[str, Any] = {"type": self.type, "consistency": self.consistency,
                                    "image": "filesystem-consistent", "mountpoints": list(self.mps)}
        self._wd: Stream | None = None
        self._reader: LineReader | None = None
        self._journaled: list[str] = []
        self._frozen = False

    def describe(self) -> str:
        return "fsfreeze " + ", ".join(self.mps)

    # -- preflight ------------------------------------------------------------------------------
    def preflight(self) -> None:
        self.check_mountpoints()
        try:
            self.ctx.runner.require("fsfreeze", "util-linux")  # cleanup thaws with it
        except CommandFailed as e:
            raise PreflightFailed(str(e)) from None
        if os.geteuid() != 0:
            raise PreflightFailed("fsfreeze needs root (CAP_SYS_ADMIN)")
        self._start_watchdog()  # before the freeze window: its start-up is not part of it

    def check_mountpoints(self) -> list[MountEntry]:
        """Return the mounts to freeze; raise PreflightFailed naming a mount point that is not a
        mount point, or a filesystem that must never be frozen (and what it holds)."""
        table = read_mounts()
        found = []
        for given, mp in zip(self.cfg.mountpoints, self.mps):
            if not os.path.isdir(mp):
                raise PreflightFailed(f"fsfreeze: mount point {str(given)!r} does not exist")
            m = mount_of(mp, table)
            if m.mount_point != mp:
                raise PreflightFailed(f"fsfreeze: {str(given)!r} is not a mount point; it lies on the filesystem "
                                      f"mounted at {m.describe()} — name that mount point")
            guarded = dict(protected_paths(self.ctx))
            for v in self.ctx.volumes:
                if v.startswith("/") and os.path.exists(v):
                    guarded[f"job volume {v!r} (its snapshot would wait for the thaw)"] = Path(v)
            for what, path in guarded.items():
                if mount_of(path, table).dev == m.dev:
                    raise PreflightFailed(f"fsfreeze: refusing to freeze {str(given)!r}: the filesystem mounted at "
                                          f"{m.describe()} holds {what} ({path})")
            found.append(m)
        if len({m.dev for m in found}) != len(found):
            raise PreflightFailed("fsfreeze: two mount points are the same filesystem (freeze it once)")
        return found

    # -- the watchdog ---------------------------------------------------------------------------
    def _start_watchdog(self) -> None:
        if self._wd is not None:
            return
        argv = [sys.executable, "-m", WATCHDOG, *self.mps]
        try:
            wd = self.ctx.runner.stream(argv, mutating=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        new_session=True)
        except CommandFailed as e:
            raise PreflightFailed(f"fsfreeze: cannot start the watchdog: {e}") from None
        if wd.proc is None:  # dry run
            return
        self._wd, self._reader = wd, LineReader(wd.stdout)
        first = self._reply(time.monotonic() + REPLY_TIMEOUT)
        if first != "READY":
            self._stop_watchdog()
            raise PreflightFailed(f"fsfreeze: the watchdog did not start: {first or wd.stderr_text().strip()}")
        self.rec["watchdog_pid"] = wd.proc.pid

    def _reply(self, deadline: float) -> str | None:
        """Return the watchdog's next line that is not a thaw report (those are recorded)."""
        assert self._reader is not None
        while True:
            try:
                line = self._reader.readline(deadline)
            except TimeoutError:
                return None
            if line is None or not line.startswith(("THAWED\t", "THAWFAIL\t")):
                return line
            self._thaw_report(line)

    def _thaw_report(self, line: str) -> None:
        parts = line.split("\t", 3)
        if parts[0] == "THAWED" and len(parts) == 4:
            _, reason, ms, mp = parts
            self.rec.setdefault("thawed", {})[mp] = {"by": "watchdog", "reason": reason, "frozen_ms": float(ms)}
            self._close_journal(mp)
        else:
            log.error("fsfreeze watchdog: %s", line)

    def _close_journal(self, mp: str) -> None:
        if mp in self._journaled:
            self._journaled.remove(mp)
            if self.ctx.journal is not None:
                self.ctx.journal.close("freeze", mp)

    def _stop_watchdog(self) -> None:
        wd, self._wd = self._wd, None
        if wd is None or wd.proc is None:
            return
        send_line(wd.proc.stdin, "thaw")
        try:
            wd.proc.stdin.close()
        except OSError:
            pass
        until = time.monotonic() + REPLY_TIMEOUT
        while self._reply(until) not in (None, "DONE"):
            pass
        try:
            wd.proc.wait(max(0.1, until - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.error("fsfreeze watchdog pid %s did not exit; killing it (thawing with fsfreeze -u)", wd.proc.pid)
            wd.kill()

    # -- quiesce --------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Start the watchdog (a Python process: tens of milliseconds) before any lock of the
        job is taken; ``quiesce`` then only asks it to freeze. Raises what ``quiesce`` raises when
        the watchdog does not start."""
        self._start_watchdog()

    def quiesce(self, deadline: float) -> None:
        self.check_mountpoints()  # mounts may have changed since preflight
        self._start_watchdog()
        if self._wd is None:
            return  # dry run
        if self.ctx.journal is not None:
            for mp in self.mps:
                self.ctx.journal.open("freeze", mp, OWNER, watchdog_pid=self._wd.proc.pid)
        self._journaled = list(self.mps)
        seconds = deadline - time.monotonic()
        if seconds <= 0:
            raise QuiesceFailed("fsfreeze: no time left in max_freeze to freeze")
        t0 = time.monotonic()
        if not send_line(self._wd.proc.stdin, f"freeze {seconds:.3f}"):
            raise QuiesceFailed("fsfreeze: the watchdog is gone")
        answer = self._reply(deadline)
        if answer != "FROZEN":
            raise QuiesceFailed(f"fsfreeze: could not freeze: {(answer or 'no answer before the deadline').split(chr(9))[-1]}")
        self._frozen = True
        self.rec["freeze_ms"] = round((time.monotonic() - t0) * 1000, 1)

    def verify(self) -> None:
        if not self._frozen or self._wd is None:
            raise QuiesceFailed("fsfreeze: not frozen")
        send_line(self._wd.proc.stdin, "status")
        answer = self._reply(time.monotonic() + REPLY_TIMEOUT)
        if answer != "FROZEN":
            raise QuiesceFailed(f"fsfreeze: the filesystems were thawed before the snapshot ended ({answer!r})")

    # -- release --------------------------------------------------------------------------------
    def release(self) -> dict[str, Any]:
        self._stop_watchdog()
        for mp in list(self._journaled):  # not confirmed thawed by the watchdog: thaw here
            try:
                msg = self.undo({"kind": "freeze", "key": mp}, self.ctx.runner)
                self.rec.setdefault("thawed", {})[mp] = {"by": "agent", "result": msg}
                self._close_journal(mp)
            except Exception as e:  # noqa: BLE001 - release never raises; the journal stays open
                log.error("fsfreeze: could not thaw %s (run `snapagent cleanup`): %s", mp, e)
        self._frozen = False
        return dict(self.rec)

    @classmethod
    def undo(cls, record: dict[str, Any], runner: Runner) -> str:
        """Thaw the mount point of a ``freeze`` journal record; not frozen (any more) is success."""
        if record.get("kind") != "freeze":
            raise OperationFailed(f"fsfreeze: unknown journal record {record.get('kind')!r}")
        mp = record["key"]
        if not os.path.isdir(mp) or mount_of(mp).mount_point != os.path.realpath(mp):
            return f"{mp} is not mounted any more; nothing to thaw"
        try:
            res = runner.run(["fsfreeze", "-u", mp], mutating=True, timeout=30)
        except CommandFailed as e:
            if e.returncode == 1 and "Invalid argument" in e.stderr:
                return f"{mp} was not frozen"
            raise
        return f"would thaw {mp}" if res.dry_run else f"thawed {mp}"

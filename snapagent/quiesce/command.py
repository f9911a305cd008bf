"""Command quiescer: pre/post commands, and a ``hold`` process that keeps a lock across the snapshot.

- ``pre`` (argv) runs before the snapshot, ``post`` (argv) after it — ``post`` only when ``pre``
  succeeded (or, without ``pre``, when the hold process became ready), never otherwise.
- ``hold`` (argv) is a long-running command: it takes its lock, prints the ``ready`` line
  (default ``READY``) on stdout, keeps the lock until its stdin reaches end of file, then exits.
  The agent closes that stdin on release — and the kernel closes it when the agent dies, so the
  lock dies with the agent (design guarantee 2) without any cleanup.
- Every command runs through the Runner (argv, never a shell) with ``timeout`` and the
  environment ``SNAPAGENT_JOB``, ``SNAPAGENT_PHASE`` (pre/hold/post), ``SNAPAGENT_DRY_RUN`` (0/1)
  and ``SNAPAGENT_VOLUMES`` (one volume per line: names may contain spaces).
- With ``record_output`` the stdout of ``pre`` (bounded) and the lines of ``hold`` go into the
  manifest record; ``key=value`` lines are also parsed into ``values``.
- ``probe`` (argv) is the hook's drill check: ``snapagent drill`` runs it against the restored
  copy (``snapagent.quiesce.command_probe``), bounded by ``probe_timeout``. A hook may have only a
  ``probe`` (e.g. beside an fsfreeze quiescer): it does nothing at backup time.
"""

from __future__ import annotations

import os
import pwd
import subprocess
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import field_validator, model_validator

from snapagent import signals
from snapagent.config import Duration, Strict, absolute
from snapagent.errors import CommandFailed, FreezeOverrun, OperationFailed, PreflightFailed, QuiesceFailed
from snapagent.plugin.handover import claim, reach
from snapagent.plugin.quiescer import Handover, Locate, ProbeResult, Quiescer, RestoreContext
from snapagent.util.lines import LineReader
from snapagent.util.runner import Stream, format_argv

MAX_OUTPUT = 64 * 1024  # bytes of a command's stdout kept in the manifest
MAX_LINES = 200  # lines of the hold process kept in the manifest


class CommandHandover(Strict):
    """What restore hands over for the database a command hook protects (it knows none itself):
    ``data_dir`` is a live path on the job's volumes; ``{data_dir}`` in the commands becomes its
    restored place, ``{dest}`` the restore's DEST. Recorded in the manifest at backup."""

    data_dir: Path
    owner: str | None = None  # the user the restored data_dir (and all below) is given to
    start: list[str] = []
    check: list[str] = []
    stop: list[str] = []
    put_in_place: str = ""  # where the user's own steps are written down

    _abs = field_validator("data_dir")(lambda v: Path(os.path.normpath(absolute(v))))

    @field_validator("start", "check", "stop")
    @classmethod
    def _argv(cls, v: list[str]) -> list[str]:
        if v and not v[0] or any("\x00" in a for a in v):
            raise ValueError("must be an argv list, e.g. [\"/usr/local/bin/tool\", \"{data_dir}\"]")
        return v


class CommandConfig(Strict):
    name: str | None = None  # shown in logs and the manifest; default: argv[0] of pre/hold
    pre: list[str] | None = None
    post: list[str] | None = None
    hold: list[str] | None = None
    ready: str = "READY"
    timeout: Duration = 30.0
    probe: list[str] | None = None
    probe_timeout: Duration = 600.0
    record_output: bool = True
    consistency: Literal["application", "crash"] = "application"
    handover: CommandHandover | None = None  # restore hands no database over without it

    @field_validator("pre", "post", "hold", "probe")
    @classmethod
    def _argv(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if not v or not v[0]:
            raise ValueError("must be a non-empty argv list, e.g. [\"/usr/local/bin/tool\", \"arg\"]")
        for a in v:
            if "\x00" in a:
                raise ValueError(f"argument {a!r} contains a NUL byte")
        return v

    @field_validator("ready")
    @classmethod
    def _ready(cls, v: str) -> str:
        if not v.strip() or "\n" in v:
            raise ValueError("must be a non-empty single line")
        return v.strip()

    @field_validator("timeout", "probe_timeout")
    @classmethod
    def _timeout(cls, v: float) -> float:
        if v <= 0:
            raise ValueError("must be a positive duration")
        return v

    @model_validator(mode="after")
    def _something_to_run(self) -> "CommandConfig":
        if self.pre is None and self.hold is None and self.probe is None:
            raise ValueError("needs `pre`, `hold` or `probe` (`post` runs only after a successful `pre` or `hold`)")
        if self.pre is None and self.hold is None and self.post is not None:
            raise ValueError("`post` needs `pre` or `hold`: it runs only after a successful one")
        return self


def parse_values(text: str) -> dict[str, str]:
    """Given command output, return its ``key=value`` lines as a dict (other lines are ignored)."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        key = key.strip()
        if sep and key and " " not in key:
            out[key] = value.strip()
    return out


def name_of(cfg: CommandConfig) -> str:
    """Return the hook's name: ``name``, else argv[0] of ``pre``, ``hold`` or ``probe``."""
    return cfg.name or (cfg.pre or cfg.hold or cfg.probe or ["?"])[0]


def _bounded(text: str) -> str:
    data = text.encode(errors="replace")
    if len(data) <= MAX_OUTPUT:
        return text
    return data[:MAX_OUTPUT].decode(errors="replace") + f"\n[... {len(data) - MAX_OUTPUT} bytes cut]"


class CommandQuiescer(Quiescer):
    type = "command"
    Config = CommandConfig
    releases_on_death = True  # the hold process sees EOF; a `pre` lock is not (see __init__)
    consistency = "application"

    @classmethod
    def programs(cls, cfg: CommandConfig) -> dict[str, str]:
        return {key: argv[0] for key in ("pre", "post", "hold", "probe") if (argv := getattr(cfg, key)) is not None}

    @classmethod
    def job_problems(cls, cfg: CommandConfig, volumes: list[str]) -> dict[str, str]:
        from snapagent.quiesce.command_probe import placeholder_problems

        found = placeholder_problems(cfg.probe or [], volumes)
        return {"probe": "; ".join(found)} if found else {}

    @classmethod
    def probes(cls, cfg: CommandConfig) -> bool:
        return cfg.probe is not None

    def __init__(self, cfg: CommandConfig, ctx):
        super().__init__(cfg, ctx)
        self.name = name_of(cfg)
        # What `pre` took stays taken when the agent dies (its `post` never runs): only a
        # hold-only quiescer releases on death.
        self.releases_on_death = cfg.pre is None
        self.consistency = cfg.consistency
        self.rec: dict[str, Any] = {"type": self.type, "name": self.name}
        if cfg.pre is not None or cfg.hold is not None:  # a probe-only hook makes nothing consistent
            self.rec["consistency"] = cfg.consistency
        if cfg.handover is not None:
            self.rec["handover"] = cfg.handover.model_dump(mode="json")
            self.rec["files"] = [str(cfg.handover.data_dir)]  # the engine records where it lies
        self._post_due = False  # pre (or, without pre, hold) succeeded: post must run
        self._hold: Stream | None = None
        self._reader: LineReader | None = None
        self._hold_lines: list[str] = []
        self._hold_t0 = 0.0

    def describe(self) -> str:
        return f"command {self.name}"

    def files(self) -> list[Path]:
        return [self.cfg.handover.data_dir] if self.cfg.handover is not None else []

    @classmethod
    def data_dirs(cls, cfg: CommandConfig) -> list[Path]:
        return [cfg.handover.data_dir] if cfg.handover is not None else []

    @classmethod
    def prepare_restore(cls, record: dict[str, Any], locate: Locate, ctx: RestoreContext) -> Handover | None:
        """With a configured ``handover``: give the restored data_dir to its ``owner`` (who may then
        pass DEST) and return the configured commands with ``{data_dir}``/``{dest}`` filled in;
        without one, None (restore says it hands no database over)."""
        cfg = record.get("handover")
        if not cfg:
            return None
        restored = locate(cfg["data_dir"])
        notes: list[str] = []
        if cfg.get("owner"):
            try:
                pw = pwd.getpwnam(cfg["owner"])
            except KeyError:
                raise OperationFailed(f"command {record.get('name')}: handover.owner {cfg['owner']!r} does not "
                                      "exist on this host; create the user and restore again") from None
            claim(restored, pw.pw_uid, pw.pw_gid)
            notes = reach(ctx, [restored], pw.pw_uid, pw.pw_gid)
        fill = {"{data_dir}": str(restored), "{dest}": str(ctx.dest or "")}

        def filled(argv: list[str]) -> list[str]:
            out = []
            for a in argv:
                for k, v in fill.items():
                    a = a.replace(k, v)
                out.append(a)
            return out

        return Handover(kind="command", data_dir=str(restored), owner=cfg.get("owner"), start=filled(cfg["start"]),
                        check=filled(cfg["check"]), stop=filled(cfg["stop"]),
                        put_in_place=cfg.get("put_in_place") or "docs/databases.md#command-hooks", notes=notes)

    def _env(self, phase: str) -> dict[str, str]:
        return {
            "SNAPAGENT_JOB": self.ctx.job,
            "SNAPAGENT_PHASE": phase,
            "SNAPAGENT_DRY_RUN": "1" if self.ctx.dry_run else "0",
            "SNAPAGENT_VOLUMES": "\n".join(self.ctx.volumes),
        }

    def preflight(self) -> None:
        for key in ("pre", "post", "hold"):
            argv = getattr(self.cfg, key)
            if argv is not None and self.ctx.runner.which(argv[0]) is None:
                raise PreflightFailed(f"command {self.name}: {key} command not found: {argv[0]}")

    # -- quiesce --------------------------------------------------------------------------------
    def quiesce(self, deadline: float) -> None:
        if self.cfg.pre is not None:
            self.rec["pre"] = self._run("pre", self.cfg.pre, deadline, fail=True)
            self._post_due = True
        if self.cfg.hold is not None:
            self._start_hold(deadline)
            self._post_due = True

    def _run(self, phase: str, argv: list[str], deadline: float | None, fail: bool) -> dict[str, Any]:
        """Run ``argv`` for ``phase``; return its record. On failure raise QuiesceFailed when
        ``fail``, else record the error."""
        timeout = self.cfg.timeout
        capped = False
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QuiesceFailed(f"command {self.name}: no time left in max_freeze to run {phase}")
            capped, timeout = left < timeout, min(timeout, left)
        rec: dict[str, Any] = {"argv": list(argv)}
        t0 = time.monotonic()
        try:
            res = self.ctx.runner.run(argv, mutating=True, timeout=timeout, env=self._env(phase))
        except CommandFailed as e:
            rec.update(rc=e.returncode, duration_ms=round((time.monotonic() - t0) * 1000, 1), error=str(e))
            if fail and capped and e.returncode is None:
                raise FreezeOverrun(f"command {self.name}: {phase} was still running when max_freeze ran out "
                                    f"({timeout:.2f}s were left); killed it: {format_argv(argv)}") from None
            if fail:
                raise QuiesceFailed(f"command {self.name}: {phase} failed: {e}") from None
            return rec
        rec.update(rc=res.returncode, duration_ms=round(res.duration * 1000, 1))
        if self.cfg.record_output and not res.dry_run:
            rec["stdout"] = _bounded(res.stdout)
            values = parse_values(res.stdout)
            if values:
                rec["values"] = values
        return rec

    def _start_hold(self, deadline: float) -> None:
        argv = self.cfg.hold
        assert argv is not None
        wait_until = min(deadline, time.monotonic() + self.cfg.timeout)
        self._hold_t0 = time.monotonic()
        try:
            stream = self.ctx.runner.stream(argv, mutating=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            env=self._env("hold"))
        except CommandFailed as e:
            raise QuiesceFailed(f"command {self.name}: hold could not start: {e}") from None
        self.rec["hold"] = {"argv": list(argv)}
        if stream.proc is None:  # dry run
            return
        self._hold, self._reader = stream, LineReader(stream.stdout)
        try:
            self._wait_ready(stream, argv, wait_until)
        except QuiesceFailed:
            self._stop_hold(grace=1.0)  # it holds nothing we rely on: do not wait long
            raise
        self.rec["hold"]["ready_ms"] = round((time.monotonic() - self._hold_t0) * 1000, 1)

    def _wait_ready(self, stream: Stream, argv: list[str], wait_until: float) -> None:
        assert self._reader is not None and stream.proc is not None
        try:
            while True:
                line = self._reader.readline(wait_until)
                if line is None:
                    rc = stream.proc.wait()
                    raise QuiesceFailed(f"command {self.name}: hold {format_argv(argv)} exited (rc {rc}) "
                                        f"before printing {self.cfg.ready!r}: {stream.stderr_text().strip()[-500:]}")
                if line.strip() == self.cfg.ready:
                    break
                self._keep(line)
        except TimeoutError:
            raise QuiesceFailed(f"command {self.name}: hold {format_argv(argv)} did not print {self.cfg.ready!r} "
                                f"within {wait_until - self._hold_t0:.1f}s") from None

    def _keep(self, line: str) -> None:
        if len(self._hold_lines) < MAX_LINES:
            self._hold_lines.append(line)

    def verify(self) -> None:
        if self._hold is not None and self._hold.proc is not None and self._hold.proc.poll() is not None:
            raise QuiesceFailed(f"command {self.name}: hold process exited (rc {self._hold.proc.returncode}) "
                                "before the snapshot ended; its lock was lost")

    # -- release --------------------------------------------------------------------------------
    def release(self) -> dict[str, Any]:
        if self._hold is not None:
            self._stop_hold()
        if self._post_due and self.cfg.post is not None:
            self._post_due = False
            with signals.waiting(f"command {self.name}: waiting for its post command (killed after {self.cfg.timeout:g}s)"):
                self.rec["post"] = self._run("post", self.cfg.post, None, fail=False)
        return dict(self.rec)

    def _stop_hold(self, grace: float | None = None) -> None:
        """Close the hold process's stdin, collect its remaining lines and exit status; kill it
        when it has not exited ``grace`` seconds (default: ``timeout``) later."""
        stream, reader = self._hold, self._reader
        self._hold = self._reader = None
        assert stream is not None and stream.proc is not None and reader is not None
        proc = stream.proc
        rec = self.rec["hold"]
        try:
            proc.stdin.close()
        except (BrokenPipeError, OSError):
            pass
        grace = self.cfg.timeout if grace is None else grace
        until = time.monotonic() + grace
        try:
            with signals.waiting(f"command {self.name}: waiting for its hold process to exit after its stdin closed "
                                 f"(killed after {grace:g}s)"):
                while (line := reader.readline(until)) is not None:
                    self._keep(line)
                rc = proc.wait(max(0.1, until - time.monotonic()))
        except (TimeoutError, subprocess.TimeoutExpired):
            stream.kill()
            rc = proc.returncode
            rec["killed"] = f"did not exit within {grace:g}s of its stdin closing"
        rec["rc"] = rc
        rec["held_ms"] = round((time.monotonic() - self._hold_t0) * 1000, 1)
        err = stream.stderr_text().strip()
        if rc != 0 and err:
            rec["stderr"] = err[-2000:]
        if self.cfg.record_output:
            rec["stdout_lines"] = list(self._hold_lines)
            values = parse_values("\n".join(self._hold_lines))
            if values:
                rec["values"] = values
        for f in (proc.stdout,):
            try:
                f.close()
            except OSError:
                pass

    # -- drill ----------------------------------------------------------------------------------
    @classmethod
    def drill(cls, record: dict[str, Any], locate: Locate, ctx: RestoreContext) -> list[ProbeResult]:
        """Run the hook's ``probe`` (from the current config: ``ctx.settings``) against the
        restored copy; no probe configured: no result (the drill then says what to add)."""
        from snapagent.quiesce.command_probe import run_probe

        cfg = ctx.settings
        if not isinstance(cfg, CommandConfig) or cfg.probe is None or ctx.drill is None:
            return []
        return [run_probe(f"command {record.get('name') or name_of(cfg)}", cfg.probe, cfg.probe_timeout, ctx)]

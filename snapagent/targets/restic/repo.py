"""Running restic against one repository: the child environment (repository, password file and
the environment file's variables — never argv), and turning restic's failures into one clear line.

In: a ResticConfig and a Runner. Out: parsed JSON / text of restic commands. Raised: TargetFailed
with a message naming the cause (wrong password, no repository, unreachable server, locked,
append-only) — never a secret, never restic's full stderr dump.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import subprocess
from pathlib import Path
from typing import Any, Iterator, Sequence

from snapagent.errors import CommandFailed, CommandNotFound, TargetFailed
from snapagent.targets.restic.config import ResticConfig, parse_env_file
from snapagent.targets.restic.stall import Refusal
from snapagent.util.runner import Runner

log = logging.getLogger("snapagent.restic")
TAG = "snapagent"


#: What restic writes when a server refuses what it would retry anyway (lower case).
REFUSALS = ("403 forbidden",)


def public(repository: str) -> str:
    """Return ``repository`` without the ``user:password@`` part a URL may carry."""
    return re.sub(r"^([a-z0-9]+:[a-z]+://)[^/@]*@", r"\1", repository)


def restic_env(cfg: ResticConfig) -> dict[str, str]:
    """Return the variables restic needs beyond the runner's allow-list: the repository (it may
    hold a URL with credentials, so never argv), the password *file*, the environment file's."""
    env = parse_env_file(cfg.environment_file) if cfg.environment_file else {}
    env.update(RESTIC_REPOSITORY=cfg.repository, RESTIC_PASSWORD_FILE=str(cfg.password_file))
    return env


def explain(cfg: ResticConfig, stderr: str, doing: str) -> str:
    """Return one line saying why restic failed while ``doing`` (from its stderr)."""
    repo = public(cfg.repository)
    low = stderr.lower()
    if "wrong password" in low:
        return f"restic repository {repo}: wrong password (password_file {cfg.password_file})"
    if "repository is already locked" in low or "unable to create lock" in low:
        return (f"restic repository {repo} is locked by another restic process (or a killed one): "
                f"if none is running, clear it with `restic -r {repo} unlock` (`snapagent cleanup` does "
                "when the lock is provably snapagent's)")
    if any(s in low for s in ("connection refused", "no such host", "i/o timeout", "connection reset",
                              "network is unreachable", "eof", "context deadline exceeded", "server response unexpected")) \
            and "no such file or directory" not in low:
        return f"restic repository {repo}: the server is unreachable or stopped answering while {doing}"
    if "forbidden" in low:
        return (f"restic repository {repo} refused {doing}: removing data is forbidden there (an "
                "append-only repository?); prune it from a host with full access")
    if "is there a repository at the following location" in low or "does not exist" in low \
            or "no such file or directory" in low or "404 not found" in low:
        return f"restic repository {repo} does not exist (create it with `restic -r {repo} init`)"
    last = [ln for ln in stderr.strip().splitlines() if ln.strip()][-1:] or ["(no message)"]
    return f"restic repository {repo}: {doing} failed: {last[0][:300]}"


def lock_path(state_dir: Path, repository: str) -> Path:
    """Return the file whose flock serialises snapagent's writes to ``repository`` on this host."""
    return state_dir / "locks" / f"restic-{hashlib.sha256(repository.encode()).hexdigest()[:16]}.lock"


@contextlib.contextmanager
def repo_lock(path: Path | None) -> Iterator[None]:
    """Hold the exclusive flock ``path`` (created 0600, its directory 0700) while the block runs,
    waiting for another snapagent that holds it; no lock when ``path`` is None."""
    if path is None:
        yield
        return
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another snapagent writing to the same restic repository (%s)", path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Repo:
    """One restic repository reached through ``runner``; ``lock`` (a path) serialises the
    mutating commands of every snapagent on this host that writes to it (restic's own locks
    would make a prune fail while a backup runs, instead of waiting)."""

    def __init__(self, cfg: ResticConfig, runner: Runner, lock: Path | None = None):
        self.cfg = cfg
        self.runner = runner
        self.lock = lock

    def locked(self):
        return repo_lock(self.lock)

    def env(self) -> dict[str, str]:
        return restic_env(self.cfg)

    def argv(self, *args: str) -> list[str]:
        """Return ``restic [-o OPTION]… ARGS`` (the target's extended options first)."""
        opts = [a for o in self.cfg.options for a in ("-o", o)]
        return ["restic", *opts, *args]

    def run(self, args: Sequence[str], doing: str, *, mutating: bool, timeout: float | None = -1) -> str:
        """Run ``restic ARGS`` (for at most ``timeout`` seconds: default ``stall_timeout``, None:
        unbounded); return its stdout. Raise TargetFailed (explained)."""
        if timeout == -1:
            timeout = self.cfg.stall_timeout
        try:
            with repo_lock(self.lock if mutating else None):
                return self.runner.run(self.argv(*args), mutating=mutating, env=self.env(), timeout=timeout).stdout
        except (CommandNotFound, CommandFailed) as e:
            raise self._failure(e, doing, timeout) from None

    def _failure(self, e: CommandNotFound | CommandFailed, doing: str, timeout: float | None,
                 refused: bool = False) -> TargetFailed:
        """Return the one-line TargetFailed for a restic that is missing, ran past ``timeout``
        (the runner killed it: still retrying), or failed (``refused``: stopped at a refusal)."""
        if isinstance(e, CommandNotFound):
            return TargetFailed("restic is not installed (apt install restic)")
        if e.returncode is None:
            return TargetFailed(f"restic repository {public(self.cfg.repository)}: no answer within "
                                f"{timeout:g}s (stall_timeout) while {doing}; the server is unreachable?")
        return TargetFailed(explain(self.cfg, ("403 forbidden\n" if refused else "") + (e.stderr or str(e)), doing))

    def snapshots(self, *tags: str) -> list[dict[str, Any]]:
        """Return the snapshots carrying tag ``snapagent`` and every one of ``tags``."""
        out = self.run(["snapshots", "--json", "--tag", ",".join((TAG, *tags))], "listing snapshots", mutating=False)
        try:
            snaps = json.loads(out or "[]")
        except json.JSONDecodeError:
            raise TargetFailed(f"restic repository {public(self.cfg.repository)}: unreadable snapshot list") from None
        return [s for s in snaps or [] if isinstance(s, dict) and isinstance(s.get("id"), str)]

    def forget(self, ids: list[str], doing: str) -> None:
        """Forget snapshots ``ids`` (no-op for none), within ``stall_timeout``. A server that refuses
        the removal (append-only: ``403 Forbidden``) fails it at once, not after restic's retries.
        Raise TargetFailed (explained)."""
        if not ids:
            return
        fired = False
        try:
            with repo_lock(self.lock):
                st = self.runner.stream(self.argv("forget", *ids), mutating=True, stdout=subprocess.DEVNULL,
                                        env=self.env())
                with st, Refusal(st, REFUSALS) as watch:
                    try:
                        st.wait(self.cfg.stall_timeout)
                    finally:
                        fired = watch.fired
        except (CommandNotFound, CommandFailed) as e:
            raise self._failure(e, doing, self.cfg.stall_timeout, refused=fired) from None

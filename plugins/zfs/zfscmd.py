"""The only place the ZFS driver builds ``zfs`` command lines and reads their errors.

Every call goes through ``snapagent.runner`` as an argv list (never a shell), says whether it
mutates (so ``--dry-run`` skips it), and puts ``--`` before dataset names so a name that begins
with ``-`` (legal in ZFS) is never read as an option. A failing call raises ZfsCommandFailed whose
``kind`` is parsed from zfs's stderr (``no-dataset``, ``exists``, ``busy``, ``no-tag``, ...) and
whose message is zfs's own reason plus the command line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from snapagent.errors import CommandFailed, CommandNotFound
from snapagent.util.runner import Runner

HOLD_TAG = "snapagent"

# (kind, substrings of zfs's stderr), first match wins.
_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("no-module", ("zfs modules are not loaded", "failed to initialize the libzfs library", "/dev/zfs")),
    ("no-pool", ("no such pool",)),
    ("no-dataset", ("dataset does not exist", "could not find any snapshots to destroy", "no such dataset")),
    ("tag-exists", ("tag already exists on this dataset",)),
    ("no-tag", ("no such tag on this dataset",)),
    ("exists", ("dataset already exists", "destination already exists", "exists\n", "already exists")),
    ("busy", ("dataset is busy", "pool or dataset is busy", "snapshot has dependent clones")),
    ("no-space", ("out of space", "no space left", "not enough space")),
    ("permission", ("permission denied", "operation not permitted")),
    ("suspended", ("i/o is currently suspended",)),
    ("invalid-name", ("invalid character", "name is too long", "invalid dataset name")),
)
_SUBJECT = re.compile(r"cannot [^'\n]*'([^'\n]*)'")


@dataclass(frozen=True)
class ZfsProblem:
    """What a zfs failure was about: ``kind`` (see _KINDS, else ``other``), the dataset or snapshot
    it names (``subject``, may be None) and zfs's own words (``reason``)."""

    kind: str
    subject: str | None
    reason: str


def classify(stderr: str) -> ZfsProblem:
    """Given zfs's stderr, return the ZfsProblem it describes."""
    text = (stderr or "").strip()
    low = text.lower() + "\n"
    kind = next((k for k, subs in _KINDS if any(s in low for s in subs)), "other")
    m = _SUBJECT.search(text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    reason = "; ".join(lines[:3]) if lines else "no error message"
    return ZfsProblem(kind, m.group(1) if m else None, reason)


class ZfsCommandFailed(CommandFailed):
    """A zfs command failed; ``problem`` says what zfs complained about."""

    def __init__(self, e: CommandFailed):
        self.problem = classify(e.stderr)
        from snapagent.util.runner import format_argv

        rc = "timed out" if e.returncode is None else f"exit {e.returncode}"
        super().__init__(e.argv, e.returncode, e.stderr,
                         f"{self.problem.reason} ({rc}: {format_argv(e.argv)})")

    @property
    def kind(self) -> str:
        return self.problem.kind


def _flag(cond: bool, flag: str) -> list[str]:
    return [flag] if cond else []


class Zfs:
    """``zfs`` subcommands the driver uses, each returning parsed output or raising ZfsCommandFailed."""

    def __init__(self, runner: Runner):
        self.runner = runner

    def _run(self, argv: list[str], mutating: bool, timeout: float | None = 120):
        try:
            return self.runner.run(argv, mutating=mutating, timeout=timeout)
        except CommandNotFound:
            raise
        except CommandFailed as e:
            raise ZfsCommandFailed(e) from None

    # -- reads ----------------------------------------------------------------------------------
    def list(self, names: Sequence[str], props: Sequence[str], snapshots: bool = False) -> list[dict[str, str]]:
        """Return one {prop: value} per existing dataset (or snapshot) in ``names`` (exact values, -p).

        Raises ZfsCommandFailed (kind ``no-dataset`` naming the first missing one) when any is missing.
        """
        argv = ["zfs", "list", "-H", "-p", "-o", ",".join(props)]
        argv += ["-t", "snapshot"] if snapshots else ["-t", "filesystem,volume"]
        out = self._run(argv + ["--", *names], mutating=False).stdout
        return [dict(zip(props, line.split("\t"))) for line in out.splitlines() if line]

    def exists(self, name: str, snapshot: bool = False) -> dict[str, str] | None:
        """Return {name, guid} of dataset/snapshot ``name``, or None when it does not exist."""
        try:
            rows = self.list([name], ["name", "guid"], snapshots=snapshot)
        except ZfsCommandFailed as e:
            if e.kind == "no-dataset":
                return None
            raise
        return rows[0] if rows else None

    def version(self) -> str:
        """Return the first line of ``zfs version`` (userland and kernel module)."""
        out = self._run(["zfs", "version"], mutating=False, timeout=10).stdout.strip().splitlines()
        return " / ".join(out[:2]) if out else "?"

    # -- snapshots ------------------------------------------------------------------------------
    def snapshot(self, snaps: Sequence[str], recursive: bool, timeout: float) -> None:
        """Create every snapshot in ``snaps`` (``ds@name``) in ONE call: atomic within one pool."""
        self._run(["zfs", "snapshot", *_flag(recursive, "-r"), "--", *snaps], mutating=True, timeout=timeout)

    def destroy_snapshot(self, snap: str, recursive: bool) -> None:
        """Destroy ``snap`` now, or mark it for deferred destruction while a hold or clone keeps it (-d)."""
        self._run(["zfs", "destroy", "-d", *_flag(recursive, "-r"), "--", snap], mutating=True)

    def hold(self, snap: str, recursive: bool) -> None:
        """Put snapagent's hold on ``snap`` (an existing hold of ours is fine)."""
        try:
            self._run(["zfs", "hold", *_flag(recursive, "-r"), "--", HOLD_TAG, snap], mutating=True)
        except ZfsCommandFailed as e:
            if e.kind != "tag-exists":
                raise

    def release(self, snap: str, recursive: bool) -> None:
        """Release snapagent's hold on ``snap`` (no hold of ours is fine)."""
        try:
            self._run(["zfs", "release", *_flag(recursive, "-r"), "--", HOLD_TAG, snap], mutating=True)
        except ZfsCommandFailed as e:
            if e.kind not in ("no-tag", "no-dataset"):
                raise

    # -- datasets -------------------------------------------------------------------------------
    def create(self, dataset: str) -> None:
        """Create ``dataset`` and any missing parents."""
        self._run(["zfs", "create", "-p", "--", dataset], mutating=True)

    def rename(self, old: str, new: str) -> None:
        self._run(["zfs", "rename", "--", old, new], mutating=True)

    def destroy_dataset(self, dataset: str) -> None:
        """Destroy ``dataset`` with its descendants and snapshots (-r); never clones elsewhere (-R)."""
        self._run(["zfs", "destroy", "-r", "--", dataset], mutating=True, timeout=600)

    def mount(self, dataset: str) -> None:
        self._run(["zfs", "mount", "--", dataset], mutating=True)

    # -- streams (argv only; the driver runs them with runner.stream) ----------------------------
    @staticmethod
    def send_argv(snap: str, base: str | None, recursive: bool, flags: Sequence[str] = ()) -> list[str]:
        """Return the argv of ``zfs send`` of ``snap`` (full, or incremental from snapshot ``base``)."""
        argv = ["zfs", "send", *_flag(recursive, "-R"), *flags]
        if base:
            argv += ["-i", base]
        return argv + ["--", snap]

    @staticmethod
    def receive_argv(dataset: str, incremental: bool) -> list[str]:
        """Return the argv of ``zfs receive`` into ``dataset``: a received ``mountpoint`` is ignored
        (the copy mounts below its new parent, never over the live dataset); an incremental stream
        first rolls ``dataset`` back to its last snapshot (-F)."""
        return ["zfs", "receive", "-x", "mountpoint", *_flag(incremental, "-F"), "--", dataset]

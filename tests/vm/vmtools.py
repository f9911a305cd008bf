"""Helpers for tests that run inside snapagent's test VM (LVM, OpenZFS on loop devices).

Every command is an argv list; nothing goes through a shell. The fixtures in tests/vm/conftest.py
build on these; tests use the fixtures, and may call ``run`` for their own commands.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path
from typing import Sequence

IN_VM = os.environ.get("SNAPAGENT_IN_VM") == "1"


class CommandError(AssertionError):
    """A command run by a VM test failed; the message holds its argv, exit code and stderr."""

    def __init__(self, argv: Sequence[str], returncode: int, stdout: str, stderr: str):
        self.argv, self.returncode, self.stdout, self.stderr = list(argv), returncode, stdout, stderr
        super().__init__(f"{argv!r} exited {returncode}\nstderr: {stderr.strip()}\nstdout: {stdout.strip()[-2000:]}")


def run(argv: Sequence[str], *, check: bool = True, input: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run argv (no shell) and return the completed process with text stdout/stderr.

    Raise CommandError if it exits non-zero and ``check`` is true.
    """
    proc = subprocess.run(list(argv), input=input, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise CommandError(argv, proc.returncode, proc.stdout, proc.stderr)
    return proc


def pipe(producer: Sequence[str], consumer: Sequence[str], timeout: float = 300) -> None:
    """Run ``producer | consumer`` without a shell; raise CommandError if either side fails."""
    with subprocess.Popen(list(producer), stdout=subprocess.PIPE, stderr=subprocess.PIPE) as prod:
        cons = subprocess.run(list(consumer), stdin=prod.stdout, capture_output=True, timeout=timeout)
        prod.stdout.close()
        prod_err = prod.stderr.read().decode(errors="replace")
        prod.wait(timeout=timeout)
    if prod.returncode != 0:
        raise CommandError(producer, prod.returncode, "", prod_err)
    if cons.returncode != 0:
        raise CommandError(consumer, cons.returncode, cons.stdout.decode(errors="replace"),
                           cons.stderr.decode(errors="replace"))


def parse_size(size: str | int) -> int:
    """Given 123, "64M", "1G" or "512K" (powers of 1024), return bytes."""
    if isinstance(size, int):
        return size
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    text = size.strip().upper().removesuffix("IB").removesuffix("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def umount_under(prefixes: Sequence[str]) -> None:
    """Unmount (lazily, deepest first) every mount whose source or target starts with a prefix."""
    hits = []
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            source, target = (f.encode().decode("unicode_escape") for f in line.split()[:2])
            if any(source.startswith(p) or target.startswith(p) for p in prefixes):
                hits.append(target)
    for target in sorted(hits, key=len, reverse=True):
        run(["umount", "-l", target], check=False)


@dataclasses.dataclass(frozen=True)
class LoopDevice:
    """A loop device over a sparse file (on the guest's tmpfs)."""

    device: str
    backing_file: Path
    size: int


@dataclasses.dataclass(frozen=True)
class VolumeGroup:
    """An LVM volume group on one loop-device PV."""

    name: str
    pv: LoopDevice

    def lv_path(self, lv: str) -> str:
        """Return the device path of logical volume ``lv`` in this VG."""
        return f"/dev/{self.name}/{lv}"

    def lv_ref(self, lv: str) -> str:
        """Return ``vg/lv`` as the lv* commands take it."""
        return f"{self.name}/{lv}"

    def free_bytes(self) -> int:
        """Return the VG's free space in bytes."""
        out = run(["vgs", "--noheadings", "--units", "b", "--nosuffix", "-o", "vg_free", self.name]).stdout
        return int(out.strip())


@dataclasses.dataclass(frozen=True)
class ZPool:
    """A ZFS pool on one loop device, created with ``cachefile=none`` and altroot ``altroot``."""

    name: str
    altroot: Path
    vdev: LoopDevice

    def dataset(self, *parts: str) -> str:
        """Return the name of a dataset below the pool: ``dataset("a", "b")`` -> ``pool/a/b``."""
        return "/".join((self.name, *parts))

    def mountpoint(self, dataset: str) -> Path:
        """Return where ``dataset`` is mounted (altroot included), as ZFS reports it."""
        out = run(["zfs", "get", "-H", "-o", "value", "mountpoint", dataset]).stdout
        return Path(out.rstrip("\n"))

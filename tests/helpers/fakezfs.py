"""A fake ``zfs`` under the FakeRunner for unit tests: answers like zfs (same stdout format for
``list -H -p``, same stderr wording on failure), so the driver's parsing and its exact command
lines can be asserted without a kernel module."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Callable

from snapagent.errors import CommandFailed
from tests.helpers.fakerunner import FakeRunner


@dataclass
class FakeZfs:
    datasets: dict[str, dict[str, str]] = field(default_factory=dict)
    snapshots: dict[str, dict] = field(default_factory=dict)
    txg: itertools.count = field(default_factory=lambda: itertools.count(100))
    fail_next: dict[str, str] = field(default_factory=dict)  # subcommand -> stderr to fail with once
    on_receive: Callable[[list[str]], object] | None = None

    def add(self, name: str, mountpoint: str | None = None, available: int = 1 << 30, type_: str = "filesystem",
            mounted: str = "yes") -> None:
        self.datasets[name] = {"name": name, "type": type_, "mounted": mounted, "canmount": "on",
                               "mountpoint": mountpoint or f"/mnt/{name}", "available": str(available), "guid": str(hash(name) & 0xFFFF)}

    def _fail(self, argv, msg):
        raise CommandFailed(argv, 1, msg + "\n")

    def __call__(self, argv: list[str]) -> str:
        sub = argv[1]
        if sub in self.fail_next:
            self._fail(argv, self.fail_next.pop(sub))
        args = argv[argv.index("--") + 1:] if "--" in argv else []
        if sub == "version":
            return "zfs-2.1.11-1\nzfs-kmod-2.1.11-1\n"
        if sub == "list":
            props = argv[argv.index("-o") + 1].split(",")
            snaps = argv[argv.index("-t") + 1] == "snapshot"
            table = self.snapshots if snaps else self.datasets
            out, missing = [], []
            for n in args:
                if n in table:
                    out.append("\t".join(str(table[n].get(p, "-")) for p in props))
                else:
                    missing.append(n)
            if missing:
                self._fail(argv, "\n".join(f"cannot open '{n}': dataset does not exist" for n in missing))
            return "".join(line + "\n" for line in out)
        if sub == "snapshot":
            for s in args:
                if s in self.snapshots:
                    self._fail(argv, f"cannot create snapshot '{s}': dataset already exists\nno snapshots were created")
                if s.split("@")[0] not in self.datasets:
                    self._fail(argv, f"cannot open '{s.split('@')[0]}': dataset does not exist\nusage:...")
            t = next(self.txg)
            for s in args:
                self.snapshots[s] = {"name": s, "guid": str(1000 + len(self.snapshots)), "createtxg": str(t), "holds": set()}
            return ""
        if sub == "hold":
            tag, s = args
            if tag in self.snapshots[s]["holds"]:
                self._fail(argv, f"cannot hold snapshot '{s}': tag already exists on this dataset")
            self.snapshots[s]["holds"].add(tag)
            return ""
        if sub == "release":
            tag, s = args
            if s not in self.snapshots:
                self._fail(argv, f"cannot open '{s}': dataset does not exist")
            if tag not in self.snapshots[s]["holds"]:
                self._fail(argv, f"cannot release hold from snapshot '{s}': no such tag on this dataset")
            self.snapshots[s]["holds"].discard(tag)
            return ""
        if sub == "destroy":
            (n,) = args
            if "@" in n:
                if n not in self.snapshots:
                    self._fail(argv, "could not find any snapshots to destroy; check snapshot names.")
                if self.snapshots[n]["holds"]:
                    if "-d" in argv:
                        self.snapshots[n]["defer"] = True
                        return ""
                    self._fail(argv, f"cannot destroy snapshot {n}: dataset is busy")
                del self.snapshots[n]
            else:
                for d in [d for d in self.datasets if d == n or d.startswith(n + "/")]:
                    del self.datasets[d]
            return ""
        if sub == "create":
            (n,) = args
            if n in self.datasets:
                self._fail(argv, f"cannot create '{n}': dataset already exists")
            self.add(n)
            return ""
        if sub == "rename":
            old, new = args
            self.datasets[new] = {**self.datasets.pop(old), "name": new}
            return ""
        if sub == "mount":
            self.datasets[args[0]]["mounted"] = "yes"
            return ""
        raise AssertionError(f"fake zfs does not know {argv}")


def zfs_runner(zfs: FakeZfs | None = None, dry_run: bool = False) -> FakeRunner:
    """Return the FakeRunner whose ``zfs`` is ``zfs`` (a new FakeZfs by default, also at
    ``runner.fake``): control commands answer from it, ``tar --version`` answers GNU tar, streams
    print ``STREAM <argv>``; a ``zfs receive`` calls ``zfs.on_receive(argv)`` when set."""
    fake = zfs or FakeZfs()

    def answer(argv):
        if argv[0] == "zfs":
            return fake(argv)
        if argv[0] == "tar":
            return "tar (GNU tar) 1.34\n"
        raise AssertionError(f"unexpected command {argv}")

    def stream(argv):
        if argv[:2] == ["zfs", "receive"] and fake.on_receive:
            fake.on_receive(argv)
        return b"STREAM " + " ".join(argv).encode()

    runner = FakeRunner(answer, dry_run=dry_run, stream=stream)
    runner.fake = fake
    return runner

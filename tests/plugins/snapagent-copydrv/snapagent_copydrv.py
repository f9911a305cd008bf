"""A third-party snapagent driver: a 'snapshot' is a copy (cp -a) of a directory. Not atomic;
for tests of the plugin mechanism only."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

from snapagent.util import tar
from snapagent.plugin.driver import Driver, Snapshot
from snapagent.errors import PreflightFailed

OWNER = {"kind": "driver", "name": "copy"}


class CopyDriver(Driver):
    name = "copy"
    export_formats = ("tar",)

    def preflight(self, volumes):
        for v in volumes:
            if not Path(v).is_dir():
                raise PreflightFailed(f"volume {v!r}: no such directory")

    def volume_root(self, volume):
        return Path(volume)

    def snapshot(self, volumes, name, deadline):
        out = []
        for i, v in enumerate(volumes):
            dst = Path(v).parent / f".{name}.{i}"
            if self.journal:
                self.journal.open("snapshot", str(dst), OWNER)
            self.runner.run(["cp", "-a", "--", v, str(dst)], mutating=True)
            out.append(Snapshot(v, str(dst), name))
        return out

    @contextlib.contextmanager
    def export(self, snap, fmt, parent=None):
        proc = self.runner.stream(tar.create_argv(Path(snap.handle)), mutating=False)
        try:
            yield proc.stdout
            proc.wait()
        finally:
            proc.kill()

    def release(self, snap):
        shutil.rmtree(snap.handle, ignore_errors=True)
        if self.journal:
            self.journal.close("snapshot", snap.handle)

    def restore(self, stream, fmt, dest, item, allow_special=False):
        dest.mkdir(mode=0o700)
        tar.extract(self.runner, stream, dest, item["_scan"], allow_special)
        return dest

    @classmethod
    def undo(cls, record, runner):
        shutil.rmtree(record["key"], ignore_errors=True)
        return f"removed copy {record['key']}"

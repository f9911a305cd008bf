"""A third-party snapagent driver: a 'snapshot' is a copy (cp -a) of a directory. Not atomic;
for tests of the plugin mechanism only."""

from __future__ import annotations

import shutil
from pathlib import Path

from snapagent.errors import PreflightFailed
from snapagent.plugin import Driver, Snapshot
from snapagent.plugin.helpers import stream_of
from snapagent.util import tar

OWNER = {"kind": "driver", "name": "copy"}


class CopyDriver(Driver):
    name = "copy"
    export_formats = ("tar",)

    def preflight(self, volumes):
        for v in volumes:
            if not Path(v).is_dir():
                raise PreflightFailed(f"volume {v!r}: no such directory")
        return [Path(v) for v in volumes]

    def snapshot(self, volumes, name, deadline):
        out = []
        for i, v in enumerate(volumes):
            dst = Path(v).parent / f".{name}.{i}"
            if self.journal:
                self.journal.open("snapshot", str(dst), OWNER)
            self.runner.run(["cp", "-a", "--", v, str(dst)], mutating=True)
            out.append(Snapshot(v, str(dst), name))
        return out

    def export(self, snap, fmt, base=None):
        return stream_of(self.runner, tar.create_argv(Path(snap.handle)), snap.volume)

    def release(self, snap):
        shutil.rmtree(snap.handle, ignore_errors=True)
        if self.journal:
            self.journal.close("snapshot", snap.handle)

    def restore(self, stream, fmt, dest, record, scan, allow_special=False):
        dest.path.mkdir(mode=0o700)
        tar.extract(self.runner, stream, dest.path, scan, allow_special)
        return dest.path

    @classmethod
    def undo(cls, record, runner):
        shutil.rmtree(record["key"], ignore_errors=True)
        return f"removed copy {record['key']}"

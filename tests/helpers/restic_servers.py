"""Real restic REST servers on 127.0.0.1 for the restic target's tests: ``rclone serve restic``
(Debian's rclone, installed by scripts/setup-restic.sh).

``rest_server(root, append_only=False)`` is a context manager yielding a RestServer: ``.url`` (a
restic repository URL, ``rest:http://127.0.0.1:PORT/repo/``), ``.env`` (the credentials a
restic client needs: none here), ``.kill()`` (the server dies at once, mid-whatever). The same
shape as ``s3_server``/``sftp_server`` in tests/helpers/restic_remote.py.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from tests.helpers.caps import need


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, f"server exited: {proc.communicate()}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


@dataclass
class RestServer:
    url: str
    proc: subprocess.Popen
    port: int
    env: dict[str, str] = field(default_factory=dict)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@contextlib.contextmanager
def rest_server(root: Path, append_only: bool = False, port: int | None = None) -> Iterator[RestServer]:
    """Serve ``root`` (created 0700) over restic's REST protocol; yield the RestServer, stop it after."""
    need(shutil.which("rclone") is not None, "needs rclone (scripts/setup-restic.sh)")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    port = port or free_port()
    argv = ["rclone", "serve", "restic", str(root), "--addr", f"127.0.0.1:{port}"]
    if append_only:
        argv.append("--append-only")
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    srv = RestServer(f"rest:http://127.0.0.1:{port}/repo/", proc, port)
    try:
        wait_port(port, proc)
        yield srv
    finally:
        srv.kill()

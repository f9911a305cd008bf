"""Watch every process's command line and environment while a test runs, for a secret that must
never appear there (passwords go to children only through files snapagent does not write)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path


class ProcWatch:
    """Context manager: samples ``/proc/*/cmdline`` and ``/proc/*/environ`` every ``interval``
    seconds in a thread; ``hits`` lists (pid, file, command line) where ``needle`` was seen and
    ``samples`` counts the processes looked at."""

    def __init__(self, needle: str, interval: float = 0.005):
        self.needle = needle.encode()
        self.interval = interval
        self.hits: list[tuple[int, str, str]] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.is_set():
            for d in Path("/proc").iterdir():
                if not d.name.isdigit() or int(d.name) == me:
                    continue
                for f in ("cmdline", "environ"):
                    try:
                        data = (d / f).read_bytes()
                    except OSError:
                        continue
                    self.samples += 1
                    if self.needle in data:
                        try:
                            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                        except OSError:
                            cmd = "?"
                        self.hits.append((int(d.name), f, cmd))
            time.sleep(self.interval)

    def __enter__(self) -> "ProcWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)

"""Watch a classic snapshot's fill (Snap%) while it is exported, in a background thread.

The watcher polls ``lvs -o snap_percent,lv_attr`` every ``interval`` seconds, remembers the highest
Snap% seen, and as soon as the snapshot is full or invalid records that and calls ``on_fail`` (the
export kills its tar, so a dying snapshot is not read to the end).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

from .report import SnapStatus

log = logging.getLogger("snapagent.lvm")


class SnapWatch:
    """Polls ``poll()`` (returns a SnapStatus) until stopped or until the snapshot fails."""

    def __init__(self, poll: Callable[[], SnapStatus], interval: float, on_fail: Callable[[], None] = lambda: None):
        self._poll = poll
        self.interval = interval
        self.on_fail = on_fail
        self.failure: SnapStatus | None = None
        self.max_percent: float | None = None
        self.polls = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="snapwatch", daemon=True)

    def start(self) -> "SnapWatch":
        self._thread.start()
        return self

    def check_now(self) -> SnapStatus | None:
        """Poll once; record and return the status (None when the poll itself failed)."""
        try:
            st = self._poll()
        except Exception as e:  # noqa: BLE001 - a failed poll is reported, the export goes on
            self.errors.append(str(e))
            log.warning("polling snapshot fill failed: %s", e)
            return None
        self.polls += 1
        if st.percent is not None:
            self.max_percent = st.percent if self.max_percent is None else max(self.max_percent, st.percent)
        if st.failed and self.failure is None:
            self.failure = st
        return st

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            st = self.check_now()
            if st is not None and st.failed:
                log.error("snapshot failed during export: %s", st.describe())
                try:
                    self.on_fail()
                except Exception:  # noqa: BLE001 - the failure is recorded either way
                    log.exception("stopping the export after the snapshot failed")
                return

    def stop(self) -> None:
        """Stop polling (idempotent) and wait for the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=max(5.0, self.interval * 2 + 60))

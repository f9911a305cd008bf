"""Facts about the current run that every log line carries when known (``--log-format json``):
the job and the backup id. The CLI and the lifecycles ``bind`` them; formatters read ``FIELDS``."""

from __future__ import annotations

FIELDS: dict[str, str] = {}


def bind(**facts: str | None) -> None:
    """Record ``facts`` (e.g. ``job=…``, ``backup_id=…``) for the log lines that follow; None is ignored."""
    FIELDS.update({k: v for k, v in facts.items() if v is not None})


def clear() -> None:
    """Forget every fact (a new command in the same process)."""
    FIELDS.clear()

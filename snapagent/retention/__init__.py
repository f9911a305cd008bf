"""Retention: the pure policy (``policy``: restic 0.14's ``forget``), ``keep_within``'s calendar
spans (``span``), and pruning a job's backups by it (``prune``: journaled, safe to kill)."""

"""PostgreSQL: the quiescer (``quiescer``), its archived WAL (``wal``), making a restored cluster
start (``restore``) and the drill on a throwaway server (``drill``)."""

from snapagent.quiesce.postgresql.quiescer import PostgresConfig, PostgresQuiescer

__all__ = ["PostgresConfig", "PostgresQuiescer"]

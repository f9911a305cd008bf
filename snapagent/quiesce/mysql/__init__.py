"""MySQL/MariaDB: the quiescer (``quiescer``), connecting and reading server facts
(``connection``), making a restored datadir start (``restore``) and the drill on a throwaway
server (``drill``)."""

from snapagent.quiesce.mysql.quiescer import MysqlConfig, MysqlQuiescer

__all__ = ["MysqlConfig", "MysqlQuiescer"]

"""snapagent: hot, application-consistent backups of databases by snapshotting the volumes under them."""

__version__ = "0.1.0"

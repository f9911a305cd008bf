"""Who may read or change the files a config trusts: secret files and the config itself.

In: a path (or a stat result of an open descriptor). Out: the path, or a one-line reason.
Raised: ValueError (the config loader turns it into "KEY: reason", exit 2). Used for every secret
file a config or the command line names (MySQL ``option_file``, a PostgreSQL ``passfile``,
restic's ``password_file``/``environment_file``, age identities) and for the config file itself.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def _owner_ok(st: os.stat_result) -> bool:
    return st.st_uid in (0, os.geteuid())


def secret_stat_problem(path: Path, st: os.stat_result) -> str | None:
    """Given a secret file's stat result, return why it must not be trusted, or None: it must be a
    regular file, readable by its owner only (0600 or 0400), owned by root or the running user."""
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return f"{path} has mode {mode:04o}; it holds a secret, so only its owner may read it: chmod 600 {path}"
    if not _owner_ok(st):
        return (f"{path} is owned by uid {st.st_uid}, neither root nor the user snapagent runs as "
                f"(uid {os.geteuid()}); whoever owns it can change it: chown it")
    return None


def check_secret_file(p: Path) -> Path:
    """Return ``p`` when it is an absolute path to a private regular file (see
    ``secret_stat_problem``); raise ValueError naming the file and the fix."""
    if not p.is_absolute():
        raise ValueError(f"must be an absolute path, got {str(p)!r}")
    try:
        st = os.stat(p)
    except OSError as e:
        raise ValueError(f"{p}: {e.strerror}") from None
    if (why := secret_stat_problem(p, st)) is not None:
        raise ValueError(why)
    return p


def config_stat_problem(path: Path, st: os.stat_result) -> str | None:
    """Given the config file's stat result, return why it must not be trusted, or None: the argv
    lists in it run as root, so nobody but root or the running user may be able to change it."""
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022:
        return (f"{path} is writable by group/others (mode {mode:04o}); the commands it names run as "
                f"root: chmod 600 {path}")
    if not _owner_ok(st):
        return (f"{path} is owned by uid {st.st_uid}, neither root nor the user snapagent runs as "
                f"(uid {os.geteuid()}); the commands it names run as this user: chown root {path}")
    return None

"""Names and paths read from outside — the config, manifests, archives — checked before any of
them becomes part of a path or a command.

Each ``check_*`` function returns its argument unchanged or raises ValueError saying what is wrong
(pydantic turns that into a validation error naming the field). The rule of restic's restorer:
a name that is meant to be one path component must be exactly one, harmless, component.
"""

from __future__ import annotations

import posixpath
import re

#: Job and target names in the config (and the job part of a backup id).
NAME = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
NAME_RE = re.compile(rf"^{NAME}$")
#: ``<job>-<UTC time>``, as the engine names backups.
BACKUP_ID_RE = re.compile(rf"^{NAME}-\d{{8}}T\d{{6}}Z$")
#: One path component: letters, digits, ``_ . -``; never ``.``/``..``, never a leading ``.``/``-``.
COMPONENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,254}$")


def check_name(value: str) -> str:
    """A job or target name."""
    if not NAME_RE.match(value):
        raise ValueError(f"{value!r} is not a valid name (letters, digits, '.', '_', '-'; "
                         "at most 64; must not start with '-' or '.')")
    return value


def check_backup_id(value: str) -> str:
    """A backup id ``<job>-YYYYMMDDTHHMMSSZ``."""
    if not BACKUP_ID_RE.match(value):
        raise ValueError(f"{value!r} is not a backup id (<job>-YYYYMMDDTHHMMSSZ)")
    return value


def check_component(value: str) -> str:
    """A name used as exactly one path component (a label, an artifact file, a restore dir)."""
    if not COMPONENT_RE.match(value):
        raise ValueError(f"{value!r} is not a safe file name (one component of letters, digits, '_', '.', '-'; "
                         "not starting with '.' or '-')")
    return value


def check_relpath(value: str) -> str:
    """A path below a directory: relative, normalised, no ``..`` component, no NUL (``.`` is the
    directory itself)."""
    if not value or "\x00" in value:
        raise ValueError(f"{value!r} is not a relative path (empty or NUL)")
    if value.startswith("/"):
        raise ValueError(f"{value!r} is absolute; a relative path was expected")
    if posixpath.normpath(value) != value or ".." in value.split("/"):
        raise ValueError(f"{value!r} is not a normalised path below its directory (no '..', '//', './')")
    return value


def check_abspath(value: str) -> str:
    """An absolute, normalised path without NUL (a live file's path as a quiescer recorded it)."""
    if not value.startswith("/") or "\x00" in value or posixpath.normpath(value) != value or ".." in value.split("/"):
        raise ValueError(f"{value!r} is not a normalised absolute path")
    return value


def check_text(value: str) -> str:
    """A one-line text (a volume name, a host name): no NUL, no newline."""
    if "\x00" in value or "\n" in value or "\r" in value:
        raise ValueError(f"{value!r} contains a NUL or a line break")
    return value

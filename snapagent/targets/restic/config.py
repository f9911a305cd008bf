"""The ``[targets.NAME]`` table of a restic target, and its ``environment_file``.

In: the TOML keys. Out: a frozen ResticConfig. Raised: pydantic errors that name the key (the
config loader turns them into one ConfigError, exit 2). Secret files must exist, be regular files
of mode 0600 owned by root or the running user (``snapagent.util.secretfiles``, checked here,
before anything runs); the environment file's values are read only when a command runs and are
never logged.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator

from snapagent.config import Strict
from snapagent.util.secretfiles import check_secret_file

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: Names an environment file may not set: snapagent sets the repository and password itself, and
#: these would change which program runs or how.
_FORBIDDEN = re.compile(r"^(RESTIC_PASSWORD.*|RESTIC_REPOSITORY.*|RESTIC_KEY_HINT|PATH|HOME|LD_.*|LC_ALL|SNAPAGENT_.*)$")
_SCHEMES = ("rest:", "s3:", "sftp:", "b2:", "azure:", "gs:", "swift:", "rclone:")


def parse_env_file(p: Path) -> dict[str, str]:
    """Return the ``KEY=value`` lines of ``p`` (blank lines and ``#`` comments skipped; no quoting,
    no expansion). Raise ValueError naming the line — never its value."""
    out: dict[str, str] = {}
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{p}: cannot be read ({getattr(e, 'strerror', None) or e.__class__.__name__})") from None
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        name = name.strip()
        if line.startswith("export "):
            name = name[len("export "):].strip()
        if not sep or not ENV_NAME_RE.match(name):
            raise ValueError(f"{p} line {n}: expected NAME=value")
        if _FORBIDDEN.match(name):
            raise ValueError(f"{p} line {n}: {name} may not be set there (snapagent sets it, or it changes what runs)")
        if "\x00" in value:
            raise ValueError(f"{p} line {n}: the value of {name} contains a NUL byte")
        out[name] = value
    return out


class ResticConfig(Strict):
    """A restic repository: where (``repository``: a local path or ``rest:``/``s3:``/``sftp:``…),
    its password file, the backend's credentials, the host name recorded in snapshots."""

    repository: str = Field(min_length=1)
    password_file: Path
    environment_file: Path | None = None
    host: str = Field(default_factory=socket.gethostname, min_length=1, pattern=r"^[^\x00-\x1f]+$")
    #: restic's extended options (``-o NAME=VALUE``: ``sftp.command``, ``s3.region``…): argv, so
    #: never a secret there (credentials belong in ``environment_file``)
    options: list[Annotated[str, Field(pattern=r"^[a-z0-9]+\.[A-Za-z0-9_.-]+=[^\x00-\x1f]*$")]] = Field(default_factory=list)
    compression: Literal["zstd", "none"] = "zstd"
    zstd_level: int = Field(default=3, ge=1, le=19)
    #: what ``verify`` asks ``restic check --read-data-subset`` to read (``n/t``, ``x%``, a size)
    check_subset: str = Field(default="10%", pattern=r"^(\d+/\d+|\d+(\.\d+)?%|\d+[KMGT]?)$")
    #: seconds an upload may make no progress (restic retrying a dead server) before it is stopped
    stall_timeout: float = Field(default=300, ge=5)
    #: run ``restic prune`` after each delete (else leave it to a scheduled ``restic prune``)
    prune: bool = True

    @field_validator("repository")
    @classmethod
    def _repository(cls, v: str) -> str:
        if "\x00" in v or "\n" in v:
            raise ValueError("contains a control character")
        if not (v.startswith(_SCHEMES) or v.startswith("/")):
            raise ValueError(f"must be an absolute path or start with one of {', '.join(_SCHEMES)}")
        return v

    @field_validator("password_file")
    @classmethod
    def _password_file(cls, v: Path) -> Path:
        return check_secret_file(v)

    @field_validator("environment_file")
    @classmethod
    def _environment_file(cls, v: Path | None) -> Path | None:
        if v is not None:
            parse_env_file(check_secret_file(v))
        return v

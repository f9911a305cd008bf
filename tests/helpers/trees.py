"""File trees compared the way a restore must reproduce them: paths, types, modes, symlink
targets and content hashes."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

SKIP = (".snapagent-snapshots",)  # btrfs: snapagent's snapshots, a nested subvolume, never backed up


def tree(root: Path) -> dict[str, tuple]:
    """Return {relative path: (type, mode, content sha256 | link target | None)} of everything
    below ``root`` except the top-level names in ``SKIP``."""
    out = {}
    for d, dirs, files in os.walk(root):
        if Path(d) == root:
            dirs[:] = [x for x in dirs if x not in SKIP]
        for name in dirs + files:
            p = Path(d) / name
            st = os.lstat(p)
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", None, os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), None)
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), hashlib.sha256(p.read_bytes()).hexdigest())
    return out

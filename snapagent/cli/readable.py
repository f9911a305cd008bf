"""Plain JSON data (a quiescer's manifest record, a drill probe's figures) as lines a person reads.

In: dicts, lists and scalars as ``json.loads`` gives them. Out: lines ``key: value``; a nested
mapping or a list of mappings is indented under its key, a short list of scalars is joined on one line (an ``argv`` shell-quoted),
a multi-line string is an indented block. Never a Python repr: control characters of untrusted
text (a manifest may hold anything) are shown escaped, ``None`` as ``-``, booleans as yes/no.
"""

from __future__ import annotations

import shlex
from typing import Any

INDENT = "  "
INLINE = 70  # a list of scalars longer than this, joined, gets a line per item


def scalar(v: Any) -> str:
    """Return one scalar as text (a string with its control characters escaped)."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    text = str(v)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def lines(data: Any, depth: int = 0) -> list[str]:
    """Return ``data`` as indented lines (``depth`` levels in)."""
    pad = INDENT * depth
    if isinstance(data, dict):
        out = []
        for k, v in data.items():
            key = f"{pad}{scalar(k)}:"
            if k == "argv" and isinstance(v, list) and all(isinstance(x, str) for x in v):
                out.append(f"{key} {scalar(shlex.join(v))}")  # as it could be pasted into a shell
            elif isinstance(v, dict) and v:
                out += [key, *lines(v, depth + 1)]
            elif isinstance(v, list) and not _inline_list(v):
                out += [key, *lines(v, depth + 1)]
            elif isinstance(v, str) and "\n" in v.rstrip("\n"):
                out += [key, *(f"{pad}{INDENT}{scalar(ln)}" for ln in v.rstrip("\n").split("\n"))]
            elif isinstance(v, str):  # a command's one line of output ends with its newline
                out.append(f"{key} {scalar(v.rstrip(chr(10)))}".rstrip())
            else:
                out.append(f"{key} {inline(v)}".rstrip())
        return out
    if isinstance(data, list):
        out = []
        for item in data:
            sub = lines(item, depth + 1) if isinstance(item, (dict, list)) else [f"{pad}{INDENT}{scalar(item)}"]
            if sub:  # "- " marks where each item begins
                first = sub[0]
                out += [f"{pad}- {first[len(pad) + len(INDENT):]}", *sub[1:]]
        return out
    return [f"{pad}{scalar(data)}"]


def _inline_list(v: list[Any]) -> bool:
    if any(isinstance(x, (dict, list)) for x in v):
        return False
    texts = [scalar(x) for x in v]
    return not any(", " in t for t in texts) and len(", ".join(texts)) <= INLINE


def inline(v: Any) -> str:
    """Return a scalar, an empty container or a list of scalars on one line."""
    if isinstance(v, list):
        return ", ".join(scalar(x) for x in v) if v else "(none)"
    if isinstance(v, dict):
        return "(none)"
    return scalar(v)

"""Helpers for plugin authors that are not part of any interface."""

from __future__ import annotations

import contextlib

from snapagent.errors import CommandFailed, ExportFailed
from snapagent.util.runner import Runner


@contextlib.contextmanager
def stream_of(runner: Runner, argv: list[str], volume: str):
    """Run the read-only export command ``argv`` and yield its stdout; on exit wait for it
    (CommandFailed becomes ExportFailed naming ``volume``) and never leave it running."""
    proc = runner.stream(argv, mutating=False)
    try:
        yield proc.stdout
        proc.wait()
    except CommandFailed as e:
        raise ExportFailed(f"export of {volume!r} failed: {e}") from None
    finally:
        proc.kill()


def first_lines(runner: Runner, commands: dict[str, list[str]], timeout: float = 30) -> dict[str, str]:
    """Return {tool: first line of ``argv``'s output} ("?" when it fails); for ``tool_versions``."""
    out = {}
    for tool, argv in commands.items():
        try:
            out[tool] = runner.run(argv, mutating=False, timeout=timeout).stdout.splitlines()[0].strip()
        except (CommandFailed, IndexError):
            out[tool] = "?"
    return out

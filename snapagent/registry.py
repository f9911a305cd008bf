"""Plugin registry: drivers, quiescers and targets are found through entry points.

Built-ins are registered in snapagent's own pyproject exactly like third-party plugins, so the core
never imports a driver by name.
"""

from __future__ import annotations

import importlib.metadata as md
import inspect
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from snapagent.errors import ConfigError, OperationFailed

GROUPS = {
    "driver": "snapagent.drivers",
    "quiescer": "snapagent.quiescers",
    "target": "snapagent.targets",
}


@dataclass(frozen=True)
class PluginInfo:
    """One discovered plugin: its kind, name, entry point value and the distribution providing it."""

    kind: str
    name: str
    value: str
    dist: str
    version: str

    def load(self) -> Any:
        """Import and return the plugin class; raise OperationFailed when it cannot be imported."""
        return _load(self.kind, self.name, self.value)

    def location(self) -> str:
        """Return the file the plugin class is defined in (or why it could not be found)."""
        try:
            return inspect.getsourcefile(self.load()) or "?"
        except Exception as e:  # noqa: BLE001 - shown to the user as-is
            return f"<cannot load: {e}>"


@lru_cache(maxsize=None)
def _load(kind: str, name: str, value: str) -> Any:
    try:
        return md.EntryPoint(name=name, value=value, group=GROUPS[kind]).load()
    except Exception as e:  # noqa: BLE001 - a broken plugin must not crash unrelated commands
        raise OperationFailed(f"{kind} plugin {name!r} ({value}) cannot be loaded: {e}") from e


def discover(kind: str) -> dict[str, PluginInfo]:
    """Return the plugins of ``kind`` ("driver", "quiescer", "target") by name; first found wins."""
    found: dict[str, PluginInfo] = {}
    for ep in md.entry_points(group=GROUPS[kind]):
        dist = getattr(ep, "dist", None)
        info = PluginInfo(kind, ep.name, ep.value, dist.name if dist else "?", dist.version if dist else "?")
        found.setdefault(ep.name, info)
    return found


def get(kind: str, name: str, key: str) -> Any:
    """Return the plugin class ``name`` of ``kind``; raise ConfigError naming config ``key`` if unknown."""
    plugins = discover(kind)
    if name not in plugins:
        known = ", ".join(sorted(plugins)) or "none"
        raise ConfigError(f"{key}: unknown {kind} {name!r} (installed: {known})")
    return plugins[name].load()

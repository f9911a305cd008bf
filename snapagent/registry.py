"""Plugin registry: drivers, quiescers and targets are found through entry points.

Built-ins are registered in snapagent's own pyproject exactly like third-party plugins, so the core
never imports a driver by name. ``BUILTIN`` repeats those entry points (a unit test keeps both
equal): naming a built-in loads just its module, without scanning the metadata of every installed
distribution (``importlib.metadata`` alone costs more start-up than a read command may take); any
other name is looked up among all entry points. A built-in name always means the built-in: a
third-party plugin cannot take over ``btrfs`` or ``directory``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from snapagent.errors import ConfigError, OperationFailed

GROUPS = {
    "driver": "snapagent.drivers",
    "quiescer": "snapagent.quiescers",
    "target": "snapagent.targets",
}

#: The entry points of snapagent's own pyproject.toml, by kind and name (kept equal by a test).
BUILTIN: dict[str, dict[str, str]] = {
    "driver": {
        "btrfs": "plugins.btrfs:BtrfsDriver",
        "zfs": "plugins.zfs:ZfsDriver",
        "lvm": "plugins.lvm:LvmDriver",
        "lvm-thin": "plugins.lvm:LvmThinDriver",
    },
    "quiescer": {
        "sqlite": "snapagent.quiesce.sqlite:SqliteQuiescer",
        "mysql": "snapagent.quiesce.mysql:MysqlQuiescer",
        "command": "snapagent.quiesce.command:CommandQuiescer",
        "fsfreeze": "snapagent.quiesce.fsfreeze:FsfreezeQuiescer",
        "postgresql": "snapagent.quiesce.postgresql:PostgresQuiescer",
    },
    "target": {
        "directory": "snapagent.targets.directory:DirectoryTarget",
        "restic": "snapagent.targets.restic:ResticTarget",
    },
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
        import inspect

        try:
            return inspect.getsourcefile(self.load()) or "?"
        except Exception as e:  # noqa: BLE001 - shown to the user as-is
            return f"<cannot load: {e}>"


@lru_cache(maxsize=None)
def _load(kind: str, name: str, value: str) -> Any:
    try:
        return _resolve(value)
    except Exception as e:  # noqa: BLE001 - a broken plugin must not crash unrelated commands
        raise OperationFailed(f"{kind} plugin {name!r} ({value}) cannot be loaded: {e}") from e


def _resolve(value: str) -> Any:
    """Import and return the object an entry point value ``module:attr.attr [extras]`` names, as
    ``importlib.metadata.EntryPoint.load`` does. Raise what the import raises, or ValueError."""
    module, _, attrs = value.split("[", 1)[0].strip().partition(":")
    if not module:
        raise ValueError(f"{value!r} is not an entry point value (module:attr)")
    obj = importlib.import_module(module.strip())
    for attr in filter(None, attrs.strip().split(".")):
        obj = getattr(obj, attr)
    return obj


def discover(kind: str) -> dict[str, PluginInfo]:
    """Return the plugins of ``kind`` ("driver", "quiescer", "target") by name, from every installed
    distribution's entry points; first found wins, except that a built-in name is always the
    built-in (as ``get`` loads it)."""
    import importlib.metadata as md

    found: dict[str, PluginInfo] = {}
    for ep in md.entry_points(group=GROUPS[kind]):
        dist = getattr(ep, "dist", None)
        info = PluginInfo(kind, ep.name, ep.value, dist.name if dist else "?", dist.version if dist else "?")
        if BUILTIN[kind].get(ep.name, ep.value) == ep.value:
            found.setdefault(ep.name, info)
    return found


def get(kind: str, name: str, key: str) -> Any:
    """Return the plugin class ``name`` of ``kind``: a built-in without looking at other
    distributions, else the first installed entry point of that name. Raise ConfigError naming
    config ``key`` if there is none, OperationFailed when it cannot be imported."""
    if name in BUILTIN[kind]:
        return _load(kind, name, BUILTIN[kind][name])
    plugins = discover(kind)
    if name not in plugins:
        known = ", ".join(sorted(plugins)) or "none"
        raise ConfigError(f"{key}: unknown {kind} {name!r} (installed: {known})")
    return plugins[name].load()

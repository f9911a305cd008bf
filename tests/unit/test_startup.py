"""Start-up imports only what a command needs: ``--help``, ``--version`` and the read commands
(list, show, status, check, config check) load none of the modules only backup, restore, drill or
other plugins use — asserted on the set of modules a real CLI process has loaded, never on time
(the figures are ``bench/cases/startup.py``'s); a listing validates no manifest it validated
before (the manifest cache). And the registry's table of built-ins is exactly what pyproject.toml
registers."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

import pytest

from snapagent import manifest as M
from snapagent import registry
from tests.helpers.cli import ROOT, write_config
from tests.helpers.manifests import manifest

#: Modules (and their submodules) no read command may import.
HEAVY = (
    "sh", "asyncio", "tqdm", "prometheus_client", "psycopg", "pymysql", "pyrage", "zstandard", "psutil",
    "importlib.metadata",
    "snapagent.engine", "snapagent.restore", "snapagent.drill", "snapagent.copies", "snapagent.verify",
    "snapagent.cleanup", "snapagent.held", "snapagent.journal", "snapagent.retention.prune",
    "snapagent.targets.streams", "snapagent.targets.restic", "snapagent.monitor.metrics",
    "snapagent.monitor.watch", "snapagent.quiesce.mysql", "snapagent.quiesce.postgresql",
    "plugins.zfs", "plugins.lvm",
)

#: Runs main(argv) in a fresh interpreter and writes the loaded modules' names to a file.
PROBE = """
import json, sys
from snapagent.cli.main import main
try:
    rc = main(sys.argv[2:])
except SystemExit as e:
    rc = e.code
manifest = sys.modules.get("snapagent.manifest")
with open(sys.argv[1], "w") as f:
    json.dump({"rc": rc, "modules": sorted(sys.modules),
               "validated": bool(manifest and manifest.Manifest.__pydantic_complete__)}, f)
"""


def probe(tmp_path, *argv: str) -> dict:
    """Run the CLI with ``argv`` in a new process; return its exit code (``rc``), loaded modules
    and whether it built the manifest's validator (``validated``: it validated a manifest)."""
    out = tmp_path / "modules.json"
    r = subprocess.run([sys.executable, "-c", PROBE, str(out), *argv], capture_output=True, text=True,
                       cwd=ROOT, timeout=120)
    assert out.exists(), r.stderr
    return json.loads(out.read_text())


def loaded(tmp_path, *argv: str) -> tuple[int, set[str]]:
    """Run the CLI with ``argv`` in a new process; return its exit code and loaded modules."""
    got = probe(tmp_path, *argv)
    return got["rc"], set(got["modules"])


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


@pytest.fixture
def cfg(workdir):
    """The sample config's shape (btrfs job with an sqlite quiescer, directory target) with one
    stored backup."""
    m = manifest()
    d = workdir / "backups" / "app" / m.id
    d.mkdir(parents=True)
    (d / "manifest.json").write_bytes(M.dumps(m))
    (d / m.artifacts[0].name).write_bytes(b"x")
    return write_config(workdir, '[jobs.app]\ndriver = "btrfs"\nvolumes = ["/srv/app"]\ntarget = "local"\n'
                                 'schedule = "daily"\n[jobs.app.retention]\nkeep_last = 3\n'
                                 '[[jobs.app.quiesce]]\ntype = "sqlite"\npath = "/srv/app/app.db"\n'), m.id


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["list"], ["list", "--json"], ["show", "ID"],
                                  ["status"], ["check"], ["config", "check"]], ids=" ".join)
def test_read_commands_import_only_what_they_use(tmp_path, cfg, argv):
    path, bid = cfg
    rc, modules = loaded(tmp_path, "-c", str(path), *[bid if a == "ID" else a for a in argv])
    assert rc in ((0, 1, 2) if argv == ["check"] else (0,))  # check: its state depends on the backup's age
    assert heavy(modules) == []
    if argv in (["--help"], ["--version"]):
        assert not {"pydantic", "snapagent.config", "plugins"} & modules


def test_a_listing_validates_only_manifests_it_has_not_validated_before(tmp_path, cfg):
    """The first listing validates the stored manifest and fills the manifest cache; after it,
    list and check validate none (the manifest's validator is never even built; status does the
    newest one when no run record says what the last success was), and a manifest changed since
    is validated again."""
    path, bid = cfg
    assert probe(tmp_path, "-c", str(path), "list")["validated"]
    for argv in (["list"], ["check"]):
        got = probe(tmp_path, "-c", str(path), *argv)
        assert got["rc"] in (0, 1, 2) and not got["validated"], argv
    mpath = path.parent / "backups" / "app" / bid / "manifest.json"
    mpath.write_bytes(M.dumps(M.loads(mpath.read_bytes()).model_copy(update={"host": "other"})))
    assert probe(tmp_path, "-c", str(path), "list")["validated"]


def test_the_probe_sees_heavy_imports(tmp_path, cfg):
    """The guard can fail: `plugins` scans every distribution's entry points (importlib.metadata)."""
    rc, modules = loaded(tmp_path, "-c", str(cfg[0]), "plugins")
    assert rc == 0 and "importlib.metadata" in heavy(modules)


def test_builtin_table_is_what_pyproject_registers():
    eps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    assert {kind: dict(eps[group]) for kind, group in registry.GROUPS.items()} == registry.BUILTIN


def test_builtins_are_the_installed_entry_points_and_load():
    """The installed metadata (what `plugins` lists) agrees, and every built-in imports."""
    for kind in registry.GROUPS:
        found = registry.discover(kind)
        for name, value in registry.BUILTIN[kind].items():
            assert found[name].value == value and found[name].dist == "snapagent"
            assert registry.get(kind, name, "key").__name__ == value.rsplit(":", 1)[1].rsplit(".", 1)[-1]

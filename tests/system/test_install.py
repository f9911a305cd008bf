"""`scripts/install.sh` (the package install) and its uninstall, into a temporary root (`--root`):
the real /opt, /usr/local and /etc are never touched, and a failed test leaves nothing behind on the
machine. The install builds a wheel of the checkout and installs it with its dependencies, offline,
from a wheelhouse repacked from the test venv (tests/helpers/wheelhouse.py; no PyPI). Then: the
wheel builds without a warning; the installed `snapagent` runs with the checkout hidden (a tmpfs
mounted over it in a private mount namespace) from another cwd, and no installed file names the
checkout; the config is the example, 0600 in a 0700 directory, never overwritten; every installed
unit passes `systemd-analyze verify` and names a Documentation= file that exists; a re-install
upgrades in place; the uninstaller (run with the checkout hidden) removes everything but what it
says it kept, and `--purge` the config too.

The tests run in file order on one install (module fixture `installed`): install → checks →
re-install → uninstall.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.helpers.caps import need
from tests.helpers.cli import ROOT as CHECKOUT
from tests.helpers.cli import toml_str
from tests.helpers.wheelhouse import repack

INSTALL = CHECKOUT / "scripts" / "install.sh"


def pip_env() -> dict[str, str]:
    """The environment for pip: no site/user pip config or PIP_* variables (the wheelhouse only)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def files(root: Path) -> dict[str, str]:
    """Every file and symlink below ``root`` (not directories): relative path → kind."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = Path(dirpath, n)
            out[str(p.relative_to(root))] = "link" if p.is_symlink() else "file"
    return out


def hidden(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``argv`` with the checkout hidden under an empty tmpfs (private mount namespace)."""
    script = 'mount -t tmpfs -o size=1m snapagent-hidden "$1" && shift && exec "$@"'
    return subprocess.run(["unshare", "--mount", "--", "sh", "-c", script, "sh", str(CHECKOUT), *argv],
                          capture_output=True, text=True, timeout=120, cwd=cwd, env=pip_env())


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    return repack(["snapagent[postgres,mysql]", "setuptools"], tmp_path_factory.mktemp("wheelhouse"),
                  exclude=("snapagent",))


def run_install(root: Path, wheelhouse: Path, *more: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(INSTALL), "--root", str(root), "--no-index", "--find-links", str(wheelhouse),
                           *more], capture_output=True, text=True, timeout=600, cwd=cwd, env=pip_env())


@pytest.fixture(scope="module")
def installed(tmp_path_factory, wheelhouse) -> Path:
    need(os.geteuid() == 0, "needs root (unshare --mount, to hide the checkout)")
    need(shutil.which("unshare") is not None, "unshare missing (util-linux, scripts/bootstrap.sh)")
    top = tmp_path_factory.mktemp("install")
    root = top / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/other.service").write_text("[Service]\nExecStart=/bin/true\n")  # not ours
    r = run_install(root, wheelhouse, cwd=top)
    assert r.returncode == 0, r.stderr
    assert not re.search(r"(?i)warn|deprecat", r.stdout + r.stderr), r.stderr  # the build and pip are quiet
    assert f"installed snapagent 0.1.0 in {root}/opt/snapagent" in r.stderr
    return root


def test_wheel_builds_without_warnings(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "snapagent", "plugins"):  # what install.sh builds from
        (shutil.copytree if (CHECKOUT / name).is_dir() else shutil.copy)(
            CHECKOUT / name, src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                            if (CHECKOUT / name).is_dir() else {}))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                        str(tmp_path / "out"), str(src)], capture_output=True, text=True, timeout=300,
                       env=pip_env(), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Successfully built snapagent" in r.stdout
    assert not re.search(r"(?i)warn|deprecat", r.stdout + r.stderr), r.stdout + r.stderr
    (whl,) = (tmp_path / "out").glob("snapagent-*.whl")
    names = set(zipfile.ZipFile(whl).namelist())
    sources = {str(p.relative_to(CHECKOUT)) for d in ("snapagent", "plugins") for p in (CHECKOUT / d).rglob("*.py")}
    assert sources <= names, sorted(sources - names)
    assert not any(n.startswith(("tests/", "bench/", "scripts/")) for n in names)


def test_installed_program_runs_without_the_checkout(installed, tmp_path):
    root = installed
    exe = root / "usr/local/bin/snapagent"
    assert exe.is_symlink() and os.readlink(exe) == f"{root}/opt/snapagent/bin/snapagent"
    r = hidden(str(exe), "--version", cwd=tmp_path)
    assert (r.returncode, r.stdout.strip()) == (0, "snapagent 0.1.0"), r.stderr
    vol = tmp_path / "vol"
    vol.mkdir()
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[agent]\nstate_dir = {toml_str(tmp_path / "state")}\n'
                   f'[targets.local]\ntype = "directory"\npath = {toml_str(tmp_path / "backups")}\n'
                   f'[jobs.app]\ndriver = "btrfs"\nvolumes = [{toml_str(vol)}]\ntarget = "local"\n'
                   f'[[jobs.app.quiesce]]\ntype = "sqlite"\npath = {toml_str(vol / "app.db")}\n')
    r = hidden(str(exe), "-c", str(cfg), "config", "check", cwd=tmp_path)
    assert r.returncode == 0 and "job app: btrfs" in r.stdout, r.stdout + r.stderr
    r = hidden(str(exe), "plugins", cwd=tmp_path)  # the built-in drivers are in the wheel, found by entry point
    assert r.returncode == 0 and re.search(rf"driver +btrfs .*\({root}/opt/snapagent/lib/", r.stdout), r.stdout
    # nothing installed names the checkout (a .pth, direct_url.json, a shebang would)
    needle = str(CHECKOUT).encode()
    for base in (root / "opt/snapagent", root / "usr", root / "etc"):
        for p in base.rglob("*"):
            if p.is_file() and not p.is_symlink():
                assert needle not in p.read_bytes(), f"{p} names the checkout"


def test_config_and_docs(installed):
    conf = installed / "etc/snapagent/snapagent.toml"
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600 and stat.S_IMODE(conf.parent.stat().st_mode) == 0o700
    assert conf.read_bytes() == (CHECKOUT / "etc/snapagent.toml").read_bytes()
    doc = installed / "usr/local/share/doc/snapagent"
    assert (doc / "README.md").is_file() and (doc / "docs/runbook.md").is_file()
    assert (doc / "examples/snapagent.toml").read_bytes() == conf.read_bytes()


def test_every_installed_unit_passes_systemd_analyze_verify(installed, tmp_path):
    analyze = shutil.which("systemd-analyze")
    need(analyze is not None, "systemd-analyze missing (scripts/setup-systemd-tools.sh)")
    units = installed / "etc/systemd/system"
    exe = installed / "usr/local/bin/snapagent"
    assert sorted(p.name for p in units.glob("snapagent*")) == [
        "snapagent-drill@.service", "snapagent-drill@.timer", "snapagent@.service"]
    # a job with a schedule: `schedule install` finds the templates as the package wrote them
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[targets.local]\ntype = "directory"\npath = {toml_str(tmp_path / "b")}\n'
                   f'[jobs.app]\ndriver = "btrfs"\nvolumes = ["/srv/app"]\ntarget = "local"\nschedule = "daily"\n')
    r = subprocess.run([str(exe), "-c", str(cfg), "schedule", "install", "--root", str(installed), "--dry-run"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "would write" in r.stdout and f"would keep {units}/snapagent-drill@.timer" in r.stdout
    for p in units.glob("snapagent*"):
        assert f"ExecStart={exe} " in p.read_text() or p.suffix == ".timer", p
        doc = re.search(r"(?m)^Documentation=file://(/\S+)", p.read_text())
        assert doc is None or (installed / doc[1].lstrip("/")).is_file(), f"{p}: {doc[1]} is not installed"
    names = [p.name for p in units.glob("snapagent*")] + ["snapagent@app.service", "snapagent-drill@app.service",
                                                         "snapagent-drill@app.timer"]
    v = subprocess.run([analyze, "verify", "--man=no", *[f"./{n}" for n in names]], cwd=units,
                       capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    assert v.returncode == 0 and v.stderr == "", v.stderr


def test_reinstall_upgrades_in_place_and_keeps_the_config(installed, wheelhouse, tmp_path):
    conf = installed / "etc/snapagent/snapagent.toml"
    conf.write_text("# mine\n")
    init = next((installed / "opt/snapagent/lib").glob("python3*/site-packages/snapagent/__init__.py"))
    init.write_text(init.read_text() + "\nSTALE = True\n")  # an older install's file: replaced
    r = run_install(installed, wheelhouse, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"kept {conf}" in r.stderr and f"upgraded snapagent 0.1.0 in {installed}/opt/snapagent" in r.stderr
    assert conf.read_text() == "# mine\n" and "STALE" not in init.read_text()


def test_uninstall_removes_everything_but_what_it_says_it_kept(installed, tmp_path):
    before = {k for k in files(installed) if k.startswith("etc/snapagent/")} | {"etc/systemd/system/other.service"}
    (installed / "var/lib/snapagent").mkdir(parents=True)
    (installed / "var/lib/snapagent/status.json").write_text("{}")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[targets.local]\ntype = "directory"\npath = {toml_str(tmp_path / "b")}\n'
                   f'[jobs.app]\ndriver = "btrfs"\nvolumes = ["/srv/app"]\ntarget = "local"\nschedule = "daily"\n')
    exe = installed / "usr/local/bin/snapagent"
    assert subprocess.run([str(exe), "-c", str(cfg), "schedule", "install", "--root", str(installed)],
                          capture_output=True, timeout=60).returncode == 0
    if shutil.which("systemctl"):  # enabled offline, as on a host: the wants links must go too
        subprocess.run(["systemctl", f"--root={installed}", "enable", "snapagent@app.timer",
                        "snapagent-drill@app.timer"], check=True, capture_output=True, timeout=60)
    r = hidden(str(installed / "opt/snapagent/bin/snapagent-uninstall"), "--root", str(installed), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"kept {installed}/etc/snapagent" in r.stderr and f"kept {installed}/var/lib/snapagent" in r.stderr
    assert "kept every backup" in r.stderr
    left = set(files(installed))
    assert left == before | {"var/lib/snapagent/status.json"}, sorted(left)
    r = subprocess.run(["bash", str(INSTALL), "--uninstall", "--purge", "--root", str(installed)],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0 and "purged" in r.stderr, r.stderr
    assert set(files(installed)) == {"etc/systemd/system/other.service"}


def test_install_refuses_to_write_over_a_checkout_in_opt(tmp_path, wheelhouse):
    """The older setup (a checkout in /opt/snapagent, its .venv linked from /usr/local/bin) is refused
    before anything is written, with the way out in the message."""
    root = tmp_path / "root"
    (root / "opt/snapagent/.venv/bin").mkdir(parents=True)
    (root / "opt/snapagent/pyproject.toml").write_text("[project]\n")
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "usr/local/bin/snapagent").symlink_to(root / "opt/snapagent/.venv/bin/snapagent")
    before = files(root)
    r = run_install(root, wheelhouse, cwd=tmp_path)
    assert r.returncode == 1 and "is not a snapagent install" in r.stderr and "mv " in r.stderr, r.stderr
    assert files(root) == before

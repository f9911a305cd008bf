"""A third-party driver package, installed with pip, is found through its entry point and used in
a job (backup, list, restore, drill) exactly like a built-in."""

import json
import sqlite3
import subprocess
import sys

from tests.helpers.cli import ROOT, snapagent, toml_str, write_config


def test_installed_thirdparty_driver_is_used(tmp_path, workdir):
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--no-index", "--target", str(site), str(ROOT / "tests" / "plugins" / "snapagent-copydrv")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    env = {"PYTHONPATH": str(site)}

    p = snapagent("plugins", "--json", env=env, check=True)
    rows = {(x["kind"], x["name"]): x for x in json.loads(p.stdout)}
    assert rows[("driver", "copy")]["distribution"] == "snapagent-copydrv 1.0"
    assert rows[("driver", "copy")]["file"].startswith(str(site))
    assert ("driver", "btrfs") in rows and ("quiescer", "sqlite") in rows
    without = {(x["kind"], x["name"]) for x in json.loads(snapagent("plugins", "--json", check=True).stdout)}
    assert ("driver", "copy") not in without

    vol = tmp_path / "my app"
    vol.mkdir()
    db = vol / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (a)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(42)])
    conn.commit()
    conn.close()
    cfg = write_config(workdir, f'[jobs.app]\ndriver = "copy"\nvolumes = [{toml_str(vol)}]\ntarget = "local"\n'
                                f'[[jobs.app.quiesce]]\ntype = "sqlite"\npath = {toml_str(db)}\n')
    assert snapagent("config", "check", config=cfg).returncode == 2  # not installed without PYTHONPATH
    bid = snapagent("backup", "app", config=cfg, env=env, check=True).stdout.strip().splitlines()[-1]
    m = json.loads(snapagent("show", bid, "--json", config=cfg, env=env, check=True).stdout)
    assert m["driver"] == "copy"
    d = snapagent("drill", bid, config=cfg, env=env, check=True)
    assert "PASS" in d.stdout and "\n    t: 42\n" in d.stdout
    assert not list(tmp_path.glob(".snapagent-*")), "the copy 'snapshot' was not released"

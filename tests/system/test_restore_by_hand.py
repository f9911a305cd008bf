"""The by-hand restore commands in docs/btrfs.md work on real backups (snapagent not involved)."""

import json
import re
import sqlite3
import subprocess

import pytest

from tests.helpers.cli import ROOT, snapagent, toml_str, write_config

pytestmark = [pytest.mark.root, pytest.mark.btrfs]


def doc_commands(section: str) -> list[str]:
    text = (ROOT / "docs" / "btrfs.md").read_text()
    block = re.search(r"## Restore by hand.*?```sh\n(.*?)```", text, re.S).group(1)
    lines = [l for l in block.splitlines() if l.strip()]
    out, cur = [], None
    for line in lines:
        if line.startswith("# "):
            cur = line[2:].split()[0]
        elif cur == section:
            out.append(line)
    return out


@pytest.mark.parametrize("fmt", ["tar", "send"])
def test_restore_by_hand(fmt, subvol, workdir, btrfs_root):
    vol = subvol("app")
    db = vol / "app.db"
    c = sqlite3.connect(db)
    c.execute("PRAGMA journal_mode=WAL")
    c.execute("CREATE TABLE t (a)")
    c.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(77)])
    c.commit()
    cfg = write_config(workdir, f'[jobs.app]\ndriver = "btrfs"\nvolumes = [{toml_str(vol)}]\ntarget = "local"\n'
                                f'export = "{fmt}"\n[[jobs.app.quiesce]]\ntype = "sqlite"\npath = {toml_str(db)}\n')
    bid = snapagent("backup", "app", config=cfg, check=True).stdout.split()[-1]
    m = json.loads(snapagent("show", bid, "--json", config=cfg, check=True).stdout)
    restore_root = btrfs_root / f"byhand-{fmt}-{vol.name}"
    restore_root.mkdir()
    label = m["volumes"][0]["label"]
    for cmd in doc_commands(fmt):
        cmd = (cmd.replace("/var/backups/snapagent", str(workdir / "backups")).replace("<id>", bid)
               .replace("00-app.", f"00-{label}.").replace("/restore", str(restore_root)))
        r = subprocess.run(["bash", "-o", "pipefail", "-ec", cmd], capture_output=True, text=True)
        assert r.returncode == 0, f"{cmd}\n{r.stderr}"
    rdb = restore_root / "app" / "app.db"
    c2 = sqlite3.connect(rdb)
    assert c2.execute("SELECT count(*) FROM t").fetchone()[0] == 77
    assert c2.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    c2.close()
    c.close()

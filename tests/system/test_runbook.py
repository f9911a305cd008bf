"""Every `snapagent …` command shown in docs/runbook.md runs, as written, against a real btrfs
volume with a live SQLite database (placeholders JOB, ID, DEST substituted)."""

import re
import shlex
import shutil
import sqlite3

import pytest

from tests.helpers.cli import ROOT, snapagent, toml_str, write_config

pytestmark = [pytest.mark.root, pytest.mark.btrfs]


def runbook_commands() -> list[str]:
    text = (ROOT / "docs" / "runbook.md").read_text()
    cmds = []
    for block in re.findall(r"```sh\n(.*?)```", text, re.S):
        cmds += [line.strip() for line in block.splitlines() if line.strip().startswith("snapagent ")]
    return cmds


def test_runbook_has_commands():
    cmds = runbook_commands()
    assert len(cmds) >= 14
    used = {c.split()[1] for c in cmds}
    assert used >= {"config", "plugins", "backup", "list", "show", "verify", "restore", "drill", "cleanup"}


def test_every_runbook_command_runs(subvol, workdir):
    vol = subvol("runbook")
    db = vol / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (a)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.commit()
    cfg = write_config(workdir, f'[jobs.app]\ndriver = "btrfs"\nvolumes = [{toml_str(vol)}]\ntarget = "local"\n'
                                f'[[jobs.app.quiesce]]\ntype = "sqlite"\npath = {toml_str(db)}\n')
    bid = None
    dest = workdir / "dest"
    for cmd in runbook_commands():
        argv = shlex.split(cmd)[1:]
        if bid is None and "ID" in argv:
            bid = snapagent("backup", "app", config=cfg, check=True).stdout.split()[-1]
        argv = [{"JOB": "app", "ID": bid, "DEST": str(dest)}.get(a, a.replace("JOB@", "app@")) for a in argv]
        if argv[0] == "restore" and "--force" not in argv and dest.exists():
            shutil.rmtree(dest)  # each section restores into an absent DEST, as an operator would
        r = snapagent(*argv, config=cfg)
        assert r.returncode == 0, f"runbook command failed: {cmd}\n{r.stdout}\n{r.stderr}"
    conn.close()

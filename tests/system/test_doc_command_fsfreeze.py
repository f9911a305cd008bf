"""The shell commands of docs/databases.md's "Command hooks" and "fsfreeze" sections run as
written (paths and placeholders substituted) against real backups."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.cli import ROOT, snapagent, toml_str
from tests.helpers.loopfs import ext4_loop, was_frozen

pytestmark = [pytest.mark.root, pytest.mark.btrfs]
HELPERS = ROOT / "tests" / "helpers"


def section_commands(title: str) -> list[str]:
    text = (ROOT / "docs" / "databases.md").read_text()
    body = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M).group(1)
    return [l.strip() for b in re.findall(r"```sh\n(.*?)```", body, re.S) for l in b.splitlines()
            if l.strip() and not l.strip().startswith("#")]


def config_from(sample: str, workdir: Path, repl: dict[str, str]) -> Path:
    text = (ROOT / "etc" / "hooks" / sample).read_text()
    repl = {"/var/lib/snapagent": str(workdir / "state"), "/var/backups/snapagent": str(workdir / "backups"), **repl}
    for old, new in repl.items():
        text = text.replace(f'"{old}"', new if new.startswith('"') else toml_str(new))
        if not new.startswith('"'):  # a probe's placeholder names the volume too
            text = text.replace(f'"{{restored:{old}}}"', toml_str(f"{{restored:{new}}}"))
    (workdir / sample).write_text(text)
    return workdir / sample


def run(line: str, subst: dict[str, str], cfg: Path) -> subprocess.CompletedProcess:
    argv = shlex.split(line)
    for old, new in subst.items():
        argv = [a.replace(old, new) for a in argv]
    if argv[0] == "snapagent":
        return snapagent(*argv[1:], config=cfg)
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def test_command_hooks_section(subvol, workdir):
    cmds = section_commands("Command hooks")
    assert cmds[0] == "snapagent backup rstmdb" and len(cmds) == 3
    db = subvol("rstmdb")
    (db / "wal").write_bytes(b"w" * 777)
    cfg = config_from("rstmdb.toml", workdir, {
        "/srv/rstmdb": str(db),
        "/usr/local/bin/rstmdb-admin": f"{toml_str(sys.executable)}, {toml_str(HELPERS / 'rstmdb_admin.py')}"})
    bid = snapagent("backup", "rstmdb", config=cfg, check=True).stdout.split()[-1]
    subst = {"/var/backups/snapagent": str(workdir / "backups"), "ID": bid}
    for line in cmds[1:]:
        r = run(line, subst, cfg)
        assert r.returncode == 0, f"{line}\n{r.stdout}\n{r.stderr}"
    assert '"wal_offset": "777"' in r.stdout


def test_fsfreeze_section(subvol, workdir, tmp_path):
    cmds = section_commands("fsfreeze")
    assert [c.split()[0] for c in cmds] == ["fsfreeze", "snapagent", "dumpe2fs", "e2fsck", "mount"]
    vol = subvol("images")
    with ext4_loop(vol, size_mb=32, image="disk.img") as mnt:
        (mnt / "hello").write_text("hello\n")
        cfg = config_from("fsfreeze.toml", workdir, {"/srv/images": str(vol), "/mnt/disk": str(mnt)})
        bid = snapagent("backup", "images", config=cfg, check=True).stdout.split()[-1]
        dest = tmp_path / "dest"
        snapagent("restore", bid, "--to", str(dest), config=cfg, check=True)
        label = next(p.name for p in dest.iterdir())
        restored = tmp_path / "restored"
        restored.mkdir()
        subst = {"/mnt/disk": str(mnt), "DEST/images/": f"{dest}/{label}/", "/mnt/restored": str(restored)}
        subprocess.run(["fsfreeze", "-f", str(mnt)], check=True)  # a freeze snapagent did not undo
        try:
            outputs = {}
            for line in cmds:
                r = run(line, subst, cfg)
                assert r.returncode == 0, f"{line}\n{r.stdout}\n{r.stderr}"
                outputs[line.split()[0]] = r.stdout
                if line.startswith("fsfreeze"):
                    assert not was_frozen(mnt)
            assert "needs_recovery" not in outputs["dumpe2fs"] and "Filesystem features" in outputs["dumpe2fs"]
            assert (restored / "hello").read_text() == "hello\n"
        finally:
            subprocess.run(["fsfreeze", "-u", str(mnt)], capture_output=True)
            subprocess.run(["umount", str(restored)], capture_output=True)

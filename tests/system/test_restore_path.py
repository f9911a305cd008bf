"""Single-path restore (``restore ID --to DEST --path REL``) on real btrfs: files, directories,
awkward names, several volumes, and every refusal (exit 2 before reading, exit 1 naming a path the
archive does not hold, send exports refused) with nothing written."""

from __future__ import annotations

import os
import sqlite3

import pytest

from tests.helpers.cli import snapagent, toml_str, write_config

pytestmark = [pytest.mark.root, pytest.mark.btrfs]


def _fill(vol):
    (vol / "sub dir" / "deeper").mkdir(parents=True)
    (vol / "sub dir" / "a.txt").write_text("a\n")
    (vol / "sub dir" / "deeper" / "b.txt").write_text("b\n")
    (vol / "-lead name").write_text("dash\n")
    (vol / "-x").write_text("x\n")
    (vol / "other").write_text("not asked for\n")
    conn = sqlite3.connect(vol / "app.db")
    conn.execute("CREATE TABLE t (a)")
    conn.execute("INSERT INTO t VALUES (42)")
    conn.commit()
    conn.close()


def _job(name, vols, export="tar", db=None):
    s = (f"[jobs.{name}]\ndriver = \"btrfs\"\nvolumes = [{', '.join(toml_str(v) for v in vols)}]\n"
         f"target = \"local\"\nexport = \"{export}\"\n")
    if db is not None:
        s += f"[[jobs.{name}.quiesce]]\ntype = \"sqlite\"\npath = {toml_str(db)}\n"
    return s


def _files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def one(subvol, workdir):
    vol = subvol("one vol")
    _fill(vol)
    cfg = write_config(workdir, _job("app", [vol], db=vol / "app.db"))
    bid = snapagent("backup", "app", config=cfg, check=True).stdout.split()[-1]
    return cfg, vol, bid


def test_file_directory_and_awkward_names(one, workdir):
    cfg, vol, bid = one
    dest = workdir / "dest"
    r = snapagent("-v", "restore", bid, "--to", str(dest), "--path", "app.db", "--path", "./sub dir/",
                  "--path", "-lead name", "--path=-x", config=cfg, check=True)
    root = dest / vol.name.replace(" ", "_")
    assert _files(dest) == [root.name] + [f"{root.name}/{p}" for p in
                                          ["-lead name", "-x", "app.db", "sub dir", "sub dir/a.txt",
                                           "sub dir/deeper", "sub dir/deeper/b.txt"]]
    assert (root / "-lead name").read_text() == "dash\n" and (root / "sub dir/deeper/b.txt").read_text() == "b\n"
    conn = sqlite3.connect(root / "app.db")
    assert conn.execute("SELECT a FROM t").fetchall() == [(42,)]
    conn.close()
    assert "extra artifacts and hand-over steps are skipped" in r.stderr, r.stderr
    assert str(root / "app.db") in r.stdout


def test_refusals_touch_nothing(one, workdir):
    cfg, vol, bid = one
    dest = workdir / "dest"
    for rel, code, words in [("../etc/passwd", 2, "'..' is not allowed"), ("/etc/passwd", 2, "not absolute"),
                             ("sub dir/../../x", 2, "'..' is not allowed"), (".", 2, "whole volume"),
                             ("no such file", 1, "is not in backup"), ("sub dir/nope", 1, "is not in backup")]:
        r = snapagent("restore", bid, "--to", str(dest), "--path", "app.db", "--path", rel, config=cfg)
        assert r.returncode == code and words in r.stderr and f"--path {rel!r}" in r.stderr, (rel, r.stderr)
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
        assert not dest.exists(), rel


def test_several_volumes_take_the_label(subvol, workdir):
    a, b = subvol("va"), subvol("vb")
    _fill(a)
    (b / "logs").mkdir()
    (b / "logs" / "1.log").write_text("one\n")
    cfg = write_config(workdir, _job("two", [a, b]))
    bid = snapagent("backup", "two", config=cfg, check=True).stdout.split()[-1]
    dest = workdir / "dest"
    r = snapagent("restore", bid, "--to", str(dest), "--path", "app.db", config=cfg)
    assert r.returncode == 2 and "starts with its volume's label" in r.stderr and a.name in r.stderr, r.stderr
    assert not dest.exists()
    snapagent("restore", bid, "--to", str(dest), "--path", f"{b.name}/logs", "--path", f"{a.name}/-x",
              config=cfg, check=True)
    assert _files(dest) == sorted([a.name, f"{a.name}/-x", b.name, f"{b.name}/logs", f"{b.name}/logs/1.log"])


def test_send_export_is_refused(subvol, workdir):
    vol = subvol("sendvol")
    _fill(vol)
    cfg = write_config(workdir, _job("snd", [vol], export="send"))
    bid = snapagent("backup", "snd", config=cfg, check=True).stdout.split()[-1]
    dest = workdir / "dest"
    r = snapagent("restore", bid, "--to", str(dest), "--path", "app.db", config=cfg)
    assert r.returncode == 2 and "--path 'app.db'" in r.stderr and "'send'" in r.stderr, r.stderr
    assert not dest.exists()


def test_a_hard_link_brings_the_member_it_links_to(subvol, workdir):
    vol = subvol("links")
    (vol / "d1").mkdir()
    (vol / "d2").mkdir()
    (vol / "d1" / "f").write_text("same inode\n")
    os.link(vol / "d1" / "f", vol / "d2" / "g")  # one of them is a hard-link member, which is tar's choice
    cfg = write_config(workdir, _job("lnk", [vol]))
    bid = snapagent("backup", "lnk", config=cfg, check=True).stdout.split()[-1]
    for i, rel in enumerate(["d1/f", "d2/g", "d2"]):
        dest = workdir / f"dest{i}"
        snapagent("restore", bid, "--to", str(dest), "--path", rel, config=cfg, check=True)
        root = dest / vol.name
        assert (root / rel).exists() and (root / "d1/f").read_text() == "same inode\n", _files(dest)
        assert set(_files(root)) <= {"d1", "d1/f", "d2", "d2/g"}, _files(dest)

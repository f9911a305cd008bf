"""The malicious-archive corpus, through the real check and the real GNU tar: every archive is
either refused before anything is written, or extracted with nothing written outside DEST and no
setuid/setgid bit left. The parser differentials (a GNU long name followed by a pax ``path``, a
pax ``GNU.sparse.name`` …) are included: the check reads each member as GNU tar does, because
GNU tar is what extracts it."""

from __future__ import annotations

import io
import os
import stat
from pathlib import Path

import pytest

from snapagent.errors import RestoreRefused
from snapagent.util import tar
from tests.helpers.caps import need
from tests.helpers.evil_tar import Ar

OUT = b"../outside"  # DEST is <sandbox>/dest: this is <sandbox>/outside

REFUSED = {
    "dotdot name": Ar().file(b"../outside/pwned"),
    "absolute name": Ar().file(b"/tmp/snapagent-corpus-pwned"),
    "dotdot inside a name": Ar().dir(b"./a").file(b"./a/../../outside/pwned"),
    "member below a relative symlink out": Ar().symlink(b"./l", OUT).file(b"./l/pwned"),
    "member below a symlink inside": Ar().dir(b"./d").symlink(b"./l", b"d").file(b"./l/x"),
    "hard link out": Ar().hardlink(b"./h", b"../../etc/passwd"),
    "hard link to a symlink, then a member through it":
        Ar().symlink(b"./s", OUT).hardlink(b"./h", b"./s").file(b"./h/pwned"),
    "hard link target through a symlink": Ar().symlink(b"./s", OUT).hardlink(b"./h", b"./s/victim"),
    "hard link to a later member": Ar().hardlink(b"./h", b"./later").file(b"./later"),
    "a member replacing a symlink": Ar().symlink(b"./s", OUT + b"/victim").file(b"./s"),
    "GNU long name, then pax path": Ar().gnu_long(b"L", b"./good").pax({"path": OUT + b"/pwned"}).file(b"./x"),
    "pax path, then GNU long name": Ar().pax({"path": OUT + b"/pwned"}).gnu_long(b"L", b"./good").file(b"./x"),
    "GNU long link, then pax linkpath": Ar().file(b"./t").gnu_long(b"K", b"./t")
        .pax({"linkpath": b"../../etc/shadow"}).hardlink(b"./h", b"./x"),
    "pax GNU.sparse.name": Ar().pax({"GNU.sparse.name": OUT + b"/pwned", "GNU.sparse.major": b"1",
                                     "GNU.sparse.minor": b"0"}).file(b"./x"),
    "global pax path": Ar().pax({"path": OUT + b"/pwned"}, global_=True).file(b"./x"),
    "GNU long name hiding a symlink escape": Ar().symlink(b"./s", OUT)
        .gnu_long(b"L", b"./fine").pax({"path": b"./s/pwned"}).file(b"./x"),
    "device": Ar().member(b"./null", b"3", devmajor=1, devminor=3),
    "block device": Ar().member(b"./sda", b"4", devmajor=8, devminor=0),
    "fifo": Ar().member(b"./fifo", b"6"),
    "volume header": Ar().member(b"./vol", b"V"),
    "unknown type": Ar().member(b"./sock", b"s"),
    "garbage": Ar().raw(b"\x01" * 1024),
}

CONTAINED = {
    "plain": Ar().dir(b"./d").file(b"./d/a.db", b"data").symlink(b"./abs", b"/etc/passwd"),
    "setuid file": Ar().file(b"./su", mode=0o4755),
    "setgid file": Ar().file(b"./sg", mode=0o2755),
    "setuid hidden behind a GNU long name": Ar().gnu_long(b"L", b"./harmless").pax({"path": b"./su"})
        .file(b"./x", mode=0o4755),
    "hostile but legal names": Ar().file("./-rf $(touch pwned) `id` ; a\nb \"q\" é".encode()),
    "hard link to an earlier file": Ar().file(b"./f", b"same").hardlink(b"./h", b"./f"),
    "hard link to a symlink (itself a symlink, nothing below)": Ar().symlink(b"./s", OUT).hardlink(b"./h", b"./s"),
}


@pytest.fixture
def sandbox(tmp_path):
    (tmp_path / "dest").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "victim").write_text("untouched")
    return tmp_path


def outside_untouched(sandbox: Path) -> None:
    assert sorted(p.name for p in (sandbox / "outside").iterdir()) == ["victim"]
    assert (sandbox / "outside" / "victim").read_text() == "untouched"
    assert not Path("/tmp/snapagent-corpus-pwned").exists()


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_refused_before_anything_is_written(case, sandbox):
    with pytest.raises(RestoreRefused):
        tar.scan(io.BytesIO(REFUSED[case].bytes()))
    # what a restore does next: nothing — DEST stays empty
    assert list((sandbox / "dest").iterdir()) == []
    outside_untouched(sandbox)


@pytest.mark.parametrize("case", sorted(CONTAINED))
def test_extracted_inside_dest_without_setid(case, sandbox):
    need(os.geteuid() == 0, "extraction keeps owners: needs root")
    data = CONTAINED[case].bytes()
    report = tar.scan(io.BytesIO(data))
    tar.extract(tar.Runner(), io.BytesIO(data), sandbox / "dest", report)
    outside_untouched(sandbox)
    for d, dirs, files in os.walk(sandbox / "dest"):
        for name in files + dirs:
            st = os.lstat(Path(d) / name)
            assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), f"{name} kept a setuid/setgid bit"
    assert sorted(p.name for p in sandbox.iterdir()) == ["dest", "outside"]


def test_what_was_checked_is_what_was_written(sandbox):
    """The differential case: Python's tarfile reads `./harmless`, GNU tar `./su` — and `./su` is
    what the check reports and what lands in DEST."""
    need(os.geteuid() == 0, "extraction keeps owners: needs root")
    data = CONTAINED["setuid hidden behind a GNU long name"].bytes()
    report = tar.scan(io.BytesIO(data))
    assert report.setid == ["su"]
    tar.extract(tar.Runner(), io.BytesIO(data), sandbox / "dest", report)
    assert sorted(p.name for p in (sandbox / "dest").iterdir()) == ["su"]
    assert stat.S_IMODE(os.stat(sandbox / "dest" / "su").st_mode) == 0o755


def test_special_members_with_allow_special(sandbox):
    need(os.geteuid() == 0, "mknod needs root")
    data = Ar().member(b"./null", b"3", devmajor=1, devminor=3).member(b"./fifo", b"6").file(b"./su", mode=0o4755).bytes()
    report = tar.scan(io.BytesIO(data), allow_special=True)
    assert report.special == ["./null", "./fifo"]
    tar.extract(tar.Runner(), io.BytesIO(data), sandbox / "dest", report, allow_special=True)
    assert stat.S_ISCHR(os.lstat(sandbox / "dest" / "null").st_mode)
    assert stat.S_ISFIFO(os.lstat(sandbox / "dest" / "fifo").st_mode)
    assert os.stat(sandbox / "dest" / "su").st_mode & stat.S_ISUID


def test_an_unchecked_archive_is_never_extracted(sandbox):
    with pytest.raises(RestoreRefused, match="not checked"):
        tar.extract(tar.Runner(), io.BytesIO(CONTAINED["plain"].bytes()), sandbox / "dest", None)
    assert list((sandbox / "dest").iterdir()) == []


@pytest.mark.parametrize("quoted,name", [
    ('"./a b"', "./a b"), ('"./q\\"x"', './q"x'), ('"./nl\\nx"', "./nl\nx"), ('"./b\\\\s"', "./b\\s"),
    ('"./\\303\\251"', "./é"), ('"./\\377"', "./\udcff"),
])
def test_unquote(quoted, name):
    assert tar.unquote(quoted + " rest") == (name, " rest")

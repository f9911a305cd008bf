"""The restore-side tar scan refuses unsafe archives."""

import io
import stat
import tarfile

import pytest

from snapagent.errors import RestoreRefused
from snapagent.util import tar


def make_tar(*members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for m in members:
            ti = tarfile.TarInfo(m["name"])
            ti.type = m.get("type", tarfile.REGTYPE)
            ti.linkname = m.get("linkname", "")
            ti.mode = m.get("mode", 0o644)
            data = m.get("data", b"")
            ti.size = len(data) if ti.type == tarfile.REGTYPE else 0
            tf.addfile(ti, io.BytesIO(data) if ti.size else None)
    buf.seek(0)
    return buf


def test_plain_archive_passes():
    rep = tar.scan(make_tar({"name": "./a.db", "data": b"x" * 10}, {"name": "./d", "type": tarfile.DIRTYPE}))
    assert rep.members == 2 and rep.bytes == 10 and rep.setid == [] and rep.special == []


@pytest.mark.parametrize("name", ["/etc/passwd", "../escape", "./a/../../escape"])
def test_escaping_names_refused(name):
    with pytest.raises(RestoreRefused, match="outside"):
        tar.scan(make_tar({"name": name, "data": b"x"}))


def test_member_below_archive_symlink_refused():
    t = make_tar({"name": "./link", "type": tarfile.SYMTYPE, "linkname": "/etc"},
                 {"name": "./link/passwd", "data": b"x"})
    with pytest.raises(RestoreRefused, match="below a symlink"):
        tar.scan(t)


def test_hardlink_outside_refused():
    with pytest.raises(RestoreRefused, match="hard link"):
        tar.scan(make_tar({"name": "./h", "type": tarfile.LNKTYPE, "linkname": "../../etc/shadow"}))


def test_devices_need_allow_special():
    t = lambda: make_tar({"name": "./null", "type": tarfile.CHRTYPE})  # noqa: E731
    with pytest.raises(RestoreRefused, match="--allow-special"):
        tar.scan(t())
    assert tar.scan(t(), allow_special=True).special == ["./null"]


def test_setuid_noted():
    rep = tar.scan(make_tar({"name": "./bin/su", "data": b"x", "mode": 0o4755}))
    assert rep.setid == ["bin/su"]
    assert stat.S_ISUID & 0o4755


def test_garbage_refused():
    with pytest.raises(RestoreRefused, match="not a valid tar"):
        tar.scan(io.BytesIO(b"\x01" * 2048))

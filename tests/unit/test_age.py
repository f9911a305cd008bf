"""age pieces without btrfs: recipients, identity files, the manifest's encrypted artifacts, and the
directory target's reader on real pyrage ciphertext (intact, wrong key, truncated, abandoned)."""

from __future__ import annotations

import io
import json
import os
import threading

import pyrage
import pytest

from snapagent import manifest as manifestmod
from snapagent.errors import ExportFailed, TargetFailed, UsageError, VerifyFailed
from snapagent.manifest import ManifestDamaged
from snapagent.targets.directory import DirectoryConfig, DirectoryTarget
from snapagent.targets.streams import VerifyingReader
from snapagent.util import age
from tests.helpers.manifests import SHA, manifest


class _Journal:
    def open(self, *a, **k):
        pass

    def close(self, *a, **k):
        pass


def _identity_file(tmp_path, name="id", mode=0o600):
    key = pyrage.x25519.Identity.generate()
    p = tmp_path / name
    p.write_text(f"# created: now\n# public key: {key.to_public()}\n{key}\n")
    os.chmod(p, mode)
    return p, str(key.to_public()), str(key)


def test_recipients_public_keys_only(tmp_path):
    _, pub, secret = _identity_file(tmp_path)
    assert age.check_recipient(pub) == pub
    with pytest.raises(ValueError, match="secret key") as e:
        age.check_recipient(secret)
    assert secret not in str(e.value)
    for bad in ["age1", pub[:-1], pub.upper(), "ssh-ed25519 AAAA", pub[:-1] + "b"]:
        with pytest.raises(ValueError):
            age.check_recipient(bad)
    with pytest.raises(ValueError, match="needs recipients"):
        DirectoryConfig(path=tmp_path, encryption="age")
    with pytest.raises(ValueError, match="only with encryption"):
        DirectoryConfig(path=tmp_path, recipients=[pub])


def test_identity_file_must_be_private_regular_and_valid(tmp_path):
    p, _, secret = _identity_file(tmp_path)
    ids = age.load_identities(p)
    assert len(ids.keys) == 1 and secret not in repr(ids)
    for mode in (0o640, 0o604, 0o644):
        os.chmod(p, mode)
        with pytest.raises(UsageError, match=f"mode {mode:04o}"):
            age.load_identities(p)
    os.chmod(p, 0o600)
    link = tmp_path / "link"
    link.symlink_to(p)
    with pytest.raises(UsageError, match="cannot be read"):
        age.load_identities(link)
    junk = tmp_path / "junk"
    junk.write_text(secret[:-3] + "xyz\n")
    os.chmod(junk, 0o600)
    with pytest.raises(UsageError, match="line 1 is not an age identity") as e:
        age.load_identities(junk)
    assert secret[:-3] not in str(e.value)
    empty = tmp_path / "empty"
    empty.write_text("# nothing\n")
    os.chmod(empty, 0o600)
    with pytest.raises(UsageError, match="holds no age identity"):
        age.load_identities(empty)
    with pytest.raises(UsageError, match="cannot be read"):
        age.load_identities(tmp_path / "missing")


def test_manifest_encrypted_artifacts_and_older_manifests():
    m = manifest()
    assert "encryption" not in json.loads(manifestmod.dumps(m))["artifacts"][0]  # as before: unchanged bytes
    assert manifestmod.loads(manifestmod.dumps(m)).artifacts[0].encryption == "none"
    art = {**m.artifacts[0].model_dump(), "encryption": "age", "plain_size": 5, "plain_sha256": SHA}
    enc = m.model_copy(update={"artifacts": [manifestmod.Artifact(**art)]})
    back = manifestmod.loads(manifestmod.dumps(enc)).artifacts[0]
    assert (back.encryption, back.plain_size, back.plain_sha256) == ("age", 5, SHA)
    data = json.loads(manifestmod.dumps(enc))
    del data["artifacts"][0]["plain_sha256"]
    data["checksum"] = manifestmod.checksum(data)
    with pytest.raises(ManifestDamaged, match="plain_size and plain_sha256"):
        manifestmod.loads(json.dumps(data).encode())


@pytest.fixture
def stored(tmp_path):
    """One encrypted artifact (3 MiB random + 5 MiB text) written by the directory target."""
    idfile, pub, _ = _identity_file(tmp_path)
    t = DirectoryTarget("local", DirectoryConfig(path=tmp_path / "b", encryption="age", recipients=[pub]))
    w = t.begin("app", "app-20260101T000000Z", _Journal())
    data = os.urandom(3 << 20) + b"log line\n" * (5 << 17)
    art = w.add_artifact("data.tar", io.BytesIO(data))
    return w.tmp / art.name, art, data, age.load_identities(idfile)


def test_reader_decrypts_checks_both_hashes_and_stops_cleanly(stored, tmp_path):
    path, art, data, ids = stored
    assert art.name == "data.tar.zst.age" and art.raw_size == len(data) and art.size == path.stat().st_size
    assert path.read_bytes().startswith(age.HEADER)
    with VerifyingReader(path, art, ids) as r:
        assert r.read() == data
        r.finish()
    with VerifyingReader(path, art, None) as r:  # no key: the ciphertext is still checked
        r.finish()
        with pytest.raises(UsageError, match="--identity FILE"):
            r.read(10)
    before = threading.active_count()
    with VerifyingReader(path, art, ids) as r:
        r.read(1000)  # a consumer that stops early: close ends the decrypting thread
    assert threading.active_count() == before
    other, _, _ = _identity_file(tmp_path, "other")
    with pytest.raises(UsageError, match="none of the given identities"):
        with VerifyingReader(path, art, age.load_identities(other)) as r:
            r.read(10)


def test_reader_refuses_truncated_and_tampered_ciphertext(stored):
    path, art, data, ids = stored
    raw = path.read_bytes()
    path.write_bytes(raw[:-1000])
    with pytest.raises(VerifyFailed, match="size"):
        with VerifyingReader(path, art, None) as r:
            r.finish()
    with pytest.raises(VerifyFailed, match="truncated, tampered"):
        with VerifyingReader(path, art, ids) as r:
            while r.read(1 << 20):
                pass
    flipped = bytearray(raw)
    flipped[len(raw) // 2] ^= 0x40
    path.write_bytes(bytes(flipped))
    with pytest.raises(VerifyFailed, match="sha256 mismatch"):
        with VerifyingReader(path, art, ids) as r:
            r.finish()


def test_a_failing_export_or_disk_keeps_its_own_error(tmp_path):
    _, pub, _ = _identity_file(tmp_path)
    t = DirectoryTarget("local", DirectoryConfig(path=tmp_path / "b", encryption="age", recipients=[pub]))
    w = t.begin("app", "app-20260101T000000Z", _Journal())

    class Broken(io.RawIOBase):
        def readable(self):
            return True

        def readinto(self, b):
            raise OSError(5, "Input/output error")

    with pytest.raises(ExportFailed, match="reading the exported stream failed: Input/output error"):
        w.add_artifact("data.tar", Broken())
    w2 = t.begin("app", "app-20260101T000001Z", _Journal())
    w2.tmp.rmdir()  # the target cannot take the file (root ignores modes)
    with pytest.raises(TargetFailed, match="cannot store data.tar.zst.age"):
        w2.add_artifact("data.tar", io.BytesIO(b"x" * 100))

"""The manifest model: what is read back is validated before any of it becomes a path, the content
carries a checksum of itself, format 1 is still read, and one bad manifest makes one backup
damaged — never the listing."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from snapagent import manifest as M
from snapagent.manifest import ManifestDamaged
from snapagent.plugin.target import Damaged, Stored
from snapagent.targets.directory import DirectoryConfig, DirectoryTarget
from tests.helpers.manifests import manifest, volume

QREC = {"type": "sqlite", "path": "/srv/app/app.db",
        "locations": {"/srv/app/app.db": {"volume": 0, "relpath": "app.db"}}}


def good() -> dict:
    return json.loads(M.dumps(manifest(quiescers=[QREC])))


def resealed(data: dict) -> bytes:
    """``data`` written as a forger would: with a correct checksum of the forged content."""
    data = {k: v for k, v in data.items() if k != "checksum"}
    data["checksum"] = M.checksum(data)
    return json.dumps(data).encode()


def test_round_trip_and_checksum():
    m = manifest(quiescers=[QREC])
    raw = M.dumps(m)
    data = json.loads(raw)
    assert data["format"] == 2 and data["checksum"].startswith("sha256:")
    assert M.loads(raw, expected_id=m.id) == m


def test_bit_rot_and_hand_edits_are_detected():
    data = good()
    data["freeze_window_ms"] = 0.5
    with pytest.raises(ManifestDamaged, match="checksum mismatch"):
        M.loads(json.dumps(data).encode())
    del data["checksum"]
    with pytest.raises(ManifestDamaged, match="no checksum"):
        M.loads(json.dumps(data).encode())


@pytest.mark.parametrize("path,value,why", [
    (("volumes", 0, "label"), "../x", "not a safe file name"),
    (("volumes", 0, "label"), "/etc", "not a safe file name"),
    (("volumes", 0, "label"), ".hidden", "not a safe file name"),
    (("volumes", 0, "label"), "a/b", "not a safe file name"),
    (("volumes", 0, "label"), "-rf", "not a safe file name"),
    (("volumes", 0, "artifact"), "../../etc/shadow", "not a safe file name"),
    (("artifacts", 0, "name"), "a\nb", "not a safe file name"),
    (("quiescers", 0, "locations", "/srv/app/app.db", "relpath"), "../../../etc/passwd", "not a normalised path"),
    (("quiescers", 0, "locations", "/srv/app/app.db", "relpath"), "/etc/passwd", "is absolute"),
    (("quiescers", 0, "locations", "/srv/app/app.db", "relpath"), "a/../../b", "not a normalised path"),
    (("quiescers", 0, "locations", "/srv/app/app.db", "relpath"), "a\x00b", "NUL"),
    (("quiescers", 0, "locations", "/srv/app/app.db", "volume"), 7, "volume 7, which does not exist"),
    (("id",), "other-20261202T050000Z", "not a backup of job"),
    (("id",), "app-../../x", "not a backup id"),
    (("job",), "-app", "not a valid name"),
    (("volumes", 0, "volume"), "a\nb", "line break"),
    (("volumes", 0, "parent"), "app-20261202T050000Z", "not an earlier backup"),
])
def test_forged_names_are_refused_even_with_a_valid_checksum(path, value, why):
    data = good()
    node = data
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    if path[-1] == "parent":
        node["incremental"] = True
    with pytest.raises(ManifestDamaged, match=why):
        M.loads(resealed(data))


def test_incremental_and_parent_go_together():
    for incremental, parent in ((True, None), (False, "app-20261201T050000Z")):
        data = good()
        data["volumes"][0].update(incremental=incremental, parent=parent)
        with pytest.raises(ManifestDamaged, match="incremental export names its parent"):
            M.loads(resealed(data))
    data = good()
    data["volumes"][0].update(incremental=True, parent="app-20261201T050000Z")
    assert M.loads(resealed(data)).volumes[0].incremental
    del data["volumes"][0]["incremental"]  # written before the field existed: derived from parent
    assert M.loads(resealed(data)).volumes[0].incremental


def test_forged_extra_artifact_restore_dir_and_duplicate_labels():
    data = good()
    data["quiescers"][0]["artifacts"] = [{"name": "wal", "artifact": "00-app.tar", "format": "tar",
                                          "restore_dir": "../../tmp"}]
    with pytest.raises(ManifestDamaged, match="restore_dir.*not a safe file name"):
        M.loads(resealed(data))
    data["quiescers"][0]["artifacts"][0]["restore_dir"] = "app"  # the volume's label: both would land there
    with pytest.raises(ManifestDamaged, match="restore_dir 'app' appears twice"):
        M.loads(resealed(data))
    data = good()
    data["volumes"][0]["artifact"] = "99-missing.tar"
    with pytest.raises(ManifestDamaged, match="named but not described"):
        M.loads(resealed(data))


@pytest.mark.parametrize("raw,why", [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "not a JSON object"),
    (b'{"format": 99}', "format 99"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_garbage_is_damaged_not_a_traceback(raw, why):
    with pytest.raises(ManifestDamaged, match=why):
        M.loads(raw)


def test_stored_under_another_id():
    m = manifest()
    with pytest.raises(ManifestDamaged, match="stored as 'app-20261202T060000Z'"):
        M.loads(M.dumps(m), expected_id="app-20261202T060000Z")


def test_format_1_is_read_and_its_driver_facts_move_into_info():
    v1 = {
        "format": 1, "id": "app-20261101T000000Z", "job": "app", "host": "h", "created": "2026-11-01T00:00:00.000Z",
        "completed": "2026-11-01T00:00:01.000Z", "driver": "zfs", "export_format": "send",
        "snapshot_name": "snapagent-app-20261101T000000Z",
        "volumes": [{"volume": "tank/app", "label": "app", "snapshot": "tank/app@snapagent-app-20261101T000000Z",
                     "artifact": "00-app.send.zst", "format": "send", "kept": True, "guid": "123",
                     "createtxg": 7, "parent_snapshot": "tank/app@snapagent-app-20261031T000000Z",
                     "parent": "app-20261031T000000Z"}],
        "quiescers": [], "freeze_window_ms": 3.5, "max_freeze_ms": 10000, "phases_ms": {"export": 1.0},
        "artifacts": [{"name": "00-app.send.zst", "size": 10, "sha256": "a" * 64, "compression": "zstd",
                       "raw_size": 20}],
        "versions": {"snapagent": "0.1.0"},
    }
    m = M.loads(json.dumps(v1).encode(), expected_id="app-20261101T000000Z")
    assert m.format == 1 and m.volumes[0].parent == "app-20261031T000000Z" and m.volumes[0].kept
    assert m.volumes[0].info == {"guid": "123", "createtxg": 7, "parent_snapshot": "tank/app@snapagent-app-20261031T000000Z"}
    v1["volumes"][0]["label"] = "../x"  # format 1 has no checksum, but its names are checked all the same
    with pytest.raises(ManifestDamaged, match="not a safe file name"):
        M.loads(json.dumps(v1).encode())


def test_a_garbled_manifest_damages_one_backup_only(tmp_path):
    target = DirectoryTarget("local", DirectoryConfig(path=tmp_path))
    ids = []
    for hour in (1, 2, 3):
        when = datetime(2026, 12, 2, hour, tzinfo=timezone.utc)
        m = manifest(id=f"app-20261202T0{hour}0000Z", created=when, completed=when)
        d = tmp_path / "app" / m.id
        d.mkdir(parents=True)
        (d / "manifest.json").write_bytes(M.dumps(m))
        ids.append(m.id)
    (tmp_path / "app" / ids[1] / "manifest.json").write_text('{"format": 2, "id": ')
    listed = target.list("app")
    assert [b.id for b in listed] == ids
    assert [type(b) for b in listed] == [Stored, Damaged, Stored]
    assert "not valid JSON" in listed[1].reason
    assert isinstance(target.get(ids[1]), Damaged) and isinstance(target.get(ids[2]), Stored)


def test_directory_names_and_symlinks_are_not_trusted(tmp_path):
    target = DirectoryTarget("local", DirectoryConfig(path=tmp_path))
    m = manifest()
    (tmp_path / "app").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "manifest.json").write_bytes(M.dumps(m))
    (tmp_path / "app" / m.id).symlink_to(tmp_path / "elsewhere")
    (tmp_path / "app" / "not an id").mkdir()
    (tmp_path / "app" / "not an id" / "manifest.json").write_bytes(M.dumps(m))
    reasons = {b.id: b.reason for b in target.list()}
    assert "symlink" in reasons[m.id] and "never writes" in reasons["not an id"]
    assert target.get("../elsewhere") is None


def test_the_manifest_is_the_only_writer(tmp_path):
    """Every field a driver or quiescer hands in must survive a write and a read."""
    m = manifest(volumes=[volume(info={"path": "/x", "guid": "1", "createtxg": 3, "recursive": False,
                                       "snap_percent_max": None})],
                 quiescers=[{**QREC, "checkpoint": {"busy": 0}, "files": ["/srv/app/app.db"]}])
    back = M.loads(M.dumps(m))
    assert back.volumes[0].info["snap_percent_max"] is None
    assert back.quiescers[0].facts()["checkpoint"] == {"busy": 0}
    assert Path(back.quiescers[0].facts()["path"]) == Path("/srv/app/app.db")


def test_delete_disappears_from_the_listing_atomically(tmp_path):
    target = DirectoryTarget("local", DirectoryConfig(path=tmp_path))
    m = manifest()
    d = tmp_path / "app" / m.id
    d.mkdir(parents=True)
    (d / "manifest.json").write_bytes(M.dumps(m))
    assert isinstance(target.get(m.id), Stored)
    target.delete(m.id)
    assert target.get(m.id) is None and target.list() == [] and list((tmp_path / "app").iterdir()) == []


def test_an_io_error_of_the_target_is_one_message(tmp_path, monkeypatch):
    import errno
    import io

    from snapagent.errors import TargetFailed
    from snapagent.journal import Journal

    target = DirectoryTarget("local", DirectoryConfig(path=tmp_path / "b"))
    writer = target.begin("app", "app-20261202T050000Z", Journal.start(tmp_path / "s", "app", "r"))

    def eio(fd):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", eio)
    with pytest.raises(TargetFailed, match="cannot store 00-app.tar.zst .*Input/output error; nothing was stored"):
        writer.add_artifact("00-app.tar", io.BytesIO(b"x" * 100))

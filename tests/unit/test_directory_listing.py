"""The directory target's listing: what is not a backup is skipped, what cannot be trusted is
Damaged, whatever the entry's shape (the fast path reads each manifest with one open/fstat/read)."""

import os

from snapagent import manifest as M
from snapagent.plugin.target import Damaged, Stored
from snapagent.targets.directory import DirectoryConfig, DirectoryTarget
from tests.helpers.manifests import manifest


def test_entries_without_a_manifest_are_not_backups_and_the_rest_is_checked(tmp_path):
    target = DirectoryTarget("local", DirectoryConfig(path=tmp_path))
    m = manifest()
    jd = tmp_path / "app"
    (jd / m.id).mkdir(parents=True)
    (jd / m.id / "manifest.json").write_bytes(M.dumps(m))
    (jd / "app-20261202T060000Z").write_text("a stray file named like a backup")
    (jd / "notes").write_text("x")
    (jd / "app-20261202T070000Z").mkdir()  # no manifest: not a backup
    os.symlink("/nonexistent", jd / "app-20261202T080000Z")
    (jd / "app-20261202T090000Z").mkdir()
    os.symlink("/etc/hostname", jd / "app-20261202T090000Z" / "manifest.json")
    (jd / "app-20261202T100000Z").mkdir()
    (jd / "app-20261202T100000Z" / "manifest.json").mkdir()
    (jd / "app-20261202T110000Z").mkdir()
    (jd / "app-20261202T110000Z" / "manifest.json").write_bytes(b" " * (M.MAX_BYTES + 10))
    listed = {b.id: b for b in target.list()}
    assert isinstance(listed.pop(m.id), Stored) and target.get(m.id).manifest == m
    reasons = {i: b.reason for i, b in listed.items() if isinstance(b, Damaged)}
    assert set(reasons) == set(listed) == {"app-20261202T090000Z", "app-20261202T100000Z", "app-20261202T110000Z"}
    assert "cannot be read" in reasons["app-20261202T090000Z"]  # a symlinked manifest is never followed
    assert "not a regular file" in reasons["app-20261202T100000Z"]
    assert "more than any snapagent writes" in reasons["app-20261202T110000Z"]
    assert target.get("app-20261202T060000Z") is None

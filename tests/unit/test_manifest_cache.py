"""The manifest cache (snapagent/manifestcache.py) under the directory target's listing: a hit
skips validation only for the very bytes validated before; a changed, forged or misplaced manifest
is validated as without a cache; a cache file that is corrupt, foreign, too open or from another
snapagent is ignored and rewritten; a symlinked cache directory is never used."""

from __future__ import annotations

import json
import os
import stat

import pytest

from snapagent import manifest as M
from snapagent import manifestcache
from snapagent.plugin.target import Damaged, Stored
from snapagent.targets.directory import DirectoryConfig, DirectoryTarget
from tests.helpers.manifests import manifest


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A directory target with three backups of job app, a state dir, and a counter of the
    manifests validated (``manifest.loads`` calls)."""
    monkeypatch.setattr(manifestcache, "_CACHES", {})
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    target = DirectoryTarget("local", DirectoryConfig(path=tmp_path / "backups"))
    target.state_dir = state
    ms = [manifest(id=f"app-20261202T0{h}0000Z", freeze_window_ms=float(h)) for h in (5, 6, 7)]
    for m in ms:
        write(target, m)
    calls = []
    real = M.loads
    monkeypatch.setattr(M, "loads", lambda raw, expected_id=None: calls.append(expected_id) or real(raw, expected_id))
    return target, ms, calls, state / "cache" / "manifests.json"


def write(target: DirectoryTarget, m: M.Manifest, name: str | None = None) -> None:
    d = target.cfg.path / m.job / (name or m.id)
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_bytes(M.dumps(m))


def relist(target: DirectoryTarget) -> list[Stored | Damaged]:
    """List as a new process would: the cache file is read again."""
    manifestcache._CACHES.clear()
    return target.list()


def test_a_second_listing_validates_nothing_and_a_lazy_manifest_is_the_same(env):
    target, ms, calls, cache = env
    first = target.list()
    assert len(calls) == 3 and [b.id for b in first] == [m.id for m in ms]
    st = os.stat(cache)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert stat.S_IMODE(os.stat(cache.parent).st_mode) == 0o700
    calls.clear()
    second = relist(target)
    assert calls == [] and [b.id for b in second] == [m.id for m in ms]
    assert [(b.created, b.size, b.summary.freeze_window_ms) for b in second] == \
        [(m.created, m.size, m.freeze_window_ms) for m in ms]
    assert second[0].summary.created_iso == M.iso(ms[0].created) and second[0].summary.completed == ms[0].completed
    assert second[1].manifest == ms[1] and calls == [ms[1].id]  # validated from its bytes when asked for


def test_a_changed_manifest_is_validated_again_and_a_forged_one_is_damaged(env):
    target, ms, calls, _ = env
    target.list()
    write(target, ms[0].model_copy(update={"freeze_window_ms": 99.0}))  # a valid rewrite: other bytes
    path = target.cfg.path / "app" / ms[1].id / "manifest.json"
    path.write_bytes(path.read_bytes().replace(b'"host": "h"', b'"host": "x"'))  # checksum no longer matches
    calls.clear()
    listed = {b.id: b for b in relist(target)}
    assert sorted(calls) == [ms[0].id, ms[1].id]
    assert listed[ms[0].id].summary.freeze_window_ms == 99.0
    assert isinstance(listed[ms[1].id], Damaged) and "checksum mismatch" in listed[ms[1].id].reason
    calls.clear()
    assert isinstance({b.id: b for b in relist(target)}[ms[1].id], Damaged) and calls == [ms[1].id]


def test_cached_bytes_under_another_name_or_job_are_still_refused(env):
    target, ms, calls, _ = env
    target.list()
    write(target, ms[0], name="app-20261202T080000Z")  # the very bytes of a cached manifest, misplaced
    (target.cfg.path / "other" / ms[0].id).mkdir(parents=True)
    (target.cfg.path / "other" / ms[0].id / "manifest.json").write_bytes(M.dumps(ms[0]))
    listed = {os.path.relpath(b.location, target.cfg.path): b for b in relist(target)}
    assert "stored as 'app-20261202T080000Z'" in listed["app/app-20261202T080000Z"].reason
    assert "under job 'other'" in listed[f"other/{ms[0].id}"].reason


@pytest.mark.parametrize("spoil", ["garbage", "foreign owner", "mode 0644", "other snapagent", "bad entry"])
def test_a_cache_that_cannot_be_trusted_is_ignored_and_rewritten(env, spoil):
    target, ms, calls, cache = env
    target.list()
    if spoil == "garbage":
        cache.write_bytes(b"\x00not json")
    elif spoil == "foreign owner":
        os.chown(cache, 4321, 4321)
    elif spoil == "mode 0644":
        cache.chmod(0o644)
    elif spoil == "other snapagent":
        data = json.loads(cache.read_text())
        cache.write_text(json.dumps({**data, "key": "0.0.1 elsewhere"}))
    else:
        data = json.loads(cache.read_text())
        data["entries"] = {k: ["app-20261202T050000Z", "app"] for k in data["entries"]}
        cache.write_text(json.dumps(data))
    calls.clear()
    assert [b.id for b in relist(target) if isinstance(b, Stored)] == [m.id for m in ms]
    assert len(calls) == 3  # every manifest validated again
    st = os.stat(cache)
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (os.geteuid(), 0o600)
    calls.clear()
    relist(target)
    assert calls == []  # rewritten: the next listing hits it


def test_a_too_open_cache_directory_is_repaired_and_its_file_not_trusted(env):
    target, ms, calls, cache = env
    target.list()
    cache.parent.chmod(0o777)
    calls.clear()
    relist(target)
    assert len(calls) == 3 and stat.S_IMODE(os.stat(cache.parent).st_mode) == 0o700


def test_a_symlinked_cache_directory_is_neither_read_nor_written(env, tmp_path):
    target, ms, calls, cache = env
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    cache.parent.symlink_to(elsewhere)
    assert len(relist(target)) == 3 and len(relist(target)) == 3
    assert len(calls) == 6 and list(elsewhere.iterdir()) == []


def test_no_state_dir_no_cache_and_nothing_created(env):
    target, ms, calls, cache = env
    target.state_dir = cache.parent.parent / "absent"
    assert len(relist(target)) == 3 and not target.state_dir.exists()
    target.state_dir = None
    assert len(relist(target)) == 3


def test_the_cache_is_bounded_by_what_listings_see(env, monkeypatch):
    target, ms, calls, cache = env
    monkeypatch.setattr(manifestcache, "KEEP_UNSEEN", 1)
    target.list()
    for m in ms[:2]:
        target.delete(m.id)
    write(target, manifest(id="app-20261202T090000Z"))
    relist(target)
    assert len(json.loads(cache.read_text())["entries"]) == 3  # the 2 listed, the newest unseen one


def test_get_and_a_damaged_manifest_are_never_cached(env):
    target, ms, calls, cache = env
    path = target.cfg.path / "app" / ms[2].id / "manifest.json"
    path.write_bytes(b"{}")
    assert isinstance(target.get(ms[2].id), Damaged)
    assert isinstance(target.get(ms[0].id), Stored)
    entries = json.loads(cache.read_text())["entries"]
    assert [e[0] for e in entries.values()] == [ms[0].id]


def test_a_state_dir_this_user_cannot_enter_is_no_cache(env, monkeypatch):
    target, ms, calls, cache = env

    def denied(path, *a, **kw):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(manifestcache.os, "lstat", denied)
    assert len(relist(target)) == 3 and not cache.exists()

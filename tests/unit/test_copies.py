"""Copies between directory targets and the catalog across several targets: artifacts copied as
stored (never recompressed) and checked, chains completed oldest first, a good copy already
there verified, a damaged source refused with nothing listed in the destination, one listing
row per backup, ``--from`` and the parent preferred from the child's target, and retention on a
copy target never releasing the snapshot the job's own target keeps."""

from __future__ import annotations

import io
import os
from datetime import datetime, timedelta, timezone

import pytest

from snapagent import catalog
from snapagent import config as configmod
from snapagent.copies import copy_backup, missing_links
from snapagent.errors import BackupDamaged, NotFound, UsageError, VerifyFailed
from snapagent.journal import Journal, journals
from snapagent.plugin.target import Damaged, Stored
from snapagent.retention.prune import prune
from snapagent.util.runner import Runner
from tests.helpers.cli import toml_str, write_config
from tests.helpers.manifests import manifest, volume
from tests.unit.test_prune import BaseDriver

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def env(tmp_path):
    """(config, store(days, parent=None, kept=False) -> id written to target ``local``)."""
    extra = "".join(f'[targets.{n}]\ntype = "directory"\npath = {toml_str(tmp_path / n)}\n' for n in ("offsite", "far"))
    path = write_config(tmp_path, '[jobs.app]\ndriver = "btrfs"\nvolumes = ["/srv/app"]\ntarget = "local"\n'
                                  'copy_to = ["offsite"]\n[jobs.app.retention]\nkeep_last = 1\n', extra=extra)
    cfg = configmod.load(path)

    def store(days: int, parent: str | None = None, kept: bool = False, target: str = "local") -> str:
        created = T0 + timedelta(days=days)
        bid = f"app-{created:%Y%m%dT%H%M%SZ}"
        journal = Journal.start(cfg.agent.state_dir, "app", bid)
        w = cfg.target(target).begin("app", bid, journal)
        art = w.add_artifact("00-app.send", io.BytesIO(os.urandom(3000) * 50))
        w.commit(manifest(id=bid, created=created, completed=created, export_format="send", artifacts=[art],
                          volumes=[volume(fmt="send", artifact=art.name, snapshot=f"/srv/app/.snap-{bid}", parent=parent, kept=kept,
                                          incremental=parent is not None)]))
        journal.finish()
        return bid

    return cfg, store


def _files(cfg, target: str, bid: str) -> dict[str, bytes]:
    d = cfg.target(target).cfg.path / "app" / bid
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_a_copy_is_byte_identical_and_listed_once_with_both_targets(env):
    cfg, store = env
    bid = store(0)
    src = catalog.find(cfg, bid)
    assert src.manifest.artifacts[0].compression == "zstd"
    r = copy_backup(cfg, src, cfg.target("offsite"), Runner())
    assert r.copied == [bid] and not r.present
    assert _files(cfg, "offsite", bid) == _files(cfg, "local", bid)  # stored as is: never recompressed
    rows = catalog.by_backup(cfg)
    assert [[b.target.name for b in row] for row in rows] == [["local", "offsite"]]
    assert [b.target.name for b in catalog.copies(cfg, bid)] == ["local", "offsite"]
    assert catalog.find(cfg, bid, "offsite").target.name == "offsite"
    assert catalog.find(cfg, "app@latest", "offsite").id == bid
    with pytest.raises(UsageError, match="--from: unknown target 'nope'"):
        catalog.find(cfg, bid, "nope")
    with pytest.raises(NotFound, match="in target 'far'"):
        catalog.find(cfg, bid, "far")
    # a second copy finds it there, verifies it and writes nothing
    assert copy_backup(cfg, src, cfg.target("offsite"), Runner()).present
    assert list(journals(cfg.agent.state_dir)) == []


def test_a_damaged_source_is_refused_and_leaves_nothing_in_the_destination(env):
    cfg, store = env
    bid = store(0)
    art = cfg.target("local").cfg.path / "app" / bid / "00-app.send.zst"
    data = bytearray(art.read_bytes())
    data[100] ^= 0xFF
    art.write_bytes(bytes(data))
    with pytest.raises(VerifyFailed, match="sha256 mismatch"):
        copy_backup(cfg, catalog.find(cfg, bid), cfg.target("offsite"), Runner())
    assert cfg.target("offsite").list() == []
    assert [p.name for p in (cfg.target("offsite").cfg.path / "app").iterdir()] == []  # the partial is gone
    assert list(journals(cfg.agent.state_dir)) == []


def test_a_damaged_copy_in_the_destination_is_named_not_overwritten(env):
    cfg, store = env
    bid = store(0)
    copy_backup(cfg, catalog.find(cfg, bid), cfg.target("offsite"), Runner())
    (cfg.target("offsite").cfg.path / "app" / bid / "00-app.send.zst").write_bytes(b"rot")
    with pytest.raises(VerifyFailed, match="target 'offsite' already holds backup .* fails verification"):
        copy_backup(cfg, catalog.find(cfg, bid), cfg.target("offsite"), Runner())
    (cfg.target("offsite").cfg.path / "app" / bid / "manifest.json").write_text("{")
    with pytest.raises(BackupDamaged, match="already holds backup .*, damaged"):
        copy_backup(cfg, catalog.find(cfg, bid), cfg.target("offsite"), Runner())
    rows = catalog.by_backup(cfg)
    assert [[type(b) for b in row] for row in rows] == [[Stored, Damaged]]


def test_an_incremental_is_copied_after_the_links_it_lacks_oldest_first(env):
    cfg, store = env
    b1 = store(0)
    b2 = store(1, parent=b1)
    b3 = store(2, parent=b2)
    dest = cfg.target("offsite")
    assert [b.id for b in missing_links(cfg, catalog.find(cfg, b3), dest)] == [b1, b2]
    r = copy_backup(cfg, catalog.find(cfg, b3), dest, Runner())
    assert r.copied == [b1, b2, b3]
    assert [b.id for b in dest.list("app")] == [b1, b2, b3]
    # a damaged link in the destination is named, never built upon
    b4 = store(3, parent=b3)
    (dest.cfg.path / "app" / b3 / "manifest.json").write_text("{")
    with pytest.raises(BackupDamaged, match=f"incremental on {b3}, whose copy in target 'offsite' is damaged"):
        copy_backup(cfg, catalog.find(cfg, b4), dest, Runner())
    assert dest.get(b4) is None
    # read from offsite, the chain's links come from offsite too (b2's, whose copy is good)
    links = catalog.chain(cfg, catalog.find(cfg, b2, "offsite"), catalog.find(cfg, b2).manifest.volumes[0])
    assert [(b.id, b.target.name) for b, _ in links] == [(b1, "offsite"), (b2, "offsite")]


def test_retention_on_a_copy_target_never_releases_the_kept_snapshot(env, monkeypatch):
    cfg, store = env
    BaseDriver.released, BaseDriver.fail = [], False  # the job's driver as prune sees it
    monkeypatch.setattr(cfg.jobs["app"], "driver_cls", BaseDriver)
    b1 = store(0, kept=True)
    copy_backup(cfg, catalog.find(cfg, b1), cfg.target("offsite"), Runner())
    b2 = store(1, kept=True)
    copy_backup(cfg, catalog.find(cfg, b2), cfg.target("offsite"), Runner())
    done = prune(cfg, cfg.jobs["app"], Runner(), only={"offsite"})
    assert [(r.target, r.removed) for r in done] == [("offsite", [b1])]
    assert BaseDriver.released == []  # the backup in `local` still owns its snapshot
    assert [b.id for b in cfg.target("local").list("app")] == [b1, b2]
    done = prune(cfg, cfg.jobs["app"], Runner())
    assert [(r.target, r.removed) for r in done] == [("local", [b1]), ("offsite", [])]
    assert BaseDriver.released == [f"/srv/app/.snap-{b1}"]

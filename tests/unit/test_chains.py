"""Incremental chains: when the next backup continues a chain and when it starts a new one with a
full (full_every as a count and as an age, fallbacks with the reason), the chain checks of
verify/restore naming the ids involved — over a real directory target holding real manifests."""

from __future__ import annotations

import io
import json
import shutil
import tomllib
from datetime import datetime, timedelta, timezone

import pytest

from snapagent import chains
from snapagent.config import parse
from snapagent.errors import BackupDamaged, NotFound
from snapagent.manifest import Manifest
from snapagent.restore import check
from tests.helpers.fakerunner import FakeRunner

T0 = datetime(2026, 11, 1, 3, 0, tzinfo=timezone.utc)
VOL = "/srv/app"


class _Journal:
    def open(self, *a, **k): pass
    def close(self, *a, **k): pass


def config(tmp_path, full_every: str = ""):
    text = (f'[agent]\nstate_dir = {json.dumps(str(tmp_path / "state"))}\n'
            f'[targets.local]\ntype = "directory"\npath = {json.dumps(str(tmp_path / "backups"))}\n'
            f'[jobs.app]\ndriver = "btrfs"\nvolumes = ["{VOL}"]\ntarget = "local"\nexport = "send"\n'
            f'mode = "incremental"\n{full_every}\n')
    return parse(tomllib.loads(text), tmp_path / "c.toml")


def store(cfg, when: datetime, parent: str | None = None, kept: bool = True) -> str:
    """Store a backup of job app taken at ``when`` (incremental on ``parent``); return its id."""
    bid = f"app-{when:%Y%m%dT%H%M%SZ}"
    w = cfg.target("local").begin("app", bid, _Journal())
    art = w.add_artifact("00-app.send", io.BytesIO(f"stream of {bid}".encode()))
    w.commit(Manifest.model_validate(dict(
        id=bid, job="app", host="h", created=when, completed=when, driver="btrfs", export_format="send",
        snapshot_name=f"snapagent-{bid}", artifacts=[art], freeze_window_ms=1, max_freeze_ms=10000,
        volumes=[dict(volume=VOL, label="app", snapshot=f"{VOL}/.snapagent-snapshots/snapagent-{bid}",
                      artifact=art.name, format="send", kept=kept, parent=parent, incremental=parent is not None,
                      info={"uuid": "u-" + bid})])))
    return bid


def chain_of(cfg, n_incrementals: int, start: datetime = T0) -> list[str]:
    ids = [store(cfg, start)]
    for i in range(n_incrementals):
        ids.append(store(cfg, start + timedelta(hours=i + 1), parent=ids[-1]))
    return ids


def choose(cfg, now: datetime = T0 + timedelta(days=1)) -> chains.BaseChoice:
    job = cfg.job("app")
    return chains.choose_base(cfg, job, cfg.target("local").list("app"), now)


def test_first_backup_is_full_without_warning(tmp_path):
    c = choose(config(tmp_path))
    assert c.prev is None and not c.warning and c.why_full == "the job has no backup yet"


@pytest.mark.parametrize("n, full", [(0, False), (1, False), (2, True), (3, True)])
def test_full_every_count_counts_the_incrementals_of_the_chain(tmp_path, n, full):
    cfg = config(tmp_path, "full_every = 2")
    ids = chain_of(cfg, n)
    c = choose(cfg)
    if full:
        assert c.prev is None and not c.warning
        assert c.why_full == f"full_every = 2: the chain of {ids[-1]} holds {n} incremental(s)"
    else:
        assert c.prev is not None and c.prev.id == ids[-1]


def test_full_every_counts_from_the_newest_full(tmp_path):
    cfg = config(tmp_path, "full_every = 2")
    old = chain_of(cfg, 2)
    new_full = store(cfg, T0 + timedelta(hours=5))  # the chain restarted
    store(cfg, T0 + timedelta(hours=6), parent=new_full)
    assert choose(cfg).prev.id != old[-1]
    assert choose(cfg).prev.id == f"app-{T0 + timedelta(hours=6):%Y%m%dT%H%M%SZ}"


@pytest.mark.parametrize("age, full", [(timedelta(days=6, hours=23), False), (timedelta(days=7), True),
                                       (timedelta(days=30), True)])
def test_full_every_age_looks_at_the_chains_full(tmp_path, age, full):
    cfg = config(tmp_path, 'full_every = "7d"')
    ids = chain_of(cfg, 3)
    c = choose(cfg, now=T0 + age)
    if full:
        assert c.prev is None and not c.warning and f"the chain's full backup {ids[0]} is" in c.why_full
        assert c.why_full.startswith(f"full_every = 7d: the chain's full backup {ids[0]} is {age.days}d old")
    else:
        assert c.prev.id == ids[-1]  # the newest incremental is hours old, its full almost 7 days


def test_newest_backup_taken_in_full_mode_starts_a_chain_quietly(tmp_path):
    cfg = config(tmp_path)
    bid = store(cfg, T0, kept=False)
    c = choose(cfg)
    assert c.prev is None and not c.warning and c.why_full == \
        f"the newest backup {bid} kept no base of '{VOL}' (it was taken in mode \"full\")"


def test_damaged_newest_backup_falls_back_to_a_full_with_a_warning(tmp_path):
    cfg = config(tmp_path)
    ids = chain_of(cfg, 1)
    mf = tmp_path / "backups" / "app" / ids[-1] / "manifest.json"
    mf.write_text(mf.read_text().replace('"h"', '"x"'))
    c = choose(cfg)
    assert c.prev is None and c.warning
    assert c.why_full.startswith(f"the newest backup {ids[-1]} is damaged (manifest checksum mismatch")


def test_missing_middle_link_falls_back_to_a_full_naming_both_ids(tmp_path):
    cfg = config(tmp_path)
    ids = chain_of(cfg, 2)
    shutil.rmtree(tmp_path / "backups" / "app" / ids[1])
    c = choose(cfg)
    assert c.prev is None and c.warning
    assert c.why_full == (f"the chain of {ids[2]} is broken: backup {ids[2]} is incremental on {ids[1]}, "
                          f"which is missing from every target; {ids[2]} cannot be restored")


def test_missing_artifact_of_a_link_falls_back_to_a_full(tmp_path):
    cfg = config(tmp_path)
    ids = chain_of(cfg, 2)
    (tmp_path / "backups" / "app" / ids[0] / "00-app.send.zst").unlink()
    c = choose(cfg)
    assert c.prev is None and c.warning and f"artifact 00-app.send.zst of {ids[0]} is missing" in c.why_full


def test_restore_check_names_the_backup_and_its_damaged_parent(tmp_path):
    cfg = config(tmp_path)
    ids = chain_of(cfg, 2)
    target = cfg.target("local")
    art = tmp_path / "backups" / "app" / ids[1] / "00-app.send.zst"
    data = bytearray(art.read_bytes())
    data[-1] ^= 0xFF
    art.write_bytes(bytes(data))
    with pytest.raises(Exception) as ei:
        check(cfg, FakeRunner(), target.get(ids[2]))
    msg = str(ei.value)
    assert "\n" not in msg and ei.value.exit_code == 1
    assert msg.startswith(f"restore refused, nothing was written: backup {ids[2]} is incremental on {ids[1]}, "
                          "whose artifact 00-app.send.zst")
    # a damaged manifest of a middle link
    mf = tmp_path / "backups" / "app" / ids[1] / "manifest.json"
    mf.write_text(mf.read_text().replace('"h"', '"x"'))
    with pytest.raises(BackupDamaged, match=f"^backup {ids[2]} is incremental on {ids[1]}, which is damaged: "):
        check(cfg, FakeRunner(), target.get(ids[2]))
    shutil.rmtree(tmp_path / "backups" / "app" / ids[0])
    with pytest.raises(BackupDamaged):  # the nearer problem is reported first
        check(cfg, FakeRunner(), target.get(ids[2]))
    shutil.rmtree(tmp_path / "backups" / "app" / ids[1])
    with pytest.raises(NotFound, match=f"^backup {ids[2]} is incremental on {ids[1]}, which is missing"):
        check(cfg, FakeRunner(), target.get(ids[2]))


def test_a_missing_link_deeper_in_the_chain_names_who_needs_it(tmp_path):
    cfg = config(tmp_path)
    ids = chain_of(cfg, 2)
    shutil.rmtree(tmp_path / "backups" / "app" / ids[0])
    with pytest.raises(NotFound) as ei:
        chains.check_links(cfg, cfg.target("local").get(ids[2]))
    assert str(ei.value) == (f"backup {ids[1]} (in the chain of {ids[2]}) is incremental on {ids[0]}, "
                             f"which is missing from every target; {ids[2]} cannot be restored")


def test_check_links_checks_every_earlier_link(tmp_path):
    cfg = config(tmp_path)
    ids = chain_of(cfg, 3)
    found, results = chains.check_links(cfg, cfg.target("local").get(ids[3]))
    assert [link.id for link, _ in found[VOL]] == ids
    assert [(r.link, r.name, r.ok) for r in results] == [(i, "00-app.send.zst", True) for i in ids[:3]]

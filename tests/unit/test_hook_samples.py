"""Every sample in etc/hooks/ parses as it is (the system tests also run each one)."""

import tomllib
from pathlib import Path

import pytest

from snapagent import config as configmod

SAMPLES = sorted((Path(__file__).resolve().parents[2] / "etc" / "hooks").glob("*.toml"))


def test_there_are_samples():
    assert {p.name for p in SAMPLES} >= {"murodb.toml", "rstmdb.toml", "fsfreeze.toml"}


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_sample_parses(path):
    cfg = configmod.parse(tomllib.loads(path.read_text()), path)
    types = {cls.type for job in cfg.jobs.values() for cls, _ in job.quiescers}
    assert types & {"command", "fsfreeze"}

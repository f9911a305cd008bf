"""Capability probes: a test whose prerequisite is missing skips with the reason printed, and fails
instead under CI=true (CI must run every tier)."""

from __future__ import annotations

import os
import sys

import pytest

IN_CI = os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}
IN_VM = os.environ.get("SNAPAGENT_IN_VM") == "1"


def need(condition: bool, reason: str) -> None:
    """Skip (printing why) when ``condition`` is false; under CI=true fail instead."""
    if condition:
        return
    print(f"\nSKIP: {reason}", file=sys.stderr)
    if IN_CI:
        pytest.fail(f"CI must run every tier, but: {reason}")
    pytest.skip(reason)

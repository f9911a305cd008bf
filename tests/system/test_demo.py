"""The README's quick-start demo runs end to end (scripts/demo.sh = bootstrap + scripts/demo.py)."""

import subprocess
import sys

import pytest

from tests.helpers.cli import ROOT

pytestmark = [pytest.mark.root, pytest.mark.btrfs]


def test_quickstart_demo(tmp_path, btrfs_root):  # btrfs_root: same prerequisites (root, btrfs-progs)
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--dir", str(tmp_path / "demo")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "DEMO OK" in out and "missing: 0" in out and "integrity_check:        ok" in out
    for cmd in ("backup demo", "verify", "restore", "drill", "PASS sqlite"):
        assert cmd in out
    assert not (tmp_path / "demo" / "mnt" / "app").exists(), "the demo volume should be unmounted"

"""The host's door to the VM tier: boot the test VM once and run every test marked vm inside it.

Skips (with the reason, and how to fix it) where the VM cannot be booted; with CI=true it fails
instead, because CI must run every tier.
"""

from __future__ import annotations

import os

import pytest

from tests.vm import harness
from tests.vm.vmtools import IN_VM

pytestmark = pytest.mark.skipif(IN_VM, reason="the host's launcher of the VM tier; not run inside the VM")


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def test_vm_tier(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        image = harness.find_image()
    except harness.VMUnavailable as exc:
        image, reason = None, f"VM tier cannot run: {exc}; {harness.SETUP_HINT}"
    if image is None:
        if _in_ci():
            pytest.fail(f"{reason} (CI=true: the VM tier is required)", pytrace=False)
        pytest.skip(reason)

    try:
        result = harness.run_tier(image, harness.default_pytest_args(), **harness.settings_from_env())
    except harness.VMRunError as exc:
        result, error = None, str(exc)
    if result is None:
        pytest.fail(error, pytrace=False)

    with capsys.disabled():
        print(f"\n----- VM tier ({image.kver}, zfs {image.zfs_version}): guest pytest output -----")
        print(result.pytest_log.rstrip())
        print(f"----- guest exit code {result.exit_code}, {result.duration:.0f} s; "
              f"logs in {result.results_dir} -----")

    counts = result.counts
    summary = (f"guest pytest exit code {result.exit_code}; {counts['passed']} passed, "
               f"{counts['failures']} failed, {counts['errors']} errors, {counts['skipped']} skipped; "
               f"logs in {result.results_dir} (pytest.log, junit.xml, serial.log)")
    details = "\n\n".join(result.failures) or "\n".join(result.pytest_log.splitlines()[-40:])
    if result.exit_code != 0:
        pytest.fail(f"{summary}\n\n{details}", pytrace=False)
    if counts["passed"] == 0:
        pytest.fail(f"no VM test passed in the guest: {summary}\n\n{details}", pytrace=False)

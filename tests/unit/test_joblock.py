"""The job lock names its holder (pid and start time) and is taken again once released."""

import os
import re

import pytest

from snapagent.errors import JobLocked, PreflightFailed
from snapagent.joblock import JobLock


def test_a_held_lock_names_the_holders_pid_and_start_time(tmp_path):
    first = JobLock(tmp_path / "state", "db-1.x").take()
    second = JobLock(tmp_path / "state", "db-1.x")  # another open file: flock refuses it as it would another process
    with pytest.raises(JobLocked) as ei:
        second.take()
    assert re.match(rf"job 'db-1\.x' is already running \(pid {os.getpid()}, started \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ\); "
                    rf"lock {re.escape(str(tmp_path))}", str(ei.value))
    assert ei.value.exit_code == 1
    first.release()
    with second:
        assert (tmp_path / "state" / "locks" / "db-1.x.lock").read_text().startswith(f"{os.getpid()} ")
    assert oct((tmp_path / "state").stat().st_mode & 0o777) == "0o700"


def test_a_state_dir_that_cannot_be_created_is_a_preflight_failure(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(PreflightFailed, match="state_dir .* is not writable"):
        JobLock(tmp_path / "file" / "state", "app").take()

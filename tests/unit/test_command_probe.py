"""The probe's pieces without processes: placeholders replaced only as whole argv elements, the
config check of placeholders, the message lines, and what a drill that probed nothing says."""

from __future__ import annotations

from pathlib import Path

import pytest

from snapagent.drill import nothing_probed
from snapagent.manifest import QuiescerRecord
from snapagent.plugin.quiescer import DrillScene
from snapagent.quiesce.command_probe import environment, last_lines, placeholder_problems, substitute

VOL = "/srv/a b;$(x) -n"
SCENE = DrillScene("j-20260101T000000Z", "j", Path("/scratch/-d ;$x"),
                   [(VOL, Path("/scratch/-d ;$x/a_b")), ("tank/db", Path("/scratch/-d ;$x/db"))])


def test_placeholders_are_whole_elements_only():
    argv = ["check", "{restored}", f"{{restored:{VOL}}}", "{restored:tank/db}", f"--dir={{restored:{VOL}}}",
            "{restored}/x", "{RESTORED}"]
    assert substitute(argv, SCENE) == ["check", "/scratch/-d ;$x", "/scratch/-d ;$x/a_b", "/scratch/-d ;$x/db",
                                       f"--dir={{restored:{VOL}}}", "{restored}/x", "{RESTORED}"]
    with pytest.raises(ValueError, match="names no volume of backup j-20260101T000000Z"):
        substitute(["{restored:/srv/other}"], SCENE)


def test_placeholder_problems_name_the_element_and_the_volumes():
    assert placeholder_problems(["x", "{restored}", f"{{restored:{VOL}}}"], [VOL]) == []
    (p,) = placeholder_problems(["{restored:/srv/other}"], [VOL])
    assert "'{restored:/srv/other}' names no volume of the job" in p and repr(VOL) in p


def test_environment_lists_volumes_in_order():
    env = environment("j", SCENE)
    assert env["SNAPAGENT_PHASE"] == "probe" and env["SNAPAGENT_RESTORE_DIR"] == "/scratch/-d ;$x"
    assert env["SNAPAGENT_VOLUMES"].split("\n") == [VOL, "tank/db"]
    assert env["SNAPAGENT_RESTORED_VOLUMES"].split("\n") == ["/scratch/-d ;$x/a_b", "/scratch/-d ;$x/db"]


def test_last_lines_skip_blanks_and_cut_long_ones():
    assert last_lines("a\n\n  \nb\nc\n", 2) == ["b", "c"]
    (long,) = last_lines("x" * 1000)
    assert len(long) == 301 and long.endswith("…")


def test_nothing_probed_says_what_to_add():
    hook, freeze = QuiescerRecord(type="command", name="store"), QuiescerRecord(type="fsfreeze")
    assert nothing_probed("j", [freeze, hook], [{"name": "fsfreeze", "quiesce": 0}, {"name": "command store", "quiesce": 1}]) \
        == "nothing was probed: add `probe` to the command hook of job j (jobs.j.quiesce[1])"
    assert "job j has no quiescer with a probe (fsfreeze)" in nothing_probed("j", [freeze], [{"name": "fsfreeze", "quiesce": 0}])
    assert "job j has no quiescer;" in nothing_probed("j", [], [])
    assert "job j is not in the config" in nothing_probed("j", [hook], [{"name": "command store", "quiesce": 0}], True)

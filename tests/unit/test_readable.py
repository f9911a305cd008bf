"""Records as readable lines (``show``, ``drill``): key: value, nested indented, never a repr."""

from snapagent.cli.readable import lines


def test_record_as_lines():
    rec = {"name": "store", "consistency": "application", "ok": True, "gone": None,
           "pre": {"argv": ["/usr/bin/tool", "a b", "$(x)"], "rc": 0, "duration_ms": 12.5,
                   "stdout": "compacted\nwal_offset=7\n", "values": {"wal_offset": "7"}},
           "stdout_lines": ["x" * 50, "y" * 50], "figures": [1, 2], "artifacts": [{"name": "wal"}, {"name": "b"}],
           "evil": "a\x1b[2Jb", "one": "1\n"}
    assert lines(rec, 1) == [
        "  name: store", "  consistency: application", "  ok: yes", "  gone: -",
        "  pre:", "    argv: /usr/bin/tool 'a b' '$(x)'", "    rc: 0", "    duration_ms: 12.5",
        "    stdout:", "      compacted", "      wal_offset=7", "    values:", "      wal_offset: 7",
        "  stdout_lines:", f"    - {'x' * 50}", f"    - {'y' * 50}", "  figures: 1, 2",
        "  artifacts:", "    - name: wal", "    - name: b", "  evil: a\\x1b[2Jb", "  one: 1"]

import pytest

from snapagent.util.durations import format_duration, parse_duration


@pytest.mark.parametrize("text,seconds", [("10s", 10), ("500ms", 0.5), ("5m", 300), ("1.5h", 5400), ("7d", 604800), (3, 3), ("2", 2)])
def test_parse(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "ten", "10 parsecs", "-1s", "0s", True, None, "1e3s"])
def test_reject(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format():
    assert format_duration(0.85) == "850ms"
    assert format_duration(12.34) == "12.3s"
    assert format_duration(245) == "4m05s"

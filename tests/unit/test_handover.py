"""The hand-over of restored databases: one shape for every database (issue 12), the helpers
behind it (owner, claim, free port, run directory), restore's text block, and the documentation
each hand-over points to."""

from __future__ import annotations

import json
import os
import pwd
import re
import shlex
import socket
import sqlite3
from pathlib import Path

import pytest

from snapagent.cli.output import handover_lines
from snapagent.held import Held
from snapagent.manifest import QuiescerRecord
from snapagent.plugin import handover
from snapagent.plugin.quiescer import Handover, RestoreContext
from snapagent.quiesce.mysql import restore as my_restore
from snapagent.quiesce.postgresql import restore as pg_restore
from snapagent.quiesce.sqlite import SqliteQuiescer
from snapagent.restore import database_entry
from tests.helpers.cli import ROOT
from tests.helpers.fakerunner import FakeRunner

KEYS = ["kind", "data_dir", "owner", "port", "socket", "start", "check", "stop", "put_in_place", "files", "notes",
        "details"]


def test_every_handover_has_the_same_keys():
    assert list(Handover("x", "/d").as_dict()) == KEYS
    assert json.loads(json.dumps(Handover("x", "/d", start=["a b"]).as_dict()))["start"] == ["a b"]


def test_free_port_skips_busy_and_avoided_ports():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        taken = busy.getsockname()[1]
        assert handover.free_port(taken, avoid=(taken + 1,)) >= taken + 2
    assert handover.free_port(5432, avoid=(5432, 5433)) >= 5434


def test_resolve_owner_by_name_then_number_then_default(tmp_path):
    f = tmp_path / "f"
    f.write_text("")
    os.chown(f, 0, 0)
    nobody = pwd.getpwnam("nobody")
    assert handover.resolve_owner({"user": "nobody", "uid": 1}, f, "root")[1] == nobody.pw_uid  # by name
    assert handover.resolve_owner({"user": None, "uid": 4242, "gid": 4243}, f, "root") == ("4242", 4242, 4243)
    assert handover.resolve_owner(None, f, "nobody") == ("nobody", nobody.pw_uid, nobody.pw_gid)  # root's: the default
    os.chown(f, nobody.pw_uid, nobody.pw_gid)
    assert handover.resolve_owner(None, f, "root")[0] == "nobody"  # an older backup: the restored file's owner
    with pytest.raises(KeyError):
        handover.resolve_owner({"user": "no-such-user-here", "uid": 4242}, tmp_path, "no-such-user-either")


def test_claim_gives_everything_never_following_symlinks(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "f").write_text("x")
    outside = tmp_path / "outside"
    outside.write_text("")
    os.symlink(outside, d / "link")
    assert handover.claim(d, 4242, 4243) == 4
    assert {os.lstat(p).st_uid for p in (d, d / "sub", d / "sub" / "f", d / "link")} == {4242}
    assert os.stat(outside).st_uid != 4242
    assert handover.claim(d, 4242, 4243) == 0


def test_text_block_is_pasteable():
    h = Handover("postgresql", "/r/a b", owner="postgres", port=5440, socket="/r/.s", put_in_place="docs/x.md#y",
                 start=["runuser", "-u", "postgres", "--", "/bin/pg_ctl", "-D", "/r/a b", "-o", "-c port=5440 -c x='/r'"],
                 check=["psql", "-c", "SELECT 1"], stop=["pg_ctl", "stop"], notes=["n1"])
    lines = handover_lines({"type": "postgresql", "restored": "/r/a b", "handover": h.as_dict()})
    assert lines[0] == "  postgresql database: /r/a b"
    start = next(ln for ln in lines if ln.startswith("    start:"))
    assert shlex.split(start.split(":", 1)[1]) == h.start  # paste it: the same argv
    assert "    listens:  port 5440 on 127.0.0.1 (free now), socket /r/.s" in lines
    assert "    in place: docs/x.md#y" in lines and "    note:     n1" in lines


def test_a_command_hook_says_it_hands_nothing_over():
    q = QuiescerRecord(type="command")
    entry = database_entry(q, lambda live: Path(live), None)
    assert entry == {"type": "command", "live": None, "restored": None, "locations": {}, "handover": None}
    (line,) = handover_lines(entry)
    assert line.startswith("  command: no database hand-over")


def test_one_entry_per_database_not_per_directory():
    """pg_wal and tablespaces are places of one database: one entry, its first place first (issue 12)."""
    q = QuiescerRecord(type="postgresql", locations={"/live/pgdata": {"volume": 0, "relpath": "pgdata"},
                                                     "/live/wal": {"volume": 1, "relpath": "wal"}})
    entry = database_entry(q, lambda live: Path("/dest") / Path(live).name, Handover("postgresql", "/dest/pgdata"))
    assert (entry["live"], entry["restored"]) == ("/live/pgdata", "/dest/pgdata")
    assert entry["locations"] == {"/live/pgdata": "/dest/pgdata", "/live/wal": "/dest/wal"}
    assert entry["handover"]["kind"] == "postgresql"


def test_sqlite_handover_gives_the_files_back(tmp_path):
    db = tmp_path / "app.db"
    c = sqlite3.connect(db)
    c.execute("CREATE TABLE t (a)")
    c.close()
    (tmp_path / "app.db-wal").write_text("")
    nobody = pwd.getpwnam("nobody")
    rec = {"path": "/live/app.db", "owner": {"user": "nobody", "uid": nobody.pw_uid, "gid": nobody.pw_gid}}
    r = FakeRunner()
    h = SqliteQuiescer.prepare_restore(rec, lambda live: db, RestoreContext(r, None, Held(None, r), dest=tmp_path))
    assert h.files == [str(db), str(db) + "-wal"] and h.owner == "nobody"
    assert {os.stat(f).st_uid for f in h.files} == {nobody.pw_uid}
    assert h.check == ["sqlite3", str(db), "PRAGMA integrity_check"] and h.start == [] and h.port is None


def anchors(doc: Path) -> set[str]:
    return {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in re.findall(r"(?m)^#+ (.+)$", doc.read_text())}


@pytest.mark.parametrize("where", [pg_restore.PUT_IN_PLACE, my_restore.PUT_IN_PLACE,
                                   "docs/databases.md#put-a-restored-sqlite-database-in-place"])
def test_put_in_place_points_at_a_heading(where):
    doc, anchor = where.split("#")
    assert anchor in anchors(ROOT / doc), f"{where}: no such heading"


def test_sqlite_put_in_place_is_the_runbooks():
    """docs/databases.md's SQLite steps are the runbook's lines, which tests/system/test_runbook.py runs."""
    text = (ROOT / "docs" / "databases.md").read_text()
    section = text.split("### Put a restored SQLite database in place", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, re.S).group(1).strip().splitlines()
    assert block and all(ln in (ROOT / "docs" / "runbook.md").read_text().splitlines() for ln in block), block


def test_command_hook_hands_over_what_the_user_configured(tmp_path):
    """A command hook knows no database; with a `handover` table it hands over the user's own
    commands, {data_dir} filled in with the restored place, the data given to `owner`."""
    from pydantic import ValidationError

    from snapagent.plugin.quiescer import QuiesceContext
    from snapagent.quiesce.command import CommandConfig, CommandQuiescer

    cfg = CommandConfig(pre=["true"], handover={"data_dir": "/srv/muro db", "owner": "nobody",
                                                "start": ["muro", "serve", "--dir={data_dir}"],
                                                "check": ["muro", "check", "{data_dir}"], "put_in_place": "wiki/muro"})
    q = CommandQuiescer(cfg, QuiesceContext("j", FakeRunner(), []))
    assert q.files() == [Path("/srv/muro db")] and CommandQuiescer.data_dirs(cfg) == [Path("/srv/muro db")]
    assert q.rec["handover"]["data_dir"] == "/srv/muro db"  # in the manifest: restore needs no config
    restored = tmp_path / "muro db"
    (restored / "sub").mkdir(parents=True)
    r = FakeRunner()
    h = CommandQuiescer.prepare_restore(json.loads(json.dumps(q.rec)), lambda live: restored,
                                        RestoreContext(r, None, Held(None, r), dest=tmp_path))
    assert h.start == ["muro", "serve", f"--dir={restored}"] and h.check == ["muro", "check", str(restored)]
    assert h.stop == [] and h.put_in_place == "wiki/muro" and h.owner == "nobody"
    assert os.stat(restored / "sub").st_uid == pwd.getpwnam("nobody").pw_uid
    for bad in ({"data_dir": "relative"}, {"data_dir": "/x", "start": [""]}):
        with pytest.raises(ValidationError):
            CommandConfig(pre=["true"], handover=bad)
    assert CommandQuiescer.prepare_restore({"type": "command"}, lambda live: restored, None) is None


def test_the_documented_command_handover_parses():
    import tomllib

    from snapagent.quiesce.command import CommandHandover

    section = (ROOT / "docs" / "databases.md").read_text().split("## Command hooks", 1)[1].split("\n## ", 1)[0]
    block = next(b for b in re.findall(r"```toml\n(.*?)```", section, re.S) if ".handover]" in b)
    h = CommandHandover(**tomllib.loads(block)["jobs"]["murodb"]["quiesce"]["handover"])
    assert h.owner == "murodb" and "{data_dir}" in h.check

"""age-encrypted directory target, end to end: real btrfs, a live SQLite writer, pyrage on the data
path and Debian's age CLI for the keys (scripts/setup-age.sh) — and to prove what is stored is
standard age that the reference tool decrypts."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.helpers.caps import need
from tests.helpers.cli import snapagent, toml_str, write_config
from tests.helpers.procwatch import ProcWatch
from tests.helpers.trees import tree
from tests.system import test_btrfs_chain as chain
from tests.system.test_btrfs_sqlite import Writer, backup, job_toml

pytestmark = [pytest.mark.root, pytest.mark.btrfs]
SQLITE_HEADER = b"SQLite format 3\0"
chain_env = chain.chain_env  # the fixture of the btrfs send-chain tests, shared


def keypair(d: Path, name: str = "id") -> tuple[Path, str, str]:
    """Make an age identity file (0600) with age-keygen; return (path, public key, secret key)."""
    need(shutil.which("age-keygen") is not None, "needs age (scripts/setup-age.sh)")
    p = d / name
    subprocess.run(["age-keygen", "-o", str(p)], check=True, capture_output=True)
    os.chmod(p, 0o600)
    pub = subprocess.run(["age-keygen", "-y", str(p)], check=True, capture_output=True, text=True).stdout.strip()
    secret = [ln for ln in p.read_text().splitlines() if ln.startswith("AGE-SECRET-KEY-")][0]
    return p, pub, secret


def encrypted_config(workdir: Path, vol: Path, db: Path, pub: str) -> Path:
    # write_config's `extra` lands right after the `local` target's keys: still that table
    return write_config(workdir, job_toml(vol, db), extra=f"encryption = \"age\"\nrecipients = [{toml_str(pub)}]\n")


@pytest.fixture
def enc(subvol, workdir):
    """A live WAL SQLite database on btrfs, an identity kept outside the target, an encrypted
    config and one backup taken while the writer runs; yields a namespace of all of it."""
    vol = subvol("enc app")
    db = vol / "app.db"
    w = Writer(db, workdir / "acks.txt")
    w.wait_for(100)
    keys = workdir / "keys"
    keys.mkdir(mode=0o700)
    ident, pub, secret = keypair(keys)
    cfg = encrypted_config(workdir, vol, db, pub)
    with ProcWatch(secret) as watch:
        bid = backup(cfg)
    w.stop()

    class NS:
        pass

    ns = NS()
    ns.vol, ns.db, ns.writer, ns.ident, ns.pub, ns.secret, ns.cfg, ns.bid = vol, db, w, ident, pub, secret, cfg, bid
    ns.bdir = workdir / "backups" / "app" / bid
    assert not watch.hits
    yield ns


def _artifacts(bdir: Path) -> list[Path]:
    return sorted(p for p in bdir.iterdir() if p.name != "manifest.json")


def test_stored_as_age_ciphertext_restored_and_drilled_with_the_identity(enc, workdir):
    m = json.loads((enc.bdir / "manifest.json").read_text())
    arts = _artifacts(enc.bdir)
    assert arts and all(p.name.endswith(".age") for p in arts)
    for p in arts:
        assert p.read_bytes()[:22] == b"age-encryption.org/v1\n", p
    for p in (workdir / "backups").rglob("*"):  # no plaintext database anywhere in the target
        if p.is_file():
            assert SQLITE_HEADER not in p.read_bytes(), p
    for a in m["artifacts"]:
        assert a["encryption"] == "age" and len(a["plain_sha256"]) == 64 and a["plain_sha256"] != a["sha256"]
    # the reference CLI decrypts what pyrage wrote: standard age
    plain = subprocess.run(["age", "-d", "-i", str(enc.ident), str(arts[0])], check=True, capture_output=True).stdout
    assert len(plain) == m["artifacts"][0]["plain_size"]

    r = snapagent("verify", enc.bid, config=enc.cfg, check=True)  # no key: ciphertext hashes
    assert "verified" in r.stdout and "with --identity FILE their decrypted content is checked too" in r.stdout
    logs = workdir / "logs.txt"
    dest = workdir / "restored"
    with ProcWatch(enc.secret) as watch:
        outs = [snapagent("-v", "verify", enc.bid, "--identity", str(enc.ident), config=enc.cfg, check=True),
                snapagent("-v", "restore", enc.bid, "--to", str(dest), "--identity", str(enc.ident),
                          config=enc.cfg, check=True),
                snapagent("-v", "--log-format", "json", "drill", enc.bid, "--identity", str(enc.ident),
                          config=enc.cfg, check=True)]
    assert watch.samples > 0 and not watch.hits, watch.hits
    logs.write_text("".join(o.stdout + o.stderr for o in outs))
    assert enc.secret not in logs.read_text()
    assert "decrypted content is checked too" not in outs[0].stdout
    assert "PASS sqlite" in outs[2].stdout

    conn = sqlite3.connect(dest / m["volumes"][0]["label"] / "app.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ids = [i for (i,) in conn.execute("SELECT id FROM t ORDER BY id")]
    conn.close()
    assert ids == list(range(1, len(ids) + 1)) and len(ids) >= 100
    for p in [workdir / "state"] + list((workdir / "state").rglob("*")):  # nothing of the key kept
        if p.is_file():
            assert enc.secret.encode() not in p.read_bytes(), p


def test_without_or_with_a_wrong_or_open_identity_nothing_is_written(enc, workdir):
    dest = workdir / "restored"
    r = snapagent("restore", enc.bid, "--to", str(dest), config=enc.cfg)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--identity FILE" in lines[0] and "Traceback" not in r.stderr
    assert not dest.exists()

    other, _, other_secret = keypair(workdir / "keys", "other")
    r = snapagent("restore", enc.bid, "--to", str(dest), "--identity", str(other), config=enc.cfg)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "none of the given identities is one of its recipients" in lines[0]
    assert other_secret not in r.stderr and not dest.exists()
    r = snapagent("drill", enc.bid, "--identity", str(other), config=enc.cfg)
    assert r.returncode == 2 and "recipients" in r.stderr
    r = snapagent("verify", enc.bid, "--identity", str(other), config=enc.cfg)
    assert r.returncode == 2 and "recipients" in r.stderr

    os.chmod(enc.ident, 0o644)
    r = snapagent("restore", enc.bid, "--to", str(dest), "--identity", str(enc.ident), config=enc.cfg)
    assert r.returncode == 2 and "mode 0644" in r.stderr and "chmod 600" in r.stderr, r.stderr
    assert enc.secret not in r.stderr and not dest.exists()


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_damaged_ciphertext_fails_verify_without_key_and_restore_writes_nothing(enc, workdir, damage):
    art = max(_artifacts(enc.bdir), key=lambda p: p.stat().st_size)
    raw = bytearray(art.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0x01
    else:
        del raw[-1000:]
    art.write_bytes(bytes(raw))
    r = snapagent("verify", enc.bid, config=enc.cfg)
    assert r.returncode == 1 and "VERIFICATION FAILED" in r.stdout and art.name in r.stdout
    dest = workdir / "restored"
    r = snapagent("restore", enc.bid, "--to", str(dest), "--identity", str(enc.ident), config=enc.cfg)
    assert r.returncode == 1, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "nothing was written" in r.stderr
    assert not dest.exists()


def test_recipients_are_checked_when_the_config_is_read(subvol, workdir):
    vol = subvol("cfg")
    _, pub, secret = keypair(workdir)
    for bad, says in [(secret, "secret key"), ("age1notakey", "not an age recipient")]:
        cfg = encrypted_config(workdir, vol, vol / "app.db", bad)
        r = snapagent("config", "check", config=cfg)
        assert r.returncode == 2 and "recipients" in r.stderr and says in r.stderr, r.stderr
        assert secret not in r.stderr and "Traceback" not in r.stderr
    cfg = write_config(workdir, job_toml(vol, None), extra="encryption = \"age\"\n")
    r = snapagent("config", "check", config=cfg)
    assert r.returncode == 2 and "needs recipients" in r.stderr


def test_encrypted_incremental_send_chain(chain_env, workdir, btrfs_root):
    """btrfs send -p chain into an encrypted target: the restore replays every (decrypted) link;
    verify without the key checks the whole chain's ciphertext; a damaged parent stops the
    restore of its child before anything is written."""
    vol, db, writer, dest = chain_env
    _, pub, _ = keypair(workdir)
    cfg = write_config(workdir, chain.job(vol, db), extra=f"encryption = \"age\"\nrecipients = [{toml_str(pub)}]\n")
    m1, _ = chain.backup(cfg)
    (vol / "edit.txt").write_text("version 2\n")
    writer.wait_for(len(writer.acks()) + 30)
    m2, state2 = chain.backup(cfg)
    assert m2["volumes"][0]["parent"] == m1["id"]
    assert all(a["name"].endswith(".age") for m in (m1, m2) for a in m["artifacts"])
    r = snapagent("verify", m2["id"], config=cfg, check=True)
    assert f"{m1['id']}/" in r.stdout and "decrypted content is checked too" in r.stdout
    d = dest()
    summary = json.loads(snapagent("--json", "restore", m2["id"], "--to", str(d), "--identity",
                                   str(workdir / "id"), config=cfg, check=True).stdout)
    assert tree(Path(summary["volumes"][0]["path"])) == state2

    parent_art = workdir / "backups" / "app" / m1["id"] / m1["artifacts"][0]["name"]
    raw = bytearray(parent_art.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    parent_art.write_bytes(bytes(raw))
    d = dest()
    r = snapagent("restore", m2["id"], "--to", str(d), "--identity", str(workdir / "id"), config=cfg)
    assert r.returncode == 1 and m1["id"] in r.stderr and "nothing was written" in r.stderr, r.stderr
    assert not d.exists()

"""Offsite copies end to end, on real servers started on 127.0.0.1: the restic target against an
S3 API (``rclone serve s3``) and an OpenSSH SFTP server, and ``copy_to`` from an age-encrypted
local directory target into a restic repository (REST) — each round trip restores a live SQLite
database's backup and checks it (integrity, every acknowledged row, the drill)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from datetime import datetime
from pathlib import Path

import pytest

from tests.helpers.cli import snapagent, toml_str, write_config
from tests.helpers.restic_remote import Remote, s3_server, sftp_server
from tests.helpers.restic_servers import rest_server
from tests.system import test_btrfs_sqlite as base
from tests.system.test_age_encryption import keypair
from tests.system.test_btrfs_sqlite import Writer
from tests.system.test_restic_target import _restic, secret  # noqa: F401 - _restic: the autouse prerequisite

pytestmark = [pytest.mark.root, pytest.mark.btrfs]
PASSWORD = "offsite password 9c1e"
app = base.app


def restic_init(remote: Remote, pwfile: Path) -> None:
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), **remote.env,
           "RESTIC_REPOSITORY": remote.url, "RESTIC_PASSWORD_FILE": str(pwfile)}
    subprocess.run(["restic", *remote.sftp_options, "init"], env=env, capture_output=True, text=True, check=True,
                   timeout=120)


def check_restored(dest: Path, label: str, w: Writer, locked_at: str) -> None:
    conn = sqlite3.connect(dest / label / "app.db")
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ids = [i for (i,) in conn.execute("SELECT id FROM t ORDER BY id")]
    conn.close()
    assert ids == list(range(1, len(ids) + 1)) and len(ids) >= 100
    before = {i for i, t in w.acks() if t < datetime.fromisoformat(locked_at).timestamp()}
    assert before <= set(ids), "a row acknowledged before the lock is missing"


def job(vol: Path, db: Path, target: str, extra: str = "") -> str:
    return (f'[jobs.app]\ndriver = "btrfs"\nvolumes = [{toml_str(vol)}]\ntarget = "{target}"\n{extra}\n'
            f'[[jobs.app.quiesce]]\ntype = "sqlite"\npath = {toml_str(db)}\n')


@pytest.mark.parametrize("backend", ["s3", "sftp"])
def test_restic_target_round_trip_on_s3_and_sftp(app, workdir, backend):
    vol, db, w = app
    pwfile = secret(workdir / "pw", PASSWORD)
    server = s3_server if backend == "s3" else sftp_server
    with server(workdir / "srv") as remote:
        restic_init(remote, pwfile)
        target = (f'[targets.off]\ntype = "restic"\nrepository = {toml_str(remote.url)}\n'
                  f'password_file = {toml_str(pwfile)}\n')
        if backend == "s3":  # backend credentials in a 0600 environment file, never in the config or argv
            envfile = secret(workdir / "off.env", "".join(f"{k}={v}\n" for k, v in remote.env.items()))
            target += f"environment_file = {toml_str(envfile)}\n"
        else:  # the throwaway key and port reach restic through its sftp.command (no secret in it)
            target += f"options = [{toml_str(remote.sftp_options[1])}]\n"
        cfg = write_config(workdir, job(vol, db, "off"), extra=target)
        bid = snapagent("backup", "app", config=cfg, check=True).stdout.split()[-1]
        w.wait_for(len(w.acks()) + 20)
        assert [b["id"] for b in json.loads(snapagent("--json", "list", config=cfg, check=True).stdout)] == [bid]
        snapagent("verify", bid, config=cfg, check=True)
        m = json.loads(snapagent("--json", "show", bid, config=cfg, check=True).stdout)
        snapagent("restore", bid, "--to", str(workdir / "dest"), config=cfg, check=True)
        check_restored(workdir / "dest", m["volumes"][0]["label"], w, m["quiescers"][0]["locked_at"])
        assert "PASS sqlite" in snapagent("drill", bid, config=cfg, check=True).stdout


def test_copy_to_restic_from_an_encrypted_local_target(app, workdir):
    """The local target is age-encrypted; ``copy_to`` stores its ciphertext in the restic repository
    as it is (never decrypted on the way); a restore from the offsite copy needs the identity."""
    vol, db, w = app
    ident, pub, _ = keypair(workdir)
    pwfile = secret(workdir / "pw", PASSWORD)
    with rest_server(workdir / "srv") as srv:
        restic_init(Remote(url=srv.url, env=dict(srv.env)), pwfile)
        targets = (f'encryption = "age"\nrecipients = [{toml_str(pub)}]\n\n'
                   f'[targets.off]\ntype = "restic"\nrepository = {toml_str(srv.url)}\n'
                   f'password_file = {toml_str(pwfile)}\n')
        cfg = write_config(workdir, job(vol, db, "local", 'copy_to = ["off"]'), extra=targets)
        bid = snapagent("backup", "app", config=cfg, check=True).stdout.split()[-1]
        w.wait_for(len(w.acks()) + 20)
        [row] = json.loads(snapagent("--json", "list", config=cfg, check=True).stdout)
        assert row["id"] == bid and sorted(row["targets"]) == ["local", "off"], row
        m = json.loads(snapagent("--json", "show", bid, config=cfg, check=True).stdout)
        assert all(a["encryption"] == "age" for a in m["artifacts"])
        # the offsite copy's bytes are the local ciphertext: verify checks them without the key
        snapagent("verify", bid, "--from", "off", config=cfg, check=True)
        r = snapagent("restore", bid, "--to", str(workdir / "nokey"), "--from", "off", config=cfg)
        assert r.returncode == 2 and "--identity" in r.stderr and not (workdir / "nokey").exists(), r.stderr
        snapagent("restore", bid, "--to", str(workdir / "dest"), "--from", "off", "--identity", str(ident),
                  config=cfg, check=True)
        check_restored(workdir / "dest", m["volumes"][0]["label"], w, m["quiescers"][0]["locked_at"])


def test_an_unreachable_offsite_target_never_hides_the_local_backups(app, workdir):
    """The offsite server is down: list, verify and restore still work from the local target, with
    one warning naming the target that cannot be read; asking for that target explicitly fails."""
    vol, db, w = app
    pwfile = secret(workdir / "pw", PASSWORD)
    with rest_server(workdir / "srv") as srv:
        restic_init(Remote(url=srv.url, env=dict(srv.env)), pwfile)
        target = (f'[targets.off]\ntype = "restic"\nrepository = {toml_str(srv.url)}\n'
                  f'password_file = {toml_str(pwfile)}\nstall_timeout = 20\n')
        cfg = write_config(workdir, job(vol, db, "local", 'copy_to = ["off"]'), extra=target)
        bid = snapagent("backup", "app", config=cfg, check=True).stdout.split()[-1]
        srv.kill()
        r = snapagent("--json", "list", config=cfg, check=True)
        assert [b["id"] for b in json.loads(r.stdout)] == [bid]
        assert "target 'off' cannot be read" in r.stderr, r.stderr
        snapagent("verify", bid, "--from", "local", config=cfg, check=True)
        snapagent("restore", "app@latest", "--to", str(workdir / "dest"), config=cfg, check=True)
        assert (workdir / "dest").is_dir()
        r = snapagent("verify", bid, "--from", "off", config=cfg)
        assert r.returncode == 1 and len([ln for ln in r.stderr.splitlines() if "error" in ln]) == 1, r.stderr

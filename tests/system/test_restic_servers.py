"""The test backends of tests/helpers/restic_remote.py, proved with the plain restic CLI (Debian 12's
restic 0.14): ``init``, ``backup --stdin``, ``snapshots --json``, ``dump``, ``forget --prune`` and
``check`` against the S3 server (rclone serve s3) and the SFTP server (OpenSSH sshd), both on
127.0.0.1. The password reaches restic through ``RESTIC_PASSWORD_FILE`` only, never argv. The
snapagent restic target's own round trips build on these servers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import psutil
import pytest

from tests.helpers.caps import need
from tests.helpers.restic_remote import Remote, s3_server, sftp_server

SERVERS = {"s3": s3_server, "sftp": sftp_server}
PASSWORD = "correct horse; $battery -staple"


@pytest.fixture(scope="module")
def password_file(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("pass") / "restic.pass"
    p.write_text(PASSWORD + "\n")
    p.chmod(0o600)
    return p


@pytest.fixture(scope="module", params=sorted(SERVERS))
def remote(request, tmp_path_factory):
    need(shutil.which("restic") is not None, "needs restic (run scripts/setup-offsite.sh)")
    with SERVERS[request.param](tmp_path_factory.mktemp(request.param)) as r:
        yield r


def restic(remote: Remote, password_file: Path, *args: str, stdin: bytes | None = None,
           env: dict[str, str] | None = None, extra: list[str] | None = None) -> subprocess.CompletedProcess:
    """Run restic against ``remote`` with the password from its file; return the completed process."""
    full_env = {**os.environ, **remote.env, "RESTIC_PASSWORD_FILE": str(password_file),
                "RESTIC_CACHE_DIR": str(password_file.parent / "cache"), **(env or {})}
    full_env.pop("RESTIC_PASSWORD", None)
    argv = ["restic", "-r", remote.url, *(extra or []), *args]
    assert not any(PASSWORD in a for a in argv)
    return subprocess.run(argv, input=stdin, env=full_env, capture_output=True, timeout=120)


def ok(p: subprocess.CompletedProcess) -> bytes:
    assert p.returncode == 0, p.stderr.decode()[-2000:]
    return p.stdout


def _backup(remote, password_file, data: bytes, backup_id: str) -> dict:
    """``backup --stdin`` as the restic target will: stable filename, host per job, tags; return the
    summary line of ``--json``."""
    out = ok(restic(remote, password_file, "backup", "--stdin", "--stdin-filename", "app/volume.tar.zst",
                    "--host", "snapagent-app", "--tag", "snapagent", "--tag", "job=app", "--tag", f"backup={backup_id}",
                    "--json", stdin=data))
    summary = [json.loads(line) for line in out.decode().splitlines() if '"summary"' in line]
    assert len(summary) == 1, out
    return summary[0]


def test_round_trip(remote, password_file):
    ok(restic(remote, password_file, "init"))
    payloads = {f"2026120{i}T000000Z": os.urandom(300_000 + i) for i in range(1, 4)}
    ids = {}
    for bid, data in payloads.items():
        s = _backup(remote, password_file, data, bid)
        assert s["total_bytes_processed"] == len(data)
        ids[bid] = s["snapshot_id"]

    snaps = json.loads(ok(restic(remote, password_file, "snapshots", "--json", "--tag", "job=app")))
    # restic 0.14's backup summary names the snapshot by its short id only
    assert sorted(s["short_id"] for s in snaps) == sorted(ids.values())
    assert {s["hostname"] for s in snaps} == {"snapagent-app"}
    assert all(s["paths"] == ["/app/volume.tar.zst"] for s in snaps)

    for bid, data in payloads.items():
        got = ok(restic(remote, password_file, "dump", ids[bid], "/app/volume.tar.zst"))
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), bid

    victim = "20261201T000000Z"
    ok(restic(remote, password_file, "forget", "--prune", ids[victim]))
    left = json.loads(ok(restic(remote, password_file, "snapshots", "--json")))
    assert sorted(s["short_id"] for s in left) == sorted(v for k, v in ids.items() if k != victim)
    assert not any(f"backup={victim}" in s.get("tags", []) for s in left)
    ok(restic(remote, password_file, "check", "--read-data"))


def test_wrong_password_is_refused(remote, password_file, tmp_path):
    bad = tmp_path / "wrong.pass"
    bad.write_text("not it\n")
    bad.chmod(0o600)
    if restic(remote, password_file, "cat", "config").returncode != 0:  # alone (-k): not inited yet
        ok(restic(remote, password_file, "init"))
    p = restic(remote, bad, "snapshots")
    assert p.returncode != 0
    assert b"wrong password" in p.stderr


def test_s3_needs_its_key(tmp_path, password_file):
    need(shutil.which("restic") is not None, "needs restic (run scripts/setup-offsite.sh)")
    with s3_server(tmp_path) as r:
        wrong = Remote(r.url, {**r.env, "AWS_SECRET_ACCESS_KEY": "0" * 40})
        p = restic(wrong, password_file, "init")
        assert p.returncode != 0
        assert not (tmp_path / "s3" / "bucket").exists()
        ok(restic(r, password_file, "init"))
        assert (tmp_path / "s3" / "bucket" / "repo" / "config").exists()


def test_sftp_by_sftp_command_option(tmp_path, password_file):
    """restic's ``-o sftp.command=…`` reaches the server without the PATH of ``env``."""
    need(shutil.which("restic") is not None, "needs restic (run scripts/setup-offsite.sh)")
    with sftp_server(tmp_path) as r:
        plain = Remote(r.url, {})
        ok(restic(plain, password_file, "init", extra=r.sftp_options))
        s = _backup(Remote(r.url, r.env), password_file, b"hello", "20261202T000000Z")
        snaps = json.loads(ok(restic(plain, password_file, "snapshots", "--json", extra=r.sftp_options)))
        assert [x["short_id"] for x in snaps] == [s["snapshot_id"]]
        assert (tmp_path / "sftp" / "repo" / "config").exists()


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_server_is_gone_after_the_block(kind, tmp_path):
    before = {p.pid for p in psutil.Process().children(recursive=True)}  # a module fixture's server
    with SERVERS[kind](tmp_path) as r:
        port = int(r.url.split("127.0.0.1:")[1].split("/")[0])
        mine = {p.pid for p in psutil.Process().children(recursive=True)} - before
        assert mine
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    assert not [p for p in mine if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]


@pytest.mark.parametrize("kind", sorted(SERVERS))
def test_kill_mid_upload(kind, tmp_path, password_file):
    """``Remote.kill()`` is a server crash: its open connections die too. restic 0.14 over SFTP fails
    at once; over S3 it retries a dead endpoint with backoff (for up to 15 minutes), so whoever runs
    it must bound the time. No snapshot is stored either way."""
    need(shutil.which("restic") is not None, "needs restic (run scripts/setup-offsite.sh)")
    with SERVERS[kind](tmp_path) as r:
        ok(restic(r, password_file, "init"))
        env = {**os.environ, **r.env, "RESTIC_PASSWORD_FILE": str(password_file),
               "RESTIC_CACHE_DIR": str(tmp_path / "cache")}
        p = subprocess.Popen(["restic", "-r", r.url, "backup", "--stdin"], env=env, stdin=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            for _ in range(24):
                p.stdin.write(os.urandom(1 << 20))
            r.kill()
            try:
                for _ in range(24):
                    p.stdin.write(os.urandom(1 << 20))
                p.stdin.close()
            except BrokenPipeError:
                pass
            if kind == "sftp":
                assert p.wait(60) != 0
            else:
                with pytest.raises(subprocess.TimeoutExpired):
                    p.wait(5)
        finally:
            p.kill()
            p.wait()
        repo = next(tmp_path.glob(f"{kind}/**/repo"))
        assert (repo / "config").exists()
        assert not list(repo.glob("snapshots/*"))  # S3 keeps no empty directory: none at all


def test_sftp_takes_only_its_key(tmp_path):
    """The throwaway sshd lets in the harness's client key and nothing else (another key, a password)."""
    with sftp_server(tmp_path) as r:
        port = r.url.split("127.0.0.1:")[1].split("/")[0]
        keys = tmp_path / "ssh"
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
        base = ["ssh", "-F", "/dev/null", "-p", port, "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={keys / 'known_hosts'}", "-o", "StrictHostKeyChecking=yes",
                "-l", "root", "127.0.0.1", "-s", "sftp"]
        good = subprocess.run(base[:1] + ["-i", str(keys / "client_key")] + base[1:], input=b"",
                              capture_output=True, timeout=30)
        assert good.returncode == 0, good.stderr  # the sftp subsystem ends at EOF
        for extra in (["-i", str(tmp_path / "other")], ["-o", "PubkeyAuthentication=no"]):
            bad = subprocess.run(base[:1] + extra + base[1:], input=b"", capture_output=True, timeout=30)
            assert bad.returncode == 255 and b"Permission denied" in bad.stderr, bad.stderr

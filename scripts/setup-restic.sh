#!/usr/bin/env bash
# Install what the retention differential test needs (Debian 12, root): restic 0.14 from Debian,
# the reference implementation of the `forget --keep-*` policy snapagent's retention copies.
# Idempotent and quiet.
set -euo pipefail
t0=$(date +%s)
if ! dpkg-query -W -f='${Status}' restic 2>/dev/null | grep -q "install ok installed"; then
    echo "setup-restic: installing restic" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq restic >/dev/null
fi
command -v restic >/dev/null || { echo "setup-restic: restic missing" >&2; exit 1; }
echo "setup-restic: ok ($(restic version | head -1)) in $(( $(date +%s) - t0 ))s" >&2

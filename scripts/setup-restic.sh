#!/usr/bin/env bash
# Install what the restic tests need (Debian 12, root): restic 0.14 from Debian (the restic
# target, and the reference implementation of the `forget --keep-*` policy snapagent's retention
# copies) and rclone 1.60 (`rclone serve restic`: the REST server the restic target's tests start
# on 127.0.0.1). Idempotent and quiet.
set -euo pipefail
t0=$(date +%s)
missing=()
for p in restic rclone; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-restic: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v restic >/dev/null || { echo "setup-restic: restic missing" >&2; exit 1; }
command -v rclone >/dev/null || { echo "setup-restic: rclone missing" >&2; exit 1; }
echo "setup-restic: ok ($(restic version | head -1); $(rclone version | head -1)) in $(( $(date +%s) - t0 ))s" >&2

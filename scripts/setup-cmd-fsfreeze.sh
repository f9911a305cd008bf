#!/usr/bin/env bash
# What the command/fsfreeze tests need beyond bootstrap: e2fsprogs (mkfs.ext4, dumpe2fs, e2fsck,
# debugfs for the ext4 loop filesystems) and util-linux (fsfreeze, for cleanup's thaw). Idempotent.
set -euo pipefail
t0=$(date +%s)
missing=()
for p in e2fsprogs util-linux; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "setup-cmd-fsfreeze: ok in $(( $(date +%s) - t0 ))s" >&2

#!/usr/bin/env bash
# Packages the LVM driver tests need on the host (the VM tier runs the host's userland):
# lvm2 (lvs, lvcreate, …), thin-provisioning-tools (thin pools), xfsprogs and e2fsprogs (test
# filesystems), zstd and tar (the restore-by-hand commands of docs/lvm.md). Idempotent and quiet.
set -euo pipefail
t0=$(date +%s)
pkgs=(lvm2 thin-provisioning-tools xfsprogs e2fsprogs zstd tar)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq -o DPkg::Lock::Timeout=300 "${missing[@]}" >/dev/null
fi
echo "setup-lvm: ${#missing[@]} package(s) installed in $(( $(date +%s) - t0 ))s" >&2

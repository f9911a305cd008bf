#!/usr/bin/env bash
# Install what the schedule tests need (Debian 12, root): `systemd-analyze` (package systemd) for
# `calendar` (the differential test of snapagent's OnCalendar parser) and `verify` (the generated
# units), and tzdata for Europe/Berlin. Both commands work offline and without systemd as PID 1;
# nothing is started or enabled. Idempotent and quiet.
set -euo pipefail
t0=$(date +%s)
pkgs=(systemd tzdata)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-systemd-tools: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
systemd-analyze calendar --base-time='2027-01-01 00:00:00 UTC' daily >/dev/null \
    || { echo "setup-systemd-tools: systemd-analyze calendar does not work" >&2; exit 1; }
test -e /usr/share/zoneinfo/Europe/Berlin || { echo "setup-systemd-tools: tzdata missing" >&2; exit 1; }
echo "setup-systemd-tools: ok in $(( $(date +%s) - t0 ))s" >&2

#!/usr/bin/env bash
# Install MariaDB server + client for the mysql quiescer's system tests (Debian 12: MariaDB 10.11).
# Idempotent and quiet. The packaged service is never needed: the tests start their own mariadbd
# on a btrfs subvolume with a socket in a temp dir, --skip-networking. policy-rc.d keeps dpkg from
# starting the service during the install (there is no systemd here anyway).
set -euo pipefail
t0=$(date +%s)
pkgs=(mariadb-server mariadb-client)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-mariadb: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    policy=/usr/sbin/policy-rc.d
    made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        made_policy=1
    fi
    trap 'if [ $made_policy = 1 ]; then rm -f "$policy"; fi' EXIT
    # other installs may run at the same time: wait for the dpkg lock instead of failing
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || { echo "setup-mariadb: mariadbd missing after install" >&2; exit 1; }
echo "setup-mariadb: ready ($(/usr/sbin/mariadbd --version | head -1)) in $(( $(date +%s) - t0 ))s" >&2

#!/usr/bin/env bash
# Install what the PostgreSQL tests need (Debian 12, root): the PostgreSQL 15 server binaries (with
# amcheck/pg_amcheck) under /usr/lib/postgresql/15/bin. Idempotent and quiet. The tests run their own
# throwaway clusters (initdb as `postgres`, unix sockets in private dirs, no TCP), so the packaged
# system cluster is not needed: if installing it started one, it is stopped again.
set -euo pipefail
t0=$(date +%s)
pkgs=(postgresql-15 postgresql-contrib postgresql-client-15 acl util-linux)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-postgres: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
    # the package creates and may start cluster 15/main; we did not ask for it
    if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | awk '$1=="15" && $2=="main" && $4=="online"' | grep -q .; then
        pg_ctlcluster 15 main stop || true
    fi
fi
test -x /usr/lib/postgresql/15/bin/pg_amcheck || { echo "setup-postgres: pg_amcheck missing" >&2; exit 1; }
echo "setup-postgres: ok in $(( $(date +%s) - t0 ))s" >&2

#!/usr/bin/env bash
# Install what the monitoring tests need (Debian 12, root): prometheus-node-exporter, whose textfile
# collector scrapes the metrics file snapagent writes. Idempotent and quiet. The tests start their own
# exporter on 127.0.0.1:<free port> with only the textfile collector; if installing the package
# started the system service, it is stopped again (we did not ask for it).
set -euo pipefail
t0=$(date +%s)
pkgs=(prometheus-node-exporter)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup-monitoring: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if command -v systemctl >/dev/null && systemctl is-active -q prometheus-node-exporter 2>/dev/null; then
        systemctl stop prometheus-node-exporter || true
    fi
fi
test -x /usr/bin/prometheus-node-exporter || { echo "setup-monitoring: prometheus-node-exporter missing" >&2; exit 1; }
echo "setup-monitoring: ok in $(( $(date +%s) - t0 ))s" >&2

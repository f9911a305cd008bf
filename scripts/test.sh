#!/usr/bin/env bash
# Run the whole snapagent test suite on a fresh Debian 12 machine as root: install everything the
# tiers need (apt packages, the venv, the test VM's kernel + modules, database servers), then pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
t0=$(date +%s)
bash scripts/bootstrap.sh --tests
# Each tier that needs more than the base installs it with its own idempotent script.
for s in scripts/vm-setup.sh scripts/setup-*.sh; do
    [ -e "$s" ] || continue
    echo "== $s" >&2
    bash "$s"
done
echo "== setup took $(( $(date +%s) - t0 ))s" >&2
exec .venv/bin/python -m pytest "$@"

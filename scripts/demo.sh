#!/usr/bin/env bash
# Quick start: install what snapagent needs, then run a real hot backup of a live SQLite database
# on a file-backed btrfs volume, verify it, restore it and drill it, printing what happened.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bash "$here/scripts/bootstrap.sh"
exec "$here/.venv/bin/python" "$here/scripts/demo.py" "$@"

#!/usr/bin/env bash
# Install what the terminal-output tests need (Debian 12, root): tmux, so that a test can run
# snapagent in a real terminal (a pty) and read the screen with `tmux capture-pane`.
# Idempotent and quiet.
set -euo pipefail
t0=$(date +%s)
if ! dpkg-query -W -f='${Status}' tmux 2>/dev/null | grep -q "install ok installed"; then
    echo "setup-tmux: installing tmux" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq tmux >/dev/null
fi
command -v tmux >/dev/null || { echo "setup-tmux: tmux missing" >&2; exit 1; }
echo "setup-tmux: ok in $(( $(date +%s) - t0 ))s" >&2

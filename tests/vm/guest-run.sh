#!/bin/bash
# Stage 2 of snapagent's test VM, executed as PID 1 by the initramfs' /init (tests/vm/initramfs-init)
# after it switched the root to the host's / (read-only 9p): this file is read live from the repo,
# editing it needs no rebuild. It powers the guest off when it is done, whatever happens.
# Usage: guest-run.sh RESULTS_DIR
# RESULTS_DIR is the host's writable results folder; the harness wrote into it:
#   repo         absolute path of the repo (its .venv runs pytest)
#   pytest-args  pytest arguments, NUL-separated (test paths included)
#   shell        (optional) if present, open an interactive shell on the console instead of pytest
# This script writes there: pytest.log, junit.xml, exit-code. Its own output goes to the serial
# console, which the harness saves as serial.log.
set -u
results=$1
poweroff_now() {  # PID 1 must not exit (kernel panic); sysrq "o" powers off, qemu then exits
    sync
    umount "$results" 2>/dev/null
    echo o > /proc/sysrq-trigger
    sleep 60
}
trap poweroff_now EXIT

export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export LANG=C.UTF-8 HOME=/tmp TERM=dumb
repo=$(cat "$results/repo")
mapfile -d '' args < "$results/pytest-args"
echo "snapagent-vm: kernel $(uname -r), $(nproc) cpus, $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)," \
     "stage 2 at $(cut -d' ' -f1 /proc/uptime) s after boot"

finish() {  # finish CODE: record the exit code the host harness reads, then power off
    echo "$1" > "$results/exit-code.tmp" && mv "$results/exit-code.tmp" "$results/exit-code"
    exit "$1"
}

# Kernel modules: from the host's /lib/modules/<guest kernel> (scripts/vm-setup.sh ran depmod).
if ! modprobe -a loop dm-snapshot dm-thin-pool zfs ext4 xfs; then
    echo "snapagent-vm: modprobe failed"
    finish 90
fi
echo "snapagent-vm: zfs $(cat /sys/module/zfs/version 2>/dev/null), lvm $(lvm version 2>/dev/null | awk '/LVM version/ {print $3}')," \
     "modules loaded at $(cut -d' ' -f1 /proc/uptime) s"

# LVM without udev (nothing runs udevd in the guest): LVM creates its /dev nodes itself.
export LVM_SYSTEM_DIR=/run/snapagent-lvm
mkdir -p "$LVM_SYSTEM_DIR" /run/lock/lvm /run/lvm
cat > "$LVM_SYSTEM_DIR/lvm.conf" <<'EOF'
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
devices { obtain_device_list_from_udev = 0 }
global { locking_dir = "/run/lock/lvm" }
backup { backup = 0 archive = 0 }
EOF
export LVM_SUPPRESS_FD_WARNINGS=1

# The root is read-only: no bytecode, no pytest cache. SNAPAGENT_IN_VM lets tests/vm/conftest.py
# run the tests marked vm here (the host deselects them).
export SNAPAGENT_IN_VM=1 PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
export SNAPAGENT_REPORT="$results/reliability.jsonl"  # the repo is read-only here
export SNAPAGENT_VM_OUT="$results"  # where a test leaves files for the host (bench/cases/vm.py)
cd "$repo" || finish 91
if [ -e "$results/shell" ]; then
    echo "snapagent-vm: interactive shell (environment as for pytest); exit to power off"
    setsid -c bash -i </dev/ttyS0 >/dev/ttyS0 2>&1
    finish $?
fi
start=$(date +%s)
"$repo/.venv/bin/python" -m pytest -p no:cacheprovider -m vm \
    --junitxml="$results/junit.xml" "${args[@]}" 2>&1 | tee "$results/pytest.log"
rc=${PIPESTATUS[0]}
echo "snapagent-vm: pytest exited with $rc after $(( $(date +%s) - start )) s"
finish "$rc"

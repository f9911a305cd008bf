#!/usr/bin/env bash
# Install what the encryption tests and bench/age_bench.py need (Debian 12, root): the age CLI
# from Debian (age, age-keygen). snapagent itself encrypts with pyrage (a Python dependency); the
# CLI makes the tests' keys and checks that what snapagent writes is standard age.
# Idempotent and quiet; waits for another apt run's lock instead of failing on it.
set -euo pipefail
t0=$(date +%s)
if ! dpkg-query -W -f='${Status}' age 2>/dev/null | grep -q "install ok installed"; then
    echo "setup-age: installing age" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq age >/dev/null
fi
command -v age >/dev/null && command -v age-keygen >/dev/null || { echo "setup-age: age missing" >&2; exit 1; }
echo "setup-age: ok (age $(age --version)) in $(( $(date +%s) - t0 ))s" >&2

#!/usr/bin/env python3
"""age encryption on snapagent's data path: pyrage (in process) vs the age CLI (a child process).

Each run encrypts, then decrypts, ~--mb MiB of zstd-like (incompressible) bytes streamed from a
file, hashing what comes out as the directory target does, and reports seconds, MiB/s and peak
RSS; then the same bytes go through the directory target itself (zstd, with and without age)
and are read back verified. Every measurement runs in a fresh Python child, so its peak RSS (``ru_maxrss`` of the child,
plus the age process for the CLI) is that of one operation alone. Usage:
    bench/age_bench.py [--mb 500] [--runs 2]
Needs pyrage (pip) and age + age-keygen (scripts/setup-age.sh).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHUNK = 1 << 20

CHILD = r'''
import hashlib, json, os, resource, subprocess, sys, time
tool, op, src, key, out = sys.argv[1:6]
CHUNK = 1 << 20
h = hashlib.sha256()
t0 = time.perf_counter()
if tool == "pyrage":
    import pyrage
    class Sink:
        def __init__(self, f): self.f = f
        def write(self, b): h.update(b); return self.f.write(b)
        def flush(self): self.f.flush()
    with open(src, "rb") as fin, open(out, "wb") as fout:
        if op == "encrypt":
            pyrage.encrypt_io(fin, Sink(fout), [pyrage.x25519.Recipient.from_str(key)])
        else:
            ident = pyrage.x25519.Identity.from_str(open(key).read().split("\n")[-2].strip())
            pyrage.decrypt_io(fin, Sink(fout), [ident])
else:
    argv = ["age", "-r", key] if op == "encrypt" else ["age", "-d", "-i", key]
    with open(src, "rb") as fin, open(out, "wb") as fout:
        p = subprocess.Popen(argv, stdin=fin, stdout=subprocess.PIPE)
        while b := p.stdout.read(CHUNK):
            h.update(b); fout.write(b)
        assert p.wait() == 0
secs = time.perf_counter() - t0
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss + resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"seconds": secs, "peak_rss_kib": rss}))
'''


def measure(tool: str, op: str, src: Path, key: str, out: Path) -> dict:
    """Run one operation in a fresh child; return its seconds and peak RSS (KiB)."""
    r = subprocess.run([sys.executable, "-c", CHILD, tool, op, str(src), key, str(out)],
                       check=True, capture_output=True, text=True)
    return json.loads(r.stdout)


def _sha256(p: Path) -> str:
    """Hash in chunks: a whole-file read here would inflate every later child's peak RSS (Linux
    carries the high-water mark across fork and exec)."""
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while b := f.read(CHUNK):
            h.update(b)
    return h.hexdigest()


TARGET_CHILD = r'''
import json, os, resource, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[5])
from snapagent.targets.directory import DirectoryConfig, DirectoryTarget
from snapagent.util import age
enc, src, key, out = sys.argv[1:5]
class J:
    def open(self, *a, **k): pass
    def close(self, *a, **k): pass
extra = {"encryption": "age", "recipients": [key]} if enc == "age" else {}
t = DirectoryTarget("bench", DirectoryConfig(path=Path(out), **extra))
w = t.begin("bench", f"bench-{time.time_ns()}", J())
t0 = time.perf_counter()
with open(src, "rb") as f:
    art = w.add_artifact("data", f)
t1 = time.perf_counter()
if enc == "age":
    t.identities = age.load_identities(Path(sys.argv[6]))
from snapagent.targets.streams import VerifyingReader
with VerifyingReader(w.tmp / art.name, art, t.identities) as r:
    while r.read(1 << 20):
        pass
    r.finish()
t2 = time.perf_counter()
print(json.dumps({"store": t1 - t0, "read": t2 - t1,
                  "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
'''


def measure_target(enc: str, src: Path, recipient: str, keyfile: Path, out: Path) -> dict:
    """Store ``src`` through the directory target (zstd, then age when ``enc``) and read it back
    verified, in a fresh child; return seconds of each and the peak RSS (KiB)."""
    root = str(Path(__file__).resolve().parent.parent)
    r = subprocess.run([sys.executable, "-c", TARGET_CHILD, enc, str(src), recipient, str(out), root, str(keyfile)],
                       check=True, capture_output=True, text=True)
    return json.loads(r.stdout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=500)
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir="/var/tmp") as d:
        d = Path(d)
        src = d / "plain"
        with open(src, "wb") as f:  # compressed data is incompressible: random bytes stand in
            for _ in range(args.mb):
                f.write(os.urandom(CHUNK))
        keyfile = d / "key.txt"
        subprocess.run(["age-keygen", "-o", str(keyfile)], check=True, capture_output=True)
        os.chmod(keyfile, 0o600)
        recipient = subprocess.run(["age-keygen", "-y", str(keyfile)], check=True, capture_output=True,
                                   text=True).stdout.strip()
        print(f"{args.mb} MiB, best of {args.runs} run(s); peak RSS of the whole operation")
        print(f"{'tool':8} {'op':8} {'seconds':>8} {'MiB/s':>8} {'peak RSS MiB':>13}")
        for tool in ("pyrage", "age-cli"):
            for op, inp, key in (("encrypt", src, recipient), ("decrypt", d / "enc", str(keyfile))):
                outp = d / ("enc" if op == "encrypt" else "dec")
                best = min((measure(tool, op, inp, key, outp) for _ in range(args.runs)), key=lambda r: r["seconds"])
                print(f"{tool:8} {op:8} {best['seconds']:8.2f} {args.mb / best['seconds']:8.1f} "
                      f"{best['peak_rss_kib'] / 1024:13.1f}", flush=True)
            assert _sha256(d / "dec") == _sha256(src), "round trip differs"
        print("\ndirectory target, zstd level 3 (+ age), same bytes: store, then read back verified")
        print(f"{'encryption':10} {'store s':>8} {'MiB/s':>8} {'read s':>8} {'MiB/s':>8} {'peak RSS MiB':>13}")
        for enc in ("none", "age"):
            r = min((measure_target(enc, src, recipient, keyfile, d / f"t-{enc}") for _ in range(args.runs)),
                    key=lambda r: r["store"] + r["read"])
            print(f"{enc:10} {r['store']:8.2f} {args.mb / r['store']:8.1f} {r['read']:8.2f} {args.mb / r['read']:8.1f} "
                  f"{r['peak_rss_kib'] / 1024:13.1f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""The quick-start demo: a real hot backup of a live SQLite database on a file-backed btrfs volume.

Creates a 1 GiB sparse file, formats it btrfs, mounts it on a loop device, starts a writer that
commits continuously, then runs `snapagent backup`, `verify`, `restore` and `drill` through the
real CLI and prints what happened. Needs root. Usage: demo.py [--dir DIR] [--keep-mounted]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WRITER = ROOT / "tests" / "helpers" / "writer.py"


def sh(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True, **kw)


def snapagent(cfg: Path, *args: str, show: bool = True) -> subprocess.CompletedProcess:
    # -v: stderr is a pipe here, which otherwise shows only warnings and errors (as under cron)
    print(f"\n$ snapagent -c {cfg} -v {' '.join(args)}", flush=True)
    r = subprocess.run([sys.executable, "-m", "snapagent", "-c", str(cfg), "-v", *args], capture_output=True, text=True)
    for line in (r.stderr + (r.stdout if show else "(JSON manifest read)\n")).rstrip().splitlines():
        print(f"  {line}")
    if r.returncode != 0:
        raise SystemExit(f"demo: `snapagent {' '.join(args)}` failed with exit {r.returncode}")
    return r


def teardown(ws: Path) -> None:
    mnt = ws / "mnt"
    if os.path.ismount(mnt):
        subprocess.run(["umount", str(mnt)], capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default="/var/tmp/snapagent-demo", help="workspace (recreated)")
    ap.add_argument("--keep-mounted", action="store_true", help="leave the demo volume mounted")
    a = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("demo: run as root (it creates a loop device and mounts it)")
    ws = Path(a.dir)
    teardown(ws)
    shutil.rmtree(ws, ignore_errors=True)
    ws.mkdir(parents=True)
    img, mnt = ws / "volume.img", ws / "mnt"
    mnt.mkdir()
    print(f"== creating a 1 GiB file-backed btrfs volume at {mnt}")
    with open(img, "wb") as f:
        f.truncate(1 << 30)
    sh("mkfs.btrfs", "-q", str(img))
    sh("mount", "-o", "loop", str(img), str(mnt))
    writer = None
    try:
        vol = mnt / "app"
        sh("btrfs", "subvolume", "create", str(vol))
        db = vol / "app.db"
        acks = ws / "acks.txt"
        print(f"== starting an application writing to {db} (WAL mode, one commit every ~2 ms)")
        writer = subprocess.Popen([sys.executable, str(WRITER), str(db), str(acks)])
        while not acks.exists() or len(acks.read_text().splitlines()) < 200:
            time.sleep(0.05)
        cfg = ws / "snapagent.toml"
        cfg.write_text(
            f'[agent]\nstate_dir = "{ws}/state"\n\n'
            f'[targets.local]\ntype = "directory"\npath = "{ws}/backups"\n\n'
            f'[jobs.demo]\ndriver = "btrfs"\nvolumes = ["{vol}"]\ntarget = "local"\nmax_freeze = "10s"\n\n'
            f'[[jobs.demo.quiesce]]\ntype = "sqlite"\npath = "{db}"\n')
        print(f"== config written to {cfg}")
        snapagent(cfg, "config", "check")
        bid = snapagent(cfg, "backup", "demo").stdout.strip().splitlines()[-1]
        time.sleep(0.3)  # the application goes on writing after the backup
        writer.terminate()
        writer.wait()
        m = json.loads(snapagent(cfg, "show", bid, "--json", show=False).stdout)
        snapagent(cfg, "list")
        snapagent(cfg, "verify", bid)
        dest = ws / "restore"
        snapagent(cfg, "restore", bid, "--to", str(dest))
        snapagent(cfg, "drill", bid)

        q = m["quiescers"][0]
        locked = datetime.fromisoformat(q["locked_at"]).timestamp()
        acked = [line.split() for line in acks.read_text().splitlines() if len(line.split()) == 2]
        before = [int(i) for i, t in acked if float(t) < locked]
        rdb = dest / m["volumes"][0]["label"] / "app.db"
        conn = sqlite3.connect(rdb)
        ids = {r[0] for r in conn.execute("SELECT id FROM t")}
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        conn.close()
        missing = [i for i in before if i not in ids]
        print("\n== what happened")
        print(f"  backup id:              {bid}")
        print(f"  freeze window:          {m['freeze_window_ms']:.1f} ms (writers blocked at most this long)")
        print(f"  rows committed in all:  {len(acked)} (the writer never stopped)")
        print(f"  committed before lock:  {len(before)}")
        print(f"  rows in the restore:    {len(ids)}  ->  missing: {len(missing)}")
        print(f"  integrity_check:        {check}")
        print(f"  restored database:      {rdb}")
        print(f"  stored backup:          {ws / 'backups' / 'demo' / bid}")
        ok = check == "ok" and not missing
        print(f"\n{'DEMO OK' if ok else 'DEMO FAILED'}: try `snapagent -c {cfg} list` (venv: {ROOT}/.venv/bin/snapagent)")
        return 0 if ok else 1
    finally:
        if writer and writer.poll() is None:
            writer.terminate()
            writer.wait()
        if not a.keep_mounted:
            teardown(ws)


if __name__ == "__main__":
    sys.exit(main())

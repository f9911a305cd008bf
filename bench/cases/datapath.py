"""Benchmark case datapath: a full backup and a restore through snapagent's CLI against the shell
pipelines an admin would run instead, and snapagent's peak RSS.

- full backup: ``snapagent backup`` of a btrfs subvolume (tar export) vs ``btrfs subvolume
  snapshot -r; tar | zstd -3 -T0 | tee f | sha256sum; sync f; btrfs subvolume delete``;
- restore: ``snapagent restore`` (every artifact and tar member checked first, then extracted)
  vs ``sha256sum f; zstd -dc f | tar -x; sync``;
- peak RSS (``wait4``'s ``ru_maxrss``: snapagent and its children) of a backup at a small and a
  large volume (it must not grow with the volume), and of the restore.

The data is a mixed tree on a loop-backed btrfs volume: half random bytes (what zstd cannot
shrink: media, compressed files), half compressible text, in many files of mixed sizes (4 KiB to
16 MiB). Full run: 768 MB backed up, 2.3 GB restored; ``--quick``: 64 MB both.
"""

from __future__ import annotations

import os
import random
import shlex
import shutil
import statistics
from pathlib import Path

from bench.core import Context, Row, alternate, btrfs_volume, measure, sh, snapagent_argv

MB = 1_000_000
#: one line of the compressible half (varied a little, like a log)
_LINE = "{t} INFO request served path=/api/v1/items/{i} status=200 bytes={b} user=u{u}\n"
#: tar flags the admin's pipelines use: what snapagent stores and restores (xattrs, ACLs, owners)
_TAR_CREATE = ["--format=posix", "--xattrs", "--xattrs-include=*", "--acls", "--sparse", "--numeric-owner",
               "--one-file-system"]
_TAR_EXTRACT = ["--numeric-owner", "--same-owner", "--preserve-permissions", "--xattrs", "--xattrs-include=*",
                "--acls"]


def make_tree(root: Path, total: int, seed: int = 11) -> int:
    """Fill ``root`` with about ``total`` bytes: half random, half compressible, in files of
    4 KiB–16 MiB (log-uniform: many small, most bytes in large ones) in nested directories;
    return the bytes written."""
    rng = random.Random(seed)
    text = "".join(_LINE.format(t=f"2026-11-22T00:{i % 60:02d}:{i % 59:02d}Z", i=i * 7919 % 100003,
                                b=i * 31 % 9000, u=i % 97) for i in range(40_000)).encode()
    written, n = 0, 0
    while written < total:
        size = min(int(2 ** rng.uniform(12, 24)), total - written)
        d = root / f"d{n % 23:02d}" / f"e{n % 7}"
        d.mkdir(parents=True, exist_ok=True)
        with open(d / f"f{n:05d}.{'bin' if n % 2 else 'log'}", "wb") as f:
            left = size
            while left:
                k = min(left, 1 << 20)
                if n % 2:
                    f.write(os.urandom(k))
                else:
                    off = rng.randrange(len(text) - k) if len(text) > k else 0
                    f.write(text[off:off + k])
                left -= k
        written += size
        n += 1
    return written


def _config(ctx: Context, base: Path, vol: Path) -> Path:
    cfg = base / "snapagent.toml"
    cfg.write_text(f"""
[agent]
state_dir = {str(base / 'state')!r}

[targets.local]
type = "directory"
path = {str(base / 'backups')!r}

[jobs.app]
driver = "btrfs"
volumes = [{str(vol)!r}]
target = "local"
export = "tar"
""")
    os.chmod(cfg, 0o600)
    return cfg


def _bash(script: str) -> float:
    """Run the admin's pipeline ``script`` in bash (pipefail); return its wall seconds."""
    m = measure(["bash", "-o", "pipefail", "-c", script])
    if m.rc:
        raise RuntimeError(f"baseline failed ({m.rc}): {script}\n{m.stderr}")
    return m.seconds


class _Setup:
    """One loop-backed btrfs volume with a subvolume ``app`` of ``size`` bytes of mixed data, a
    snapagent config backing it up to a directory under ``ctx.work``."""

    def __init__(self, ctx: Context, mnt: Path, size: int, tag: str):
        self.ctx = ctx
        self.base = ctx.work / f"datapath-{tag}"
        self.base.mkdir()
        self.vol = mnt / "app"
        sh("btrfs", "subvolume", "create", self.vol)
        self.size = make_tree(self.vol, size)
        self.cfg = _config(ctx, self.base, self.vol)
        self.shell_out = self.base / "shell"
        self.shell_out.mkdir()
        sh("tar", "-cf", "/dev/null", "-C", self.vol, ".")  # the same warm page cache for both sides

    def snapagent(self, *args: str):
        m = measure(snapagent_argv(self.ctx, self.cfg, *args))
        if m.rc:
            raise RuntimeError(f"snapagent {' '.join(args)} failed ({m.rc}): {m.stderr[-2000:]}")
        return m

    def backup(self, rss: list[float] | None = None) -> float:
        shutil.rmtree(self.base / "backups", ignore_errors=True)
        m = self.snapagent("-q", "backup", "app")
        if rss is not None:
            rss.append(m.rss_mib)
        return m.seconds

    def shell_backup(self) -> float:
        snap, f = self.vol.parent / "admin-snap", self.shell_out / "app.tar.zst"
        q = shlex.quote
        tar = shlex.join(["tar", "--create", "--file=-", "--directory", str(snap), *_TAR_CREATE, "."])
        script = (f"btrfs -q subvolume snapshot -r {q(str(self.vol))} {q(str(snap))} && "
                  f"{tar} | zstd -q -3 -T0 | tee {q(str(f))} | sha256sum >/dev/null && sync {q(str(f))} && "
                  f"btrfs -q subvolume delete {q(str(snap))}")
        try:
            return _bash(script)
        finally:
            f.unlink(missing_ok=True)

    def artifact(self) -> Path:
        d = self.base / "backups" / "app"
        (bid,) = [p for p in d.iterdir() if not p.name.startswith(".")]
        (art,) = bid.glob("*.tar.zst")
        return art


def _last_id(jobdir: Path) -> str:
    (bid,) = [p.name for p in jobdir.iterdir() if not p.name.startswith(".")]
    return bid


def _restore_rows(ctx: Context, s: _Setup) -> list[Row]:
    """Restore rows: one backup of ``s``, restored by snapagent and by the admin's pipeline."""
    s.backup()
    bid, art = _last_id(s.base / "backups" / "app"), s.artifact()
    dest, admin = s.base / "restored", s.base / "admin-restored"
    rss: list[float] = []

    def ours() -> float:
        shutil.rmtree(dest, ignore_errors=True)
        m = s.snapagent("-q", "restore", bid, "--to", str(dest))
        rss.append(m.rss_mib)
        return m.seconds

    def base() -> float:
        shutil.rmtree(admin, ignore_errors=True)
        admin.mkdir()
        tar = shlex.join(["tar", "--extract", "--file=-", "--directory", str(admin), *_TAR_EXTRACT])
        return _bash(f"sha256sum {shlex.quote(str(art))} >/dev/null && zstd -q -dc {shlex.quote(str(art))} | {tar} "
                     f"&& sync")

    a, b = alternate(ours, base, ctx.runs)
    shutil.rmtree(dest, ignore_errors=True)
    shutil.rmtree(admin, ignore_errors=True)
    note = f"{s.size / MB:.0f} MB"
    ratio = statistics.median(a) / statistics.median(b)
    return [Row("restore wall time", "s", a, b, r"sha256sum f; zstd -dc f \| tar -x; sync", "≤ 0.9 ×", ratio <= 0.9,
                note),
            Row("peak RSS of restore", "MiB", rss[-ctx.runs:], target="≤ 100 MiB", met=max(rss) <= 100, note=note)]


def run(ctx: Context) -> list[Row]:
    backup_mb, restore_mb, small_mb = ctx.scale(768, 64), ctx.scale(2300, 64), ctx.scale(10, 4)
    rows: list[Row] = []
    with btrfs_volume(ctx, max(3 * backup_mb, 256), "datapath") as mnt:
        ctx.log(f"datapath: writing {backup_mb} MB of mixed data")
        s = _Setup(ctx, mnt, backup_mb * MB, "backup")
        rss_large: list[float] = []
        a, b = alternate(lambda: s.backup(rss_large), s.shell_backup, ctx.runs)
        ratio = statistics.median(a) / statistics.median(b)
        pipeline = r"snapshot; tar \| zstd -3 -T0 \| tee f \| sha256sum; sync f; delete"
        rows.append(Row("full backup wall time", "s", a, b, pipeline, "≤ 0.9 ×", ratio <= 0.9,
                        f"{s.size / MB:.0f} MB mixed"))
        if restore_mb == backup_mb:
            rows += _restore_rows(ctx, s)
        shutil.rmtree(s.base, ignore_errors=True)
    with btrfs_volume(ctx, max(small_mb * 4, 256), "datapath-small") as mnt:
        small = _Setup(ctx, mnt, small_mb * MB, "small")
        rss_small: list[float] = []
        for _ in range(ctx.runs):
            small.backup(rss_small)
        shutil.rmtree(small.base, ignore_errors=True)
    flat = max(rss_large) <= 1.15 * max(rss_small) + 8
    rows.append(Row("peak RSS of backup", "MiB", rss_small, target="≤ 100 MiB", met=max(rss_small) <= 100,
                    note=f"{small.size / MB:.0f} MB volume"))
    rows.append(Row("peak RSS of backup", "MiB", rss_large[-ctx.runs:], target="≤ 100 MiB, flat",
                    met=max(rss_large) <= 100 and flat, note=f"{s.size / MB:.0f} MB volume"))
    if restore_mb != backup_mb:
        if shutil.disk_usage(ctx.work).free < 4 * restore_mb * MB:
            ctx.log(f"datapath: not enough room under {ctx.work} for the {restore_mb} MB restore; using {backup_mb} MB")
            restore_mb = backup_mb
        with btrfs_volume(ctx, 2 * restore_mb + 512, "datapath-restore") as mnt:
            ctx.log(f"datapath: writing {restore_mb} MB of mixed data")
            r = _Setup(ctx, mnt, restore_mb * MB, "restore")
            rows += _restore_rows(ctx, r)
            shutil.rmtree(r.base, ignore_errors=True)
    return rows



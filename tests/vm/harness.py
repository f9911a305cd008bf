"""Boot snapagent's test VM (qemu, TCG) and run the tests marked ``vm`` inside it.

The guest runs Debian's 6.1 kernel (device-mapper, OpenZFS) with the host's own ``/`` as its
read-only root over virtio-9p, so it runs the host's Python and the repo's ``.venv`` as they are.
A second, writable 9p export (the results folder) carries the run's inputs in and its outputs
(``pytest.log``, ``junit.xml``, ``exit-code``) out; the serial console is saved as ``serial.log``.
``scripts/vm-setup.sh`` installs the kernel, builds the zfs module and the initramfs, and writes
the manifest (``guest.env``) read here. See docs/test-vm.md.

Used by ``tests/vm/test_vm_tier.py``; also runnable by hand::

    .venv/bin/python tests/vm/harness.py [--shell] [PYTEST_ARGS...]

Environment overrides: SNAPAGENT_VM_CACHE (manifest folder), SNAPAGENT_VM_QEMU, SNAPAGENT_VM_KERNEL,
SNAPAGENT_VM_INITRD, SNAPAGENT_VM_RESULTS (results folder), SNAPAGENT_VM_TIMEOUT (seconds, whole
boot), SNAPAGENT_VM_MEMORY (MiB), SNAPAGENT_VM_SMP, SNAPAGENT_VM_APPEND (more kernel arguments),
SNAPAGENT_VM_PYTEST_ARGS (extra guest pytest arguments, shell-quoted).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Mapping, Sequence

VM_DIR = Path(__file__).resolve().parent
REPO = VM_DIR.parents[1]
INIT_SCRIPT = VM_DIR / "initramfs-init"
GUEST_SCRIPT = VM_DIR / "guest-run.sh"
DEFAULT_CACHE = Path("/var/cache/snapagent-vm")
DEFAULT_RESULTS = REPO / "results" / "vm"
DEFAULT_TIMEOUT = 20 * 60
DEFAULT_MEMORY_MIB = 2560
DEFAULT_SMP = 2
SETUP_HINT = "run `scripts/vm-setup.sh` as root (see docs/test-vm.md)"
RESULTS_MARKER = ".snapagent-vm-results"


class VMUnavailable(Exception):
    """The test VM cannot be booted on this machine; the message says what is missing."""


class VMRunError(Exception):
    """The guest did not complete: qemu failed, timed out, or no exit code came back."""


@dataclasses.dataclass(frozen=True)
class GuestImage:
    """What boots the guest: the qemu binary, the kernel, its initramfs, its release."""

    qemu: str
    kernel: Path
    initrd: Path
    kver: str
    zfs_version: str


@dataclasses.dataclass(frozen=True)
class TierResult:
    """Outcome of one guest run: exit code, counts from junit XML, log texts and paths."""

    exit_code: int
    results_dir: Path
    duration: float
    counts: Mapping[str, int]
    failures: Sequence[str]
    pytest_log: str

    @property
    def serial_log(self) -> Path:
        return self.results_dir / "serial.log"


def read_manifest(path: Path) -> dict[str, str]:
    """Given the KEY=VALUE file scripts/vm-setup.sh writes, return it as a dict."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def file_sha16(path: Path) -> str:
    """Return the first 16 hex digits of the file's sha256 (the initramfs cache key)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def find_image(env: Mapping[str, str] = os.environ) -> GuestImage:
    """Locate everything needed to boot the guest; raise VMUnavailable saying what is missing."""
    cache = Path(env.get("SNAPAGENT_VM_CACHE", DEFAULT_CACHE))
    manifest_path = cache / "guest.env"
    try:
        manifest = read_manifest(manifest_path)
    except OSError as exc:
        raise VMUnavailable(f"no VM manifest at {manifest_path} ({exc.strerror})") from None

    qemu = env.get("SNAPAGENT_VM_QEMU") or manifest.get("QEMU") or "qemu-system-x86_64"
    qemu_path = shutil.which(qemu)
    if qemu_path is None:
        raise VMUnavailable(f"qemu not found: {qemu}")
    kver = manifest.get("KVER", "")
    kernel = Path(env.get("SNAPAGENT_VM_KERNEL") or manifest.get("KERNEL", "/nonexistent"))
    if not kernel.is_file():
        raise VMUnavailable(f"guest kernel not found: {kernel}")
    initrd = Path(env["SNAPAGENT_VM_INITRD"]) if env.get("SNAPAGENT_VM_INITRD") else find_initrd(cache, kver)
    if not initrd.is_file():
        raise VMUnavailable(f"guest initramfs not found: {initrd}")
    zfs_ko = Path(manifest.get("ZFS_KO") or "/nonexistent")
    if not zfs_ko.is_file():
        raise VMUnavailable(f"no zfs module for guest kernel {kver or '?'}: {zfs_ko}")
    return GuestImage(qemu_path, kernel, initrd, kver, manifest.get("ZFS_VERSION", "?"))


def find_initrd(cache: Path, kver: str) -> Path:
    """Return the initramfs vm-setup.sh built for this kernel and this checkout's initramfs-init.

    Its name is ``initrd-<kver>-<sha16 of initramfs-init>-<busybox>.gz``: worktrees with different
    init scripts share the cache. Raise VMUnavailable if there is none.
    """
    sha = file_sha16(INIT_SCRIPT)
    found = sorted(cache.glob(f"initrd-{kver}-{sha}-*.gz"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise VMUnavailable(f"no initramfs in {cache} for kernel {kver or '?'} and this "
                            f"{INIT_SCRIPT.relative_to(REPO)} (sha256 {sha}…; built before it changed?)")
    return found[-1]


def qemu_argv(image: GuestImage, results_dir: Path, memory_mib: int, smp: int, interactive: bool,
              append: str = "") -> list[str]:
    """Return the qemu command line: TCG, serial console on stdio, three 9p exports (the host root,
    the results folder, and the repo — mounted by the guest only where its tmpfs hides it).

    ``append`` is added to the kernel command line (e.g. ``loglevel=7`` to see the whole boot).
    """
    results = str(results_dir).replace(",", ",,")  # qemu option syntax escapes commas by doubling
    return [
        image.qemu,
        "-accel", "tcg",  # /dev/kvm exists on these machines but KVM hangs at boot
        "-smp", str(smp),
        "-m", str(memory_mib),
        "-nodefaults", "-no-reboot",
        "-display", "none",
        "-monitor", "none",
        "-serial", "mon:stdio" if interactive else "stdio",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        # no_timer_check: on a loaded host TCG is too slow for the kernel's IO-APIC timer check,
        # which then panics ("IO-APIC + timer doesn't work!").
        "-append", f"console=ttyS0 panic=-1 quiet no_timer_check {append}".strip(),
        "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap",
        "-virtfs", f"local,path={results},mount_tag=results,security_model=none,multidevs=remap",
        "-virtfs", f"local,path={str(REPO).replace(',', ',,')},mount_tag=repo,security_model=none,readonly=on,multidevs=remap",
    ]


def prepare_results(results_dir: Path, pytest_args: Sequence[str], interactive: bool) -> None:
    """Empty the results folder (only one this harness made) and write the guest's inputs."""
    if results_dir.exists():
        if not (results_dir / RESULTS_MARKER).exists() and any(results_dir.iterdir()):
            raise VMRunError(f"{results_dir} is not empty and not a results folder of this harness")
        shutil.rmtree(results_dir)
    results_dir.mkdir(parents=True)
    (results_dir / RESULTS_MARKER).touch()
    (results_dir / "repo").write_text(str(REPO))
    (results_dir / "entry").write_text(str(GUEST_SCRIPT))
    (results_dir / "pytest-args").write_bytes(b"".join(a.encode() + b"\0" for a in pytest_args))
    if interactive:
        (results_dir / "shell").touch()


def tail(path: Path, lines: int = 60) -> str:
    """Return the last lines of a text file, or a note that it is missing."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} missing)"
    if not text.strip():
        return "(empty: nothing reached the console; SNAPAGENT_VM_APPEND=loglevel=7 shows the kernel boot)"
    return "\n".join(text.splitlines()[-lines:])


def junit_summary(path: Path) -> tuple[dict[str, int], list[str]]:
    """Given a pytest junit XML file, return (counts, failure texts); empty if unreadable."""
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "passed": 0}
    failures: list[str] = []
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return counts, failures
    for suite in root.iter("testsuite"):
        for key in ("tests", "failures", "errors", "skipped"):
            counts[key] += int(suite.get(key, 0))
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    for case in root.iter("testcase"):
        for bad in list(case.findall("failure")) + list(case.findall("error")):
            name = f"{case.get('classname')}::{case.get('name')}"
            failures.append(f"{name} [{bad.tag}]: {bad.get('message', '')}\n{(bad.text or '')[-3000:]}")
    return counts, failures


def run_tier(
    image: GuestImage,
    pytest_args: Sequence[str],
    results_dir: Path = DEFAULT_RESULTS,
    timeout: float = DEFAULT_TIMEOUT,
    memory_mib: int = DEFAULT_MEMORY_MIB,
    smp: int = DEFAULT_SMP,
    interactive: bool = False,
    append: str = "",
) -> TierResult:
    """Boot the guest once, run ``pytest -m vm PYTEST_ARGS`` in it, return its result.

    Raise VMRunError if qemu fails, the boot exceeds ``timeout`` seconds (qemu is killed), or the
    guest reports no exit code; the message carries the serial console's tail.
    """
    prepare_results(results_dir, pytest_args, interactive)
    serial = results_dir / "serial.log"
    argv = qemu_argv(image, results_dir, memory_mib, smp, interactive, append)
    (results_dir / "qemu-argv").write_text(shlex.join(argv) + "\n")
    start = time.monotonic()
    with open(serial, "wb") as out:
        proc = subprocess.Popen(
            argv,
            stdin=None if interactive else subprocess.DEVNULL,
            stdout=None if interactive else out,
            stderr=subprocess.STDOUT if not interactive else None,
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise VMRunError(
                f"guest did not power off within {timeout:.0f} s; qemu killed. "
                f"Serial console ({serial}), last lines:\n{tail(serial)}"
            ) from None
    duration = time.monotonic() - start
    code_file = results_dir / "exit-code"
    if not code_file.exists():
        raise VMRunError(
            f"guest reported no exit code (qemu exited {rc} after {duration:.0f} s). "
            f"Serial console ({serial}), last lines:\n{tail(serial)}"
        )
    counts, failures = junit_summary(results_dir / "junit.xml")
    pytest_log = (results_dir / "pytest.log").read_text(errors="replace") if (results_dir / "pytest.log").exists() else ""
    return TierResult(int(code_file.read_text().strip()), results_dir, duration, counts, failures, pytest_log)


def settings_from_env(env: Mapping[str, str] = os.environ) -> dict:
    """Return run_tier's keyword arguments from the SNAPAGENT_VM_* environment variables."""
    return {
        "results_dir": Path(env.get("SNAPAGENT_VM_RESULTS") or DEFAULT_RESULTS),
        "timeout": float(env.get("SNAPAGENT_VM_TIMEOUT") or DEFAULT_TIMEOUT),
        "memory_mib": int(env.get("SNAPAGENT_VM_MEMORY") or DEFAULT_MEMORY_MIB),
        "smp": int(env.get("SNAPAGENT_VM_SMP") or DEFAULT_SMP),
        "append": env.get("SNAPAGENT_VM_APPEND", ""),
    }


def default_pytest_args(env: Mapping[str, str] = os.environ) -> list[str]:
    """Return the guest's pytest arguments: verbose, 5 slowest, the VM tier, SNAPAGENT_VM_PYTEST_ARGS."""
    return ["-v", "--durations=5", str(VM_DIR), *shlex.split(env.get("SNAPAGENT_VM_PYTEST_ARGS", ""))]


def main(argv: Sequence[str]) -> int:
    """Run the VM tier (or ``--shell``: an interactive guest shell) from the command line."""
    args = list(argv)
    interactive = "--shell" in args
    if interactive:
        args.remove("--shell")
    try:
        image = find_image()
    except VMUnavailable as exc:
        print(f"test VM unavailable: {exc}; {SETUP_HINT}", file=sys.stderr)
        return 2
    pytest_args = args or default_pytest_args()
    print(f"booting {image.kernel.name} (zfs {image.zfs_version}) under TCG ...", file=sys.stderr)
    try:
        result = run_tier(image, pytest_args, interactive=interactive, **settings_from_env())
    except VMRunError as exc:
        print(exc, file=sys.stderr)
        return 1
    if not interactive:
        print(result.pytest_log)
    print(f"guest exit code {result.exit_code} after {result.duration:.0f} s; logs in {result.results_dir}",
          file=sys.stderr)
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

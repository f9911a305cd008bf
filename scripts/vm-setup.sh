#!/usr/bin/env bash
# Prepare this machine (Debian 12, run as root) to boot snapagent's test VM: a qemu/TCG guest running
# Debian's 6.1 kernel with device-mapper and OpenZFS, whose root is the host's own / over 9p.
# See docs/test-vm.md. Idempotent: a second run does no apt work and no build, and takes seconds.
#
# Stages: apt sources (contrib) -> pick guest kernel -> install packages -> zfs module for the guest
# kernel (dkms; cached) -> depmod -> initramfs (cached) -> write the manifest the harness reads.
#
# Environment:
#   SNAPAGENT_VM_CACHE  cache and manifest directory (default /var/cache/snapagent-vm)
#   SNAPAGENT_VM_KVER   guest kernel release to use, e.g. 6.1.0-56-amd64 (default: newest apt offers)
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${SNAPAGENT_VM_CACHE:-/var/cache/snapagent-vm}
init_src="$repo/tests/vm/initramfs-init"
# The nine modules the initramfs loads, in this order, to mount the host's root over virtio-9p.
initrd_mods=(virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci
             netfs fscache 9pnet 9pnet_virtio 9p)
export DEBIAN_FRONTEND=noninteractive

t_script=$(date +%s.%N)
log() { echo "vm-setup: $*" >&2; }
die() { echo "vm-setup: ERROR: $*" >&2; exit 1; }
# stage NAME FUNCTION: run one stage and print how long it took.
stage() {
    local name=$1 t0 t1; shift
    t0=$(date +%s.%N)
    log "[$name] ..."
    "$@"
    t1=$(date +%s.%N)
    awk -v n="$name" -v a="$t0" -v b="$t1" 'BEGIN { printf "vm-setup: [%s] done in %.1f s\n", n, b - a }' >&2
}

[ "$(id -u)" = 0 ] || die "run as root"
[ -r "$init_src" ] || die "missing $init_src"

# apt-get that waits for (and retries on) a dpkg/apt lock held by someone else.
apt_get() {
    local try out rc
    for try in 1 2 3 4 5 6 7 8 9 10; do
        rc=0
        out=$(apt-get -o DPkg::Lock::Timeout=300 "$@" 2>&1) || rc=$?
        if [ $rc = 0 ]; then return 0; fi
        if grep -qiE 'could not get lock|unable to acquire the dpkg|lock-frontend' <<<"$out"; then
            log "apt lock held by another process; retry $try in 20 s"
            sleep 20
            continue
        fi
        echo "$out" | tail -40 >&2
        return $rc
    done
    die "gave up waiting for the apt/dpkg lock"
}

is_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

need_update=0

# --- stage: apt sources --------------------------------------------------------------------------
enable_contrib() {
    local f changed=0
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -e "$f" ] || continue
        # deb822: every Components: line of a Debian stanza gets "contrib" if it lacks it.
        if grep -qE '^Components:' "$f" && grep -E '^Components:' "$f" | grep -qvw contrib; then
            sed -i -E '/^Components:/{/[[:space:]]contrib([[:space:]]|$)/!s/$/ contrib/}' "$f"
            log "added contrib to $f"
            changed=1
        fi
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -e "$f" ] || continue
        # one-line format: "deb URI SUITE main ..." lines of debian archives without contrib.
        if grep -E '^deb(-src)?[[:space:]].*debian.*[[:space:]]main([[:space:]]|$)' "$f" | grep -qvw contrib; then
            sed -i -E '/^deb(-src)?[[:space:]].*debian.*[[:space:]]main([[:space:]]|$)/{/[[:space:]]contrib([[:space:]]|$)/!s/[[:space:]]main([[:space:]]|$)/ main contrib\1/}' "$f"
            log "added contrib to $f"
            changed=1
        fi
    done
    if [ $changed = 1 ] || [ -z "$(apt-cache policy zfs-dkms 2>/dev/null | awk '/Candidate:/ && $2 != "(none)"')" ]; then
        need_update=1
    fi
    if [ $need_update = 1 ]; then
        log "apt-get update"
        apt_get update -qq
        need_update=0
    fi
    [ -n "$(apt-cache policy zfs-dkms | awk '/Candidate:/ && $2 != "(none)"')" ] \
        || die "zfs-dkms has no install candidate even with contrib enabled (check apt sources)"
}

# --- stage: pick the guest kernel ----------------------------------------------------------------
kver=""
pick_kernel() {
    if [ -n "${SNAPAGENT_VM_KVER:-}" ]; then
        kver=$SNAPAGENT_VM_KVER
        log "guest kernel from SNAPAGENT_VM_KVER: $kver"
        return
    fi
    # Newest 6.1.0-N-amd64 (not cloud, not rt) for which apt has both image and headers.
    local n
    for n in $(apt-cache search --names-only '^linux-image-6\.1\.0-[0-9]+-amd64$' \
                 | sed -nE 's/^linux-image-6\.1\.0-([0-9]+)-amd64 .*/\1/p' | sort -rn); do
        if apt-cache show "linux-headers-6.1.0-$n-amd64" >/dev/null 2>&1; then
            kver="6.1.0-$n-amd64"
            break
        fi
    done
    # Fallback: whatever the linux-image-amd64 metapackage points at.
    if [ -z "$kver" ]; then
        kver=$(apt-cache depends linux-image-amd64 2>/dev/null \
                 | sed -nE 's/.*Depends: linux-image-(6\.[0-9.]+-[0-9]+-amd64)$/\1/p' | head -1)
    fi
    # Last resort: a 6.1 kernel already installed here.
    if [ -z "$kver" ]; then
        kver=$(ls /boot 2>/dev/null | sed -nE 's/^vmlinuz-(6\.1\.0-[0-9]+-amd64)$/\1/p' | sort -V | tail -1)
    fi
    [ -n "$kver" ] || die "no linux-image-6.1.0-*-amd64 offered by apt (run apt-get update?)"
    log "guest kernel: $kver"
}

# --- stage: packages -----------------------------------------------------------------------------
install_packages() {
    # This machine does not boot from /boot (its running kernel is not there: a container or a
    # Firecracker VM): skip the host initramfs that the kernel package would generate (~1.5 min of
    # update-initramfs). The guest boots with our own initramfs. On a machine that boots from
    # /boot, keep Debian's behaviour: a kernel without initramfs would not boot.
    if [ ! -e "/boot/vmlinuz-$(uname -r)" ]; then
        export INITRD=No
    fi
    # Kernel and headers first, so that zfs-dkms (installed after) builds for the guest kernel.
    local groups=(
        "linux-image-$kver linux-headers-$kver"
        "qemu-system-x86 cpio busybox-static lvm2 thin-provisioning-tools xfsprogs btrfs-progs e2fsprogs kmod"
        "dkms zfs-dkms zfsutils-linux"
    )
    local g p missing
    for g in "${groups[@]}"; do
        missing=()
        for p in $g; do is_installed "$p" || missing+=("$p"); done
        [ ${#missing[@]} = 0 ] && continue
        log "installing ${missing[*]}"
        # The dkms build for the host's own running kernel fails (no headers for it): harmless,
        # but it can make this apt-get exit non-zero. What matters is checked in the next stage.
        apt_get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
            || log "apt-get install returned non-zero (expected if dkms failed for $(uname -r)); checking"
        for p in "${missing[@]}"; do
            is_installed "$p" || [ "$p" = zfs-dkms ] || [ "$p" = zfsutils-linux ] \
                || die "package $p did not install"
        done
    done
    # A failed build for the running kernel can leave zfs-dkms/zfsutils half-configured.
    dpkg --configure -a >/dev/null 2>&1 || true
    [ -e "/boot/vmlinuz-$kver" ] || die "/boot/vmlinuz-$kver missing after installing linux-image-$kver"
    [ -d "/lib/modules/$kver/build" ] || die "headers for $kver missing (/lib/modules/$kver/build)"
}

# --- stage: zfs module for the guest kernel ------------------------------------------------------
zfs_ver=""
zfs_ko() { modinfo -k "$kver" -F filename zfs 2>/dev/null | grep -v '^(builtin)' | head -1; }
zfs_module() {
    zfs_ver=$(dpkg-query -W -f='${Version}' zfs-dkms | sed -E 's/^[0-9]+://; s/-[^-]*$//')
    [ -n "$zfs_ver" ] || die "zfs-dkms is not installed"
    local tarball="$cache/zfs-modules-$zfs_ver-$kver.tar"
    local moddir="/lib/modules/$kver/updates/dkms"
    mkdir -p "$cache"
    depmod "$kver"
    local ko; ko=$(zfs_ko)
    if [ -n "$ko" ] && [ -e "$ko" ]; then
        log "zfs $zfs_ver module present for $kver: $ko"
    elif [ -s "$tarball" ]; then
        log "restoring zfs $zfs_ver modules for $kver from $tarball"
        mkdir -p "$moddir"
        tar -C "$moddir" -xf "$tarball"
        depmod "$kver"
    else
        log "building zfs $zfs_ver for $kver with dkms (takes ~4 min on 2 cores)"
        # "build" may say it is already built; "install" then does the rest. The .ko check below
        # is what decides.
        dkms build "zfs/$zfs_ver" -k "$kver" >"$cache/dkms-build.log" 2>&1 || true
        dkms install --force "zfs/$zfs_ver" -k "$kver" >>"$cache/dkms-build.log" 2>&1 \
            || { tail -30 "$cache/dkms-build.log" >&2; die "dkms could not build/install zfs/$zfs_ver for $kver (log: $cache/dkms-build.log)"; }
        depmod "$kver"
    fi
    ko=$(zfs_ko)
    [ -n "$ko" ] && [ -e "$ko" ] \
        || die "no zfs.ko for guest kernel $kver after build (see 'dkms status' and $cache/dkms-build.log)"
    local vm; vm=$(modinfo -F vermagic "$ko" | awk '{print $1}')
    [ "$vm" = "$kver" ] || die "$ko is built for '$vm', not $kver"
    modinfo -k "$kver" -F filename spl >/dev/null 2>&1 || die "no spl.ko for guest kernel $kver"
    # Cache the built modules so that a reinstall of the packages does not rebuild them.
    if [ ! -s "$tarball" ]; then
        local d; d=$(dirname "$ko")
        (cd "$d" && tar -cf "$tarball.tmp" -- *.ko*) && mv "$tarball.tmp" "$tarball"
        log "cached modules in $tarball"
    fi
}

# --- stage: initramfs ----------------------------------------------------------------------------
initrd=""
init_sha=""
build_initramfs() {
    init_sha=$(sha256sum "$init_src" | cut -c1-16)
    local bb_ver; bb_ver=$(dpkg-query -W -f='${Version}' busybox-static | tr ':~+' '___')
    initrd="$cache/initrd-$kver-$init_sha-bb$bb_ver.gz"  # name known to tests/vm/harness.py
    if [ -s "$initrd" ]; then
        log "initramfs cached: $initrd"
        return
    fi
    local root; root=$(mktemp -d)
    mkdir -p "$root"/{bin,mods,proc,sys,dev,newroot}
    cp /bin/busybox "$root/bin/busybox"
    file_is_static /bin/busybox
    local m f
    for m in "${initrd_mods[@]}"; do
        f=$(modinfo -k "$kver" -F filename "$m" 2>/dev/null) || die "module $m not found for $kver"
        case "$f" in
            "(builtin)") continue ;;  # nothing to load
            *.ko) cp "$f" "$root/mods/$m.ko" ;;
            *.ko.xz) xz -dc "$f" >"$root/mods/$m.ko" ;;
            *.ko.zst) zstd -qdc "$f" >"$root/mods/$m.ko" ;;
            *.ko.gz) gzip -dc "$f" >"$root/mods/$m.ko" ;;
            *) die "unexpected module file $f" ;;
        esac
    done
    install -m 0755 "$init_src" "$root/init"
    (cd "$root" && find . -print0 | sort -z | cpio --null -o -H newc --quiet) | gzip -6 >"$initrd.tmp"
    [ -s "$initrd.tmp" ] || die "empty initramfs"
    rm -rf "$root"
    mv "$initrd.tmp" "$initrd"
    # Other checkouts (other init scripts) share this cache: prune only old images.
    find "$cache" -maxdepth 1 -name 'initrd-*.gz' ! -newermt '-30 days' ! -path "$initrd" -delete
    log "built $initrd ($(du -h "$initrd" | cut -f1))"
}
file_is_static() {
    # busybox-static's binary; a dynamic busybox would not run in the initramfs.
    if ldd "$1" >/dev/null 2>&1; then die "$1 is dynamically linked; install busybox-static"; fi
}

# --- stage: manifest -----------------------------------------------------------------------------
write_manifest() {
    local qemu; qemu=$(command -v qemu-system-x86_64) || die "qemu-system-x86_64 not found"
    local tmp="$cache/guest.env.tmp"
    {
        echo "# written by scripts/vm-setup.sh; read by tests/vm/harness.py"
        echo "KVER=$kver"
        echo "KERNEL=/boot/vmlinuz-$kver"
        echo "# the harness picks the initramfs of its own checkout: initrd-<KVER>-<sha16 of init>-*.gz"
        echo "INITRD=$initrd"
        echo "ZFS_VERSION=$zfs_ver"
        echo "ZFS_KO=$(zfs_ko)"
        echo "QEMU=$qemu"
    } >"$tmp"
    mv "$tmp" "$cache/guest.env"
    log "manifest: $cache/guest.env"
}

# All of the script is parsed before it runs (main is called on the last line): a checkout that
# changes under a running setup does not change what it does.
main() {
    mkdir -p "$cache"
    stage "apt sources" enable_contrib
    stage "pick kernel" pick_kernel
    stage "packages" install_packages
    stage "zfs module" zfs_module
    stage "initramfs" build_initramfs
    stage "manifest" write_manifest
    awk -v k="$kver" -v z="$zfs_ver" -v a="$t_script" -v b="$(date +%s.%N)" \
        'BEGIN { printf "vm-setup: ready (guest kernel %s, zfs %s) in %.1f s total\n", k, z, b - a }' >&2
}

main "$@"

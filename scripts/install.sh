#!/usr/bin/env bash
# Install snapagent from this checkout as a package, independent of the checkout (Debian 12, root):
#   /opt/snapagent                      a venv holding a wheel built from the checkout, and its deps
#   /usr/local/bin/snapagent            -> /opt/snapagent/bin/snapagent
#   /etc/snapagent/snapagent.toml       the example config, 0600 (dir 0700) — only when there is none
#   /usr/local/share/doc/snapagent/     README, docs/, examples/ (where the units' Documentation= points)
#   /etc/systemd/system/                snapagent@.service, snapagent-drill@.service + .timer (templates)
# Re-running it upgrades in place (the config is never touched). Uninstall: the same script with
# --uninstall, or /opt/snapagent/bin/snapagent-uninstall (a copy, for when the checkout is gone).
#
# Usage: scripts/install.sh [--root DIR] [--find-links DIR] [--no-index]
#        scripts/install.sh --uninstall [--purge] [--root DIR]
#   --root DIR        install below DIR instead of / (an image, a test); the result runs from DIR;
#                     apt and systemctl are skipped
#   --find-links DIR  also take wheels (snapagent's dependencies, setuptools for the build) from DIR;
#   --no-index        only from there: an offline install
#   --purge           uninstall: also remove /etc/snapagent and /var/lib/snapagent (never the backups)
set -euo pipefail
shopt -s nullglob

self=$(readlink -f "$0")
here=$(cd "$(dirname "$self")/.." && pwd)
root=/
mode=install
purge=0
pipopts=()
[ "$(basename "$0")" = snapagent-uninstall ] && mode=uninstall
while [ $# -gt 0 ]; do
    case "$1" in
        --root) root=${2:?--root needs a directory}; shift ;;
        --find-links) pipopts+=(--find-links "${2:?--find-links needs a directory}"); shift ;;
        --no-index) pipopts+=(--no-index) ;;
        --uninstall) mode=uninstall ;;
        --purge) purge=1 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$self" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
    shift
done
case "$root" in /*) ;; *) echo "install.sh: --root $root: must be an absolute path" >&2; exit 2 ;; esac
[ -d "$root" ] || { echo "install.sh: --root $root: not a directory" >&2; exit 2; }
root=$(cd "$root" && pwd)
r=${root%/}   # prefix for every installed path ("" for /)

prefix=$r/opt/snapagent
marker=$prefix/.snapagent-install
bin=$r/usr/local/bin/snapagent
doc=$r/usr/local/share/doc/snapagent
confdir=$r/etc/snapagent
statedir=$r/var/lib/snapagent
unitdir=$r/etc/systemd/system
host_systemd=0
[ -z "$r" ] && [ -d /run/systemd/system ] && host_systemd=1
say() { echo "install.sh: $*" >&2; }

do_uninstall() {
    if [ -e "$prefix" ] && [ ! -e "$marker" ]; then
        say "$prefix was not made by this script (no $(basename "$marker")): left alone"; exit 1
    fi
    local exe=$prefix/bin/snapagent
    if [ -x "$exe" ]; then
        local enabled=()
        for w in "$unitdir"/*.wants/snapagent@?*.timer "$unitdir"/*.wants/snapagent-drill@?*.timer; do
            enabled+=("$(basename "$w")")
        done
        if [ $host_systemd = 1 ] && [ ${#enabled[@]} -gt 0 ]; then
            systemctl disable --now "${enabled[@]}" >&2 || true
        fi
        # only the units snapagent wrote (their first line says so), timers and cron file alike
        "$exe" schedule remove --root "$root" >&2
        "$exe" schedule remove --cron --root "$root" >&2
        for w in "$unitdir"/*.wants/snapagent@?*.timer "$unitdir"/*.wants/snapagent-drill@?*.timer; do
            if [ -L "$w" ] && [ ! -e "$w" ]; then rm -f "$w"; say "removed $w (it enabled a unit that is gone)"; fi
        done
        if [ $host_systemd = 1 ]; then systemctl daemon-reload; fi
    fi
    if [ -L "$bin" ]; then
        case "$(readlink "$bin")" in "$prefix"/*) rm -f "$bin"; say "removed $bin" ;; esac
    fi
    if [ -e "$bin" ] || [ -L "$bin" ]; then say "left $bin: it does not point into $prefix"; fi
    if [ -d "$doc" ]; then rm -rf "$doc"; say "removed $doc"; fi
    if [ -d "$prefix" ]; then rm -rf "$prefix"; say "removed $prefix"; fi
    if [ $purge = 1 ]; then
        rm -rf "$confdir" "$statedir"
        say "purged $confdir and $statedir"
    else
        if [ -d "$confdir" ]; then say "kept $confdir (the config and secrets; --purge removes it)"; fi
        if [ -d "$statedir" ]; then say "kept $statedir (journals, locks, run status; --purge removes it)"; fi
    fi
    say "kept every backup in the targets (targets.*.path, restic repositories): remove them yourself"
}

# the packages the agent runs (as scripts/bootstrap.sh installs them), and the venv module
apt_needs() {
    local pkgs=(btrfs-progs tar zstd sqlite3 acl attr util-linux python3-venv) missing=()
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "apt: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

do_install() {
    [ -f "$here/pyproject.toml" ] && [ -d "$here/snapagent" ] \
        || { say "$here is not a snapagent checkout: run the install from one (the uninstaller cannot install)"; exit 2; }
    if [ -e "$prefix" ] && [ ! -e "$marker" ]; then
        say "$prefix exists and is not a snapagent install (a checkout? move it away, e.g. mv $prefix $prefix-src)"
        exit 1
    fi
    case "$here/" in "$prefix"/*) say "the checkout $here lies inside $prefix: move it elsewhere first"; exit 1 ;; esac
    if [ -e "$bin" ] && [ ! -L "$bin" ]; then
        say "$bin exists and is not a symlink: move it away first (nothing was changed)"; exit 1
    fi
    if [ -z "$r" ]; then apt_needs; fi
    local upgrade=0
    [ -e "$marker" ] && upgrade=1
    # global: the EXIT trap runs after this function returned
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    # Build from a clean copy: never from the checkout's build/ (it keeps removed modules).
    mkdir "$tmp/src"
    tar -C "$here" --exclude=__pycache__ -cf - pyproject.toml README.md snapagent plugins | tar -C "$tmp/src" -xf -
    mkdir -p "$prefix"
    printf 'snapagent installed by scripts/install.sh; %s/bin/snapagent-uninstall removes it\n' "${prefix#"$r"}" >"$marker"
    [ -x "$prefix/bin/python" ] || /usr/bin/python3 -m venv "$prefix"
    # The build runs in the venv itself (its build requirements installed once, kept for upgrades)
    # rather than in a throw-away isolated environment that pip would rebuild on every run.
    mapfile -t breq < <("$prefix/bin/python" -c 'import sys, tomllib
print(*tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"], sep="\n")' "$tmp/src/pyproject.toml")
    "$prefix/bin/pip" install -q --disable-pip-version-check "${pipopts[@]}" "${breq[@]}"
    "$prefix/bin/pip" wheel -q --no-deps --no-build-isolation --disable-pip-version-check -w "$tmp/wheel" "$tmp/src"
    local whl=("$tmp"/wheel/snapagent-*.whl)
    # deps first (a same-version snapagent is "already satisfied"), then snapagent itself, always
    "$prefix/bin/pip" install -q --disable-pip-version-check "${pipopts[@]}" "${whl[0]}[postgres,mysql]"
    "$prefix/bin/pip" install -q --disable-pip-version-check --no-deps --force-reinstall "${whl[0]}"
    install -m 0755 "$self" "$prefix/bin/snapagent-uninstall"
    mkdir -p "$(dirname "$bin")"
    ln -sfn "$prefix/bin/snapagent" "$bin.tmp.$$" && mv -T "$bin.tmp.$$" "$bin"

    if [ -e "$confdir/snapagent.toml" ]; then
        say "kept $confdir/snapagent.toml (never overwritten; the example is in $doc/examples)"
    else
        install -d -m 0700 "$confdir"
        install -m 0600 "$here/etc/snapagent.toml" "$confdir/snapagent.toml"
        say "wrote $confdir/snapagent.toml (the example, 0600): edit it"
    fi

    rm -rf "$doc"
    install -d -m 0755 "$doc/docs" "$doc/examples"
    install -m 0644 "$here/README.md" "$doc/"
    install -m 0644 "$here"/docs/*.md "$doc/docs/"
    cp -R "$here"/etc/. "$doc/examples/"
    chmod -R u=rwX,go=rX "$doc"

    local service=$unitdir/snapagent@.service
    if [ -f "$service" ] && grep -q '^ExecStart=.* -c ' "$service"; then
        say "kept $service: it names another config; re-run \`snapagent -c CONFIG schedule install\`"
    else
        mkdir -p "$unitdir"
        "$bin" schedule install --templates --root "$root" >&2
    fi
    if [ $host_systemd = 1 ]; then systemctl daemon-reload; fi

    say "$([ $upgrade = 1 ] && echo upgraded || echo installed) $("$bin" --version) in $prefix"
    say "next: edit ${confdir#"$r"}/snapagent.toml; snapagent config check; snapagent schedule install;"
    say "      systemctl enable --now snapagent@JOB.timer snapagent-drill@JOB.timer"
}

"do_$mode"

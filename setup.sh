#!/usr/bin/env bash
# vmrig set-up for a Debian 12 host that has Rust and Python.
#
#   ./setup.sh         install what is missing (apt-get), build vmrig, boot the demo guest
#   ./setup.sh --deps  only install what is missing
#
# It decides from the commands and files vmrig needs, not from package names:
# whatever the host already has (a backported qemu-utils, a dynamic busybox) is
# checked like everything else. What is missing or mismatched is installed in
# one apt transaction, then everything is checked again; anything still missing
# is named and the script exits non-zero before building. Idempotent; works as
# root or through sudo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

say() { echo "setup: $*" >&2; }

# What vmrig needs, as "check argument package":
#   cmd NAME        a command on PATH
#   static NAME     a statically linked command (it runs in the guest before any library)
#   openbsd-nc      nc must be OpenBSD's (the Machine API uses -U and -N)
#   kernel          a Debian kernel in /boot with its modules (guests boot it; the
#                   running kernel may be neither, in containers and CI)
# QEMU (and qemu-img for disk images), vde2 (the reference switch for interop
# tests), busybox and bash that guests are made of, coreutils and OpenBSD nc for
# the Machine API, the programs the examples put into guests, mmdebstrap and
# e2fsprogs for the debian flavour's images, tesseract for OCR.
needs=(
    "cmd qemu-system-x86_64 qemu-system-x86"
    "cmd qemu-img qemu-utils"
    "cmd vde_switch vde2"
    "cmd vde_plug vde2"
    "static busybox busybox-static"
    "static bash-static bash-static"
    "cmd base64 coreutils"
    "cmd timeout coreutils"
    "openbsd-nc nc netcat-openbsd"
    "cmd ip iproute2"
    "cmd ping iputils-ping"
    "cmd curl curl"
    "cmd jq jq"
    "cmd xz xz-utils"
    "cmd tesseract tesseract-ocr"
    "cmd mmdebstrap mmdebstrap"
    "cmd mkfs.ext4 e2fsprogs"
    "kernel - linux-image-$(dpkg --print-architecture)"
)

# PATH as root sees it: the tools live in sbin directories too.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

# check KIND NAME: exit status 0 when the need is met, else prints why.
check() {
    local kind=$1 name=$2 path
    case $kind in
    cmd)
        command -v "$name" >/dev/null || { echo "no \`$name\` on PATH"; return 1; }
        ;;
    static)
        path=$(command -v "$name") || { echo "no \`$name\` on PATH"; return 1; }
        if LC_ALL=C ldd "$path" 2>&1 | grep -q '=>'; then
            echo "$path is dynamically linked"
            return 1
        fi
        ;;
    openbsd-nc)
        command -v "$name" >/dev/null || { echo "no \`$name\` on PATH"; return 1; }
        nc -h 2>&1 | grep -q OpenBSD || { echo "\`nc\` is not OpenBSD's netcat"; return 1; }
        ;;
    kernel)
        local k
        for k in /boot/vmlinuz-*; do
            [ -e "$k" ] && [ -f "/lib/modules/${k#/boot/vmlinuz-}/modules.dep" ] && return 0
        done
        echo "no /boot/vmlinuz-* with its modules in /lib/modules"
        return 1
        ;;
    esac
}

# QEMU's parts must come from one release: apt removes a backported qemu-utils
# when it installs bookworm's qemu-system-x86 (and the reverse).
installed_version() { dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null | awk '/install ok installed/ {print $4}'; }
upstream() { local v=${1#*:}; echo "${v%%[-+~]*}"; }
available() { apt-cache madison "$1" 2>/dev/null | awk -v v="$2" '$3 == v {found=1} END {exit !found}'; }
candidate() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}'; }

qemu_mismatch() {
    local qs qu
    qs=$(installed_version qemu-system-x86)
    qu=$(installed_version qemu-utils)
    [ -n "$qs" ] && [ -n "$qu" ] && [ "$(upstream "$qs")" != "$(upstream "$qu")" ]
}

# The packages that, installed together, give QEMU's parts one version.
qemu_packages() {
    local qs qu target=
    qs=$(installed_version qemu-system-x86)
    qu=$(installed_version qemu-utils)
    if [ -n "$qs" ] && [ -n "$qu" ] && [ "$(upstream "$qs")" = "$(upstream "$qu")" ]; then
        echo qemu-system-x86 qemu-utils
        return
    fi
    # Keep what the host has chosen where the archive has its partner; else
    # both at the archive's candidate.
    if [ -n "$qu" ] && available qemu-system-x86 "$qu"; then
        target=$qu
    elif [ -n "$qs" ] && available qemu-utils "$qs"; then
        target=$qs
    else
        target=$(candidate qemu-system-x86)
    fi
    if [ -z "$target" ] || [ "$target" = "(none)" ]; then
        echo qemu-system-x86 qemu-utils
    else
        echo "qemu-system-x86=$target" "qemu-utils=$target"
    fi
}

unmet() {
    local need kind name package why
    for need in "${needs[@]}"; do
        read -r kind name package <<<"$need"
        if ! why=$(check "$kind" "$name"); then
            printf '%s\t%s\n' "$package" "$why"
        fi
    done
    if qemu_mismatch; then
        printf '%s\t%s\n' qemu-utils "qemu-img $(upstream "$(installed_version qemu-utils)") and qemu-system-x86_64 $(upstream "$(installed_version qemu-system-x86)") are from different QEMU releases"
    fi
}

missing=$(unmet)
if [ -n "$missing" ]; then
    say "missing or mismatched:"
    printf '%s\n' "$missing" | awk -F'\t' '{print "  " $2 " (" $1 ")"}' >&2
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { say "run as root or install sudo"; exit 1; }
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update -qq
    mapfile -t packages < <(printf '%s\n' "$missing" | cut -f1 | grep -v '^qemu-' | sort -u)
    if printf '%s\n' "$missing" | grep -q '^qemu-'; then
        read -r -a qemu <<<"$(qemu_packages)"
        packages+=("${qemu[@]}")
    fi
    say "installing ${packages[*]}"
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq \
        --allow-downgrades -o Dpkg::Options::=--force-confold "${packages[@]}" >/dev/null
    still=$(unmet)
    if [ -n "$still" ]; then
        say "still missing after installing ${packages[*]}:"
        printf '%s\n' "$still" | awk -F'\t' '{print "  " $2 " (package " $1 ")"}' >&2
        exit 1
    fi
fi
say "host packages are in place ($(qemu-system-x86_64 --version | head -n1), $(qemu-img --version | head -n1))"

if [ "${1:-}" = "--deps" ]; then
    exit 0
fi

say "building vmrig"
cargo build -q -p vmrig
say "running examples/hello (guests are built on first use, then cached)"
./target/debug/vmrig run examples/hello -o target/demo/hello
say "done. Run the whole test suite with ./test.sh"

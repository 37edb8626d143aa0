#!/usr/bin/env bash
# vmrig set-up for a Debian 12 host that has Rust and Python.
#
#   ./setup.sh         install what is missing (apt-get), build vmrig, boot the demo guest
#   ./setup.sh --deps  only install what is missing
#
# Idempotent: packages already installed are not touched, so it is cheap to re-run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

# What guests and tests use: QEMU (and qemu-img for disk images), vde2 (the
# reference switch for interop tests), the static busybox and bash that guests
# are made of, GNU coreutils and OpenBSD nc for the Machine API, and the
# programs the examples put into guests; mmdebstrap and e2fsprogs build the
# debian flavour's images, tesseract reads the screen (OCR).
packages=(
    qemu-system-x86 qemu-utils vde2 busybox-static bash-static coreutils
    netcat-openbsd iproute2 iputils-ping curl jq xz-utils tesseract-ocr
    mmdebstrap e2fsprogs
)
missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done
# Guests boot the host's Debian kernel with its modules; the running kernel may
# be neither (containers, CI), so make sure one is installed.
have_kernel=no
for k in /boot/vmlinuz-*; do
    [ -e "$k" ] && [ -f "/lib/modules/${k#/boot/vmlinuz-}/modules.dep" ] && have_kernel=yes
done
if [ "$have_kernel" = no ]; then
    missing+=("linux-image-$(dpkg --print-architecture)")
fi

if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || { echo "setup: run as root or install sudo" >&2; exit 1; }
        sudo=(sudo)
    fi
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "setup: host packages are in place ($(qemu-system-x86_64 --version | head -n1))" >&2

if [ "${1:-}" = "--deps" ]; then
    exit 0
fi

echo "setup: building vmrig" >&2
cargo build -q -p vmrig
echo "setup: running examples/hello (guests are built on first use, then cached)" >&2
./target/debug/vmrig run examples/hello -o target/demo/hello
echo "setup: done. Run the whole test suite with ./test.sh" >&2

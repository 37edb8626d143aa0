#!/usr/bin/env bash
# The whole vmrig test suite: unit, property, doc and end-to-end tests (real
# QEMU guests under TCG). Installs missing host packages first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
./setup.sh --deps
cargo test --workspace "$@"

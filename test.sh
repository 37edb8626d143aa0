#!/usr/bin/env bash
# The whole vmrig test suite: unit, property, doc and end-to-end tests (real
# QEMU guests under TCG), then the slow ones: the tests marked #[ignore]
# (Debian images built on first use, systemd guests, the nix.dev tutorial's
# examples), so that a plain `cargo test` stays quick. Installs missing host
# packages first. Arguments go to both cargo test runs (e.g. -p vmrig).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
./setup.sh --deps
cargo test --workspace "$@"
cargo test --workspace "$@" -- --ignored

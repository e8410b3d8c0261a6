#!/usr/bin/env bash
# tests/setup-fuzz.sh - installs what tests/fuzz.sh needs, idempotently:
# cargo-fuzz from crates.io (stable toolchain; fuzz.sh builds with
# `--sanitizer none`, so no nightly) and a C++ compiler check (libfuzzer-sys
# compiles libFuzzer). Cheap when already installed: one version check.
set -euo pipefail
CARGO_FUZZ_VERSION=0.13.2

if command -v cargo-fuzz >/dev/null &&
  [ "$(cargo-fuzz --version 2>/dev/null | awk '{print $2}')" = "$CARGO_FUZZ_VERSION" ]; then
  exit 0
fi
command -v c++ >/dev/null || { echo "setup-fuzz.sh: a C++ compiler (c++) is needed to build libFuzzer" >&2; exit 1; }
echo "setup-fuzz.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
cargo install --locked --version "$CARGO_FUZZ_VERSION" cargo-fuzz

#!/usr/bin/env bash
# tests/run.sh - the whole ipnix test suite on a fresh machine.
#
# 1. installs what the suite needs, idempotently, from the package registries:
#    Nix 2.8 (../shared/peers/setup-nix.sh), Kubo 0.22 and Helia 7
#    (../shared/peers/setup-peers.sh), ipfs-car and @helia/verified-fetch (npm),
#    and the tests/setup-*.sh scripts (cargo-fuzz, swh identify, the real-tarball
#    corpus, zip/zstd);
# 2. fetches crates and builds everything (the only step that needs crates.io);
# 3. runs every fuzz target for a bounded time (tests/fuzz.sh), then
# 4. runs the whole suite with cargo --offline inside a fresh network namespace
#    that has nothing but loopback (../shared/peers/sandbox): no test can reach
#    anything beyond 127.0.0.1/::1 and the namespaces the tests create.
#
# Usage: tests/run.sh [extra cargo test args...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$(pwd)
SHARED=${IPNIX_SHARED:-$ROOT/../shared}
[ -d "$SHARED/peers" ] || { echo "run.sh: $SHARED/peers not found (set IPNIX_SHARED)" >&2; exit 1; }
SHARED=$(cd "$SHARED" && pwd)
export IPNIX_SHARED=$SHARED
export PEERS_HOME=${PEERS_HOME:-$HOME/.cache/ipnix-peers}

step() { printf '\n== %s\n' "$*" >&2; }

step "install: Nix, Kubo, Helia, npm tools"
if [ "$(id -u)" = 0 ]; then
  bash "$SHARED/peers/setup-nix.sh"
else
  echo "run.sh: not root: Nix is not installed here; Nix tests will SKIP" >&2
fi
bash "$SHARED/peers/setup-peers.sh"
for setup in tests/setup-*.sh; do
  [ -f "$setup" ] && bash "$setup"
done

step "format"
cargo fmt --all -- --check

step "build (crates.io needed only here)"
cargo fetch --locked
cargo build --workspace --all-targets --offline --locked
cargo clippy --workspace --all-targets --offline --locked -- -D warnings

step "fuzz (every target for FUZZ_SECONDS, default 15 s)"
tests/fuzz.sh

step "test (inside a loopback-only network namespace)"
export IPNIX_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug/ipnix
export RUST_BACKTRACE=1
exec "$SHARED/peers/sandbox" cargo test --workspace --offline --locked --no-fail-fast "$@"

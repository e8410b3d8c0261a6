#!/usr/bin/env bash
# setup-verified-fetch.sh - install @helia/verified-fetch (npm), the real
# trustless-gateway client node/tests/net_gateway.rs points at the daemon.
#
# Idempotent: installs exactly tests/js/verified-fetch/package-lock.json
# (`npm ci`) into $PEERS_HOME/verified-fetch (PEERS_HOME defaults to
# ~/.cache/ipnix-peers) unless that lock is already installed there. The lock
# pins undici 7 (package.json `overrides`): undici 8, which a fresh resolve
# picks, needs Node 22 and breaks on this machine's Node 20. The npm registry
# is only contacted when installing. --ignore-scripts: nothing from the
# packages runs at install time.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
lock_dir="$here/js/verified-fetch"
PEERS_HOME="${PEERS_HOME:-$HOME/.cache/ipnix-peers}"
prefix="$PEERS_HOME/verified-fetch"
pkg="$prefix/node_modules/@helia/verified-fetch/package.json"

if ! { [ -f "$pkg" ] && cmp -s "$lock_dir/package-lock.json" "$prefix/package-lock.json"; }; then
  command -v npm >/dev/null || { echo "setup-verified-fetch: npm not found" >&2; exit 1; }
  mkdir -p "$prefix"
  cp "$lock_dir/package.json" "$lock_dir/package-lock.json" "$prefix/"
  echo "setup-verified-fetch: installing the pinned @helia/verified-fetch into $prefix" >&2
  (cd "$prefix" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
fi
node -e 'console.log(require(process.argv[1]).version)' "$pkg" >/dev/null \
  || { echo "setup-verified-fetch: $pkg is unreadable" >&2; exit 1; }
echo "$prefix"

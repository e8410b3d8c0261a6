#!/usr/bin/env bash
# setup-rpc-client.sh - installs the real kubo-rpc-client (npm, the version and
# dependency tree pinned by tests/rpc/package-lock.json) for tests/tests/kubo_rpc.rs.
# Idempotent and cached: the packages live in $IPNIX_RPC_CLIENT_HOME
# (default ~/.cache/ipnix-rpc-client/node_modules); a re-run with the same
# lock file changes nothing. Downloads from the npm registry only.
#
# Usage: tests/setup-rpc-client.sh        (prints the node_modules directory)
# The test finds it through the same default, or $IPNIX_RPC_CLIENT_HOME.
set -euo pipefail
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/rpc"
HOME_DIR="${IPNIX_RPC_CLIENT_HOME:-$HOME/.cache/ipnix-rpc-client}"
log() { printf '[setup-rpc-client] %s\n' "$*" >&2; }
command -v node >/dev/null && command -v npm >/dev/null || {
  log "node and npm are required (Node.js >= 20)"; exit 1; }
node_major=$(node -p 'process.versions.node.split(".")[0]')
(( node_major >= 20 )) || { log "Node $(node -v) is too old: need >= 20"; exit 1; }
mkdir -p "$HOME_DIR"
stamp="$HOME_DIR/.installed-lock"
if [ -f "$SRC/package-lock.json" ] && [ -d "$HOME_DIR/node_modules/kubo-rpc-client" ] \
   && cmp -s "$SRC/package-lock.json" "$stamp"; then
  echo "$HOME_DIR/node_modules"; exit 0
fi
cp -f "$SRC/package.json" "$HOME_DIR/package.json"
if [ -f "$SRC/package-lock.json" ]; then
  cp -f "$SRC/package-lock.json" "$HOME_DIR/package-lock.json"
  log "npm ci (kubo-rpc-client, pinned by tests/rpc/package-lock.json)"
  (cd "$HOME_DIR" && npm ci --no-audit --no-fund --loglevel=error >&2)
else
  log "npm install (no lock file yet: writing tests/rpc/package-lock.json)"
  (cd "$HOME_DIR" && npm install --no-audit --no-fund --loglevel=error >&2)
  cp -f "$HOME_DIR/package-lock.json" "$SRC/package-lock.json"
fi
cp -f "$SRC/package-lock.json" "$stamp"
echo "$HOME_DIR/node_modules"

#!/usr/bin/env bash
# setup-ipfs-car.sh - install the `ipfs-car` CLI (npm) used by tests/tests/car_interop.rs.
#
# Idempotent: installs ipfs-car@$IPFS_CAR_VERSION into $PEERS_HOME/ipfs-car
# (PEERS_HOME defaults to ~/.cache/ipnix-peers) unless that exact version is
# already there, then checks that the binary runs without the network and
# prints its path on stdout (last line). Needs node >= 18 and npm; the npm
# registry is only contacted when the pinned version is missing.
# --ignore-scripts: nothing from the package runs at install time.
set -euo pipefail
IPFS_CAR_VERSION="${IPFS_CAR_VERSION:-3.1.0}"
PEERS_HOME="${PEERS_HOME:-$HOME/.cache/ipnix-peers}"
prefix="$PEERS_HOME/ipfs-car"
bin="$prefix/node_modules/.bin/ipfs-car"
pkg="$prefix/node_modules/ipfs-car/package.json"

installed_version() {
  [ -f "$pkg" ] && node -e 'console.log(require(process.argv[1]).version)' "$pkg" 2>/dev/null || true
}

if [ "$(installed_version)" != "$IPFS_CAR_VERSION" ]; then
  command -v npm >/dev/null || { echo "setup-ipfs-car: npm not found" >&2; exit 1; }
  mkdir -p "$prefix"
  echo "setup-ipfs-car: installing ipfs-car@$IPFS_CAR_VERSION into $prefix" >&2
  npm install --prefix "$prefix" "ipfs-car@$IPFS_CAR_VERSION" \
    --ignore-scripts --no-audit --no-fund --loglevel=error >&2
fi

# The tests run it inside a network namespace with only loopback: prove it
# needs nothing else by packing a tiny file with the network unshared when we can.
probe="$(mktemp -d)"
trap 'rm -rf "$probe"' EXIT
printf 'probe\n' > "$probe/f"
run_offline() {
  if [ -z "${IPNIX_SANDBOXED:-}" ] && command -v unshare >/dev/null && unshare -n true 2>/dev/null; then
    unshare -n "$@"
  else
    "$@"
  fi
}
run_offline "$bin" pack "$probe/f" --no-wrap --output "$probe/f.car" >/dev/null 2>&1 \
  || { echo "setup-ipfs-car: $bin does not work offline" >&2; exit 1; }
echo "$bin"

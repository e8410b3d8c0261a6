#!/usr/bin/env bash
# setup-archivers.sh - the real archivers the unpacker is compared against
# (GNU tar is always there; zip and zstd may not be). Idempotent: nothing
# happens when both are installed. Debian packages.
set -euo pipefail
missing=()
command -v zip >/dev/null || missing+=(zip)
command -v zstd >/dev/null || missing+=(zstd)
[ "${#missing[@]}" -eq 0 ] && exit 0
[ "$(id -u)" = 0 ] || { echo "setup-archivers: not root; ${missing[*]} missing, those tests will SKIP" >&2; exit 0; }
echo "setup-archivers: installing ${missing[*]}" >&2
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
  || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; }

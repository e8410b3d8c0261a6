#!/usr/bin/env bash
# setup-chromium.sh - Debian's headless-capable Chromium, which
# tests/status_page.rs renders the daemon's status page in. Idempotent:
# nothing happens when `chromium` is on PATH. Debian packages only.
set -euo pipefail
command -v chromium >/dev/null && exit 0
[ "$(id -u)" = 0 ] || { echo "setup-chromium: not root; chromium missing, tests/status_page.rs will SKIP" >&2; exit 0; }
echo "setup-chromium: installing chromium" >&2
# Fonts so the screenshot shows text; chromium itself pulls the rest.
packages=(chromium fonts-dejavu-core)
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}" >&2 \
  || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${packages[@]}" >&2; }

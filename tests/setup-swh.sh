#!/usr/bin/env bash
# setup-swh.sh - Software Heritage's own `swh identify` (PyPI swh.model[cli]),
# the reference the SWHID tests compare ipnix against. Idempotent: nothing
# happens when it is already installed.
set -euo pipefail
if command -v swh >/dev/null && swh identify --help >/dev/null 2>&1; then
  exit 0
fi
echo "setup-swh: installing swh.model[cli] from PyPI" >&2
python3 -m pip install --quiet --disable-pip-version-check 'swh.model[cli]>=8,<9'
swh identify --help >/dev/null

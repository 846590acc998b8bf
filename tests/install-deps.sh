#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, on a fresh
# Debian machine as root: Node.js and npm, openssl (certificates for the TLS
# test) and Chromium (the status page test), each from Debian only if
# missing; then the npm packages pinned in tests/nakama-js/package-lock.json
# and tests/browser/package-lock.json.
set -euo pipefail
cd "$(dirname "$0")"
missing=()
command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm)
command -v openssl >/dev/null || missing+=(openssl)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && apt-get install -y -qq "${missing[@]}"
fi
(cd nakama-js && npm ci --no-audit --no-fund --loglevel=error)
(cd browser && npm ci --no-audit --no-fund --loglevel=error)

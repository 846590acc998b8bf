#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain: Node.js and
# npm (from Debian, if missing) and the npm packages pinned in
# tests/nakama-js/package-lock.json.
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt-get update -qq && apt-get install -y -qq nodejs npm
fi
(cd nakama-js && npm ci --no-audit --no-fund --loglevel=error)

#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, on a fresh
# Debian machine as root: Node.js and npm, openssl (certificates for the TLS
# test), Chromium (the status page test) and the PostgreSQL server programs
# (initdb, postgres, psql: the --database-url tests run a server of their
# own, see tests/common/postgres.rs), each from Debian only if missing; then
# the npm packages pinned in tests/nakama-js/package-lock.json and
# tests/browser/package-lock.json.
set -euo pipefail
cd "$(dirname "$0")"
missing=()
command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm)
command -v openssl >/dev/null || missing+=(openssl)
[ -x /usr/bin/chromium ] || missing+=(chromium)
# Where tests/common/postgres.rs looks: pg_config's bindir, or Debian's versioned directories.
have_postgres() {
  local dir
  for dir in "$(pg_config --bindir 2>/dev/null)" /usr/lib/postgresql/*/bin; do
    [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ] && [ -x "$dir/psql" ] && return 0
  done
  return 1
}
have_postgres || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
(cd nakama-js && npm ci --no-audit --no-fund --loglevel=error)
(cd browser && npm ci --no-audit --no-fund --loglevel=error)

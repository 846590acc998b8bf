#!/usr/bin/env bash
# Runs the whole test suite: Rust unit and integration tests (among them
# tests/cluster, which runs nats-server and kills processes by PID; it needs
# the nats-server install-deps.sh provides, and root for its network
# namespaces), then the
# official Nakama JavaScript client (JSON, protobuf, TLS) against a freshly
# built herald, and on a 3-node cluster (nats-server and PostgreSQL from
# tests/install-deps.sh), then the /status-demo page in headless Chromium,
# then the fault-injection test (a debug herald built with that feature, so
# the release binary the other suites use never has it). Installs what it
# needs (see tests/install-deps.sh). Screenshots of the page go to
# $ARTIFACTS_DIR (default: <target dir>/browser-artifacts).
set -euo pipefail
cd "$(dirname "$0")/.."
# The soak and fan-out tests hold thousands of sockets per process: every
# process started from here gets the hard limit of open files (20,000 here)
# as its soft limit, as soak-cluster.sh does.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
root=$PWD
target=${CARGO_TARGET_DIR:-$root/target}

echo "==> test dependencies"
bash tests/install-deps.sh

echo "==> building herald (release)"
cargo build --release --bin herald

echo "==> Rust unit and integration tests"
cargo test --release --workspace

echo "==> nakama-js suites (JSON, protobuf, mixed, TLS; JSON and protobuf on a 3-node cluster)"
cd "$root/tests/nakama-js"
HERALD_BIN="$target/release/herald" npm test

echo "==> status page in headless Chromium"
cd "$root/tests/browser"
HERALD_BIN="$target/release/herald" \
  ARTIFACTS_DIR="${ARTIFACTS_DIR:-$target/browser-artifacts}" npm test

echo "==> fault injection (herald built with --features fault-injection)"
cd "$root"
# The dev profile: its own output directory (target/debug), so the release
# binary the other suites use never has the feature, and no second release
# build of every dependency.
cargo test --features fault-injection --test fault_injection

#!/usr/bin/env bash
# The whole soak rig on one box: nats-server, Postgres 15 and K Herald nodes
# (127.0.0.11, .12, …, each with its own admin listener), then `loadgen soak`
# against them; every process it started is stopped by PID at the end, also
# on failure or Ctrl-C. The last line printed is the soak's JSON summary;
# the exit status is 0 only if every check held.
#
#   loadgen/soak-cluster.sh --connections N --minutes M [--nodes K] [-- SOAK FLAGS…]
#
# K defaults to ceil(N / 19,500) (each process may hold 20,000 files here).
# The ramp defaults to 1,000 connects/s (pass `-- --ramp-per-sec R`).
# SOAK_KEEP=1 keeps the work directory (node, NATS and Postgres logs);
# SOAK_HOLD_SECS=S keeps the rig running S seconds after the soak, to probe it.
# Binaries: $HERALD and $LOADGEN, else $CARGO_TARGET_DIR/release (else
# target/release), built first with `cargo build --release`. Tokens are
# minted offline with the nodes' encryption key
# (Herald's default, `defaultencryptionkey`), and the nodes run with
# --follow-unknown-ids, so follows of these users (no account row) are
# kept; accounts made over HTTP (e.g. a nakama-js suite) live in Postgres.
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
# Without $HERALD and $LOADGEN, the release binaries are built first (a
# no-op when they are up to date).
BUILD=; [ -n "${HERALD:-}" ] && [ -n "${LOADGEN:-}" ] || BUILD=1
HERALD=${HERALD:-$TARGET/release/herald}
LOADGEN=${LOADGEN:-$TARGET/release/loadgen}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
KEY=defaultencryptionkey
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
NATS_PORT=${NATS_PORT:-$(free_port)}
PG_PORT=${PG_PORT:-$(free_port)}

N= M= K=
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --connections) N=$2; shift 2 ;;
    --minutes) M=$2; shift 2 ;;
    --nodes) K=$2; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) echo "usage: $0 --connections N --minutes M [--nodes K] [-- soak flags]" >&2; exit 2 ;;
  esac
done
[[ "$N" =~ ^[0-9]+$ && "$M" =~ ^[0-9.]+$ ]] || { echo "usage: $0 --connections N --minutes M [--nodes K]" >&2; exit 2; }
[ -n "$K" ] || K=$(( (N + 19499) / 19500 ))
[ "$K" -ge 1 ] && [ "$K" -le 200 ] || { echo "--nodes must be 1..200" >&2; exit 2; }
if [ -n "$BUILD" ]; then
  echo "building: cargo build --release --workspace --bins" >&2
  (cd "$ROOT" && cargo build --release --workspace --bins) || { echo "the build failed" >&2; exit 2; }
fi
for b in "$HERALD" "$LOADGEN"; do
  [ -x "$b" ] || { echo "missing $b: cargo build --release --workspace --bins" >&2; exit 2; }
done

WORK=$(mktemp -d /var/tmp/herald-soak.XXXXXX)
chmod 755 "$WORK"
PIDS=()      # every process started here, in start order
PG_STARTED=

stop_pid() { # PID: SIGTERM, up to 10 s, then SIGKILL
  local pid=$1 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
}
cleanup() {
  local i
  trap - EXIT INT TERM
  for (( i=${#PIDS[@]}-1; i>=0; i-- )); do stop_pid "${PIDS[$i]}"; done
  wait 2>/dev/null
  if [ -n "$PG_STARTED" ] && [ -f "$WORK/pg/data/postmaster.pid" ]; then
    stop_pid "$(head -1 "$WORK/pg/data/postmaster.pid")"
  fi
  if [ -n "${SOAK_KEEP:-}" ]; then echo "soak-cluster: kept $WORK (logs)" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'echo "soak-cluster: interrupted" >&2; exit 130' INT TERM

# Kernel settings for many loopback sockets, where allowed.
set_sysctl() {
  if sysctl -w "$1=$2" >/dev/null 2>&1; then
    echo "sysctl: set $1=$2"
  else
    echo "sysctl: could not set $1 (stays $(sysctl -n "$1" 2>/dev/null | tr '\t' ' '))"
  fi
}
set_sysctl net.ipv4.ip_local_port_range "10000 65000"
set_sysctl net.core.somaxconn 65535
set_sysctl net.ipv4.tcp_max_syn_backlog 65535
set_sysctl net.ipv4.tcp_mem "786432 1048576 1572864"
ulimit -n "$(ulimit -Hn)" && echo "ulimit -n: $(ulimit -n)"

# NATS with JetStream.
NATS=$ROOT/tests/.deps/nats-server
[ -x "$NATS" ] || bash "$ROOT/tests/install-deps.sh" || { echo "no nats-server" >&2; exit 1; }
"$NATS" -js -sd "$WORK/nats" -a 127.0.0.1 -p "$NATS_PORT" >"$WORK/nats.log" 2>&1 &
NATS_PID=$!; PIDS+=("$NATS_PID")
for i in $(seq 100); do grep -q "Server is ready" "$WORK/nats.log" && break; sleep 0.1; done
grep -q "Server is ready" "$WORK/nats.log" || { echo "nats-server did not start:"; cat "$WORK/nats.log"; exit 1; } >&2
echo "nats: pid $NATS_PID, nats://127.0.0.1:$NATS_PORT"

# Postgres (refuses to run as root: as the postgres user, in $WORK/pg).
install -d -o postgres "$WORK/pg"
echo secret >"$WORK/pg/pwfile" && chown postgres "$WORK/pg/pwfile"
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/pg/data" -A scram-sha-256 \
  --pwfile="$WORK/pg/pwfile" -U postgres >"$WORK/pg-init.log" 2>&1 \
  || { echo "initdb failed:"; cat "$WORK/pg-init.log"; exit 1; } >&2
PG_STARTED=1
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/pg/data" -l "$WORK/pg/log" -w \
  -o "-p $PG_PORT -k $WORK/pg -c listen_addresses=127.0.0.1 -c max_connections=400" start >/dev/null \
  || { echo "postgres did not start:"; cat "$WORK/pg/log"; exit 1; } >&2
PGPASSWORD=secret "$PGBIN/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres \
  -c "CREATE ROLE herald LOGIN PASSWORD 'hunter2'" -c "CREATE DATABASE herald OWNER herald" \
  || { echo "psql failed" >&2; exit 1; }
echo "postgres: pid $(head -1 "$WORK/pg/data/postmaster.pid"), 127.0.0.1:$PG_PORT"
DB="postgres://herald:hunter2@127.0.0.1:$PG_PORT/herald?sslmode=disable"

# Herald nodes.
URLS=() WS=() NODE_PIDS=()
for i in $(seq "$K"); do
  addr=127.0.0.$((10 + i))
  "$HERALD" --listen "$addr:7350" --admin-listen "$addr:7351" --data-dir "$WORK/node$i" \
    --node-id "soak$i" --nats-url "nats://127.0.0.1:$NATS_PORT" --database-url "$DB" \
    --encryption-key "$KEY" --follow-unknown-ids >"$WORK/node$i.log" 2>&1 &
  PIDS+=("$!"); NODE_PIDS+=("$!")
  URLS+=("http://$addr:7350"); WS+=("ws://$addr:7350")
done
for i in $(seq "$K"); do
  addr=127.0.0.$((10 + i)); ok=
  for _ in $(seq 300); do
    [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$addr:7351/readyz")" = 200 ] && { ok=1; break; }
    kill -0 "${NODE_PIDS[$((i - 1))]}" 2>/dev/null || break
    sleep 0.2
  done
  [ -n "$ok" ] || { echo "node $i ($addr) not ready:"; tail -20 "$WORK/node$i.log"; exit 1; } >&2
done
join() { local IFS=,; echo "$*"; }
echo "nodes: $(join "${URLS[@]}")"

# The soak: at most 19,000 connections per loadgen process; sources from
# 127.0.1.1 on, clear of the nodes' addresses.
PROCS=$(( (N + 18999) / 19000 ))
# The ramp: 1,000 connects (then follows) per second unless the soak flags
# say otherwise. On this 2-core box a faster ramp starves the nodes' NATS
# connections (PERF.md "Soak").
RAMP=(--ramp-per-sec 1000)
for f in "${EXTRA[@]}"; do case "$f" in --ramp-per-sec|--ramp-per-sec=*) RAMP=() ;; esac; done
SECS=$(awk "BEGIN { printf \"%d\", $M * 60 }")
"$LOADGEN" soak --url "$(join "${WS[@]}")" --token-key "$KEY" \
  --procs "$PROCS" --source-base 127.0.1.1 \
  --server-pid "$(join "${NODE_PIDS[@]}")" --nats-pid "$NATS_PID" \
  --status-url "http://127.0.0.11:7351" \
  --connections "$N" --duration "$SECS" "${RAMP[@]}" "${EXTRA[@]}" >"$WORK/summary.json" &
LG_PID=$!; PIDS+=("$LG_PID")
# Ctrl-C (or SIGINT to this script alone): loadgen gets SIGINT too and
# stops with its summary.
trap 'echo "soak-cluster: interrupted, waiting for the summary" >&2; kill -INT "$LG_PID" 2>/dev/null' INT
wait "$LG_PID"; rc=$?
while kill -0 "$LG_PID" 2>/dev/null; do wait "$LG_PID"; rc=$?; done
trap 'exit 130' INT
if [[ "${SOAK_HOLD_SECS:-}" =~ ^[0-9]+$ ]]; then
  echo "soak-cluster: holding the rig for $SOAK_HOLD_SECS s (SOAK_HOLD_SECS); nats://127.0.0.1:$NATS_PORT" >&2
  sleep "$SOAK_HOLD_SECS"
fi
SUMMARY=$(tail -1 "$WORK/summary.json")
[ -n "$SUMMARY" ] || { SUMMARY='{"checks_passed":false,"error":"loadgen printed no summary"}'; rc=1; }
echo "$SUMMARY"
if [ "$rc" -eq 0 ] && echo "$SUMMARY" | grep -q '"checks_passed":true'; then exit 0; fi
exit 1

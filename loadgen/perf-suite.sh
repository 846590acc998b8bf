#!/usr/bin/env bash
# Runs every measurement PERF.md reports, on this machine, and prints one
# summary table. Each socket scenario gets a fresh herald (new data
# directory, default settings, logs at warn) on 127.0.0.1:7350, then the
# loadgen against it with --server-pid, so that server CPU and RSS are read
# from /proc. Raw JSON lines go to $OUT (default /tmp/herald-perf.jsonl).
#
#   bash loadgen/perf-suite.sh            # everything (about 15 minutes)
#   bash loadgen/perf-suite.sh fanout     # one group: floor fanout mesh lobby
#                                         # memory connect engine
#
# Bounded: every loadgen phase has a timeout, every run a fixed duration.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${CARGO_TARGET_DIR:-$PWD/target}
OUT=${OUT:-/tmp/herald-perf.jsonl}
REPEAT=${REPEAT:-3}
groups=${*:-floor fanout mesh lobby memory connect engine}

cargo build --release --bin herald >/dev/null
cargo build --release -p loadgen --bins --examples >/dev/null
herald=${HERALD:-$target/release/herald}  # $HERALD: another build, for side-by-side runs
loadgen="$target/release/loadgen"
token=(--token-key defaultencryptionkey --source-addrs 4)
: >"$OUT"

server_pid=
start_server() {
  local data
  data=$(mktemp -d /tmp/herald-perf-data.XXXXXX)
  "$herald" --data-dir "$data" --log-level warn --admin-listen off >/dev/null 2>&1 &
  server_pid=$!
  for _ in $(seq 100); do
    curl -s -o /dev/null http://127.0.0.1:7350/ && return 0
    sleep 0.1
  done
  echo "herald did not start" >&2
  exit 1
}
stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=
  fi
}
trap stop_server EXIT

# run LABEL loadgen-args... : one scenario against a fresh server.
run() {
  local label=$1
  shift
  start_server
  echo "==> $label: loadgen $*" >&2
  "$loadgen" "$@" "${token[@]}" --server-pid "$server_pid" 2>/dev/null |
    python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); d["label"]=sys.argv[1]; print(json.dumps(d))' "$label" >>"$OUT"
  stop_server
}

for group in $groups; do
  case $group in
    floor)
      # The kernel's cost of one small write, by how many sockets the writes
      # go round (cache footprint) and by system call.
      for _ in $(seq "$REPEAT"); do
        for sockets in 10 100 2000 9900; do
          rounds=$(( 20000 / sockets > 10 ? 20000 / sockets : 10 ))
          "$target/release/examples/send_floor" "$sockets" "$rounds" 200 |
            python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); d["label"]="send_floor"; print(json.dumps(d))' >>"$OUT"
        done
        # The kernel's cost of accepting one connection (and of opening it).
        "$target/release/examples/connect_floor" >>"$OUT"
      done ;;
    fanout)
      for i in $(seq "$REPEAT"); do
        run fanout fanout --followers 19800 --rounds 10 --seed "$i"
      done ;;
    mesh)
      for rate in 1000 2000 4000 5000; do
        run "mesh-$rate" mesh --users 10000 --follows 50 --rate "$rate" --duration 20 --seed "$rate"
      done ;;
    lobby)
      for rate in 1000 2000; do
        run "lobby-$rate" mesh --users 1000 --lobby --rate "$rate" --duration 20 --seed "$rate"
      done ;;
    memory)
      run memory-idle connect --conns 19800 --settle 3 --seed 11
      run memory-follows mesh --users 19800 --follows 50 --rate 100 --duration 2 --seed 12 ;;
    connect)
      for i in $(seq "$REPEAT"); do
        run connect connect --conns 19800 --settle 1 --seed "$((20 + i))"
      done ;;
    engine)
      for _ in $(seq "$REPEAT"); do
        cargo bench -q --bench engine_scale -- fanout --sessions 1000000 --rounds 10 2>/dev/null |
          grep '^{' >>"$OUT"
      done
      cargo bench -q --bench engine_scale -- memory --sessions 1000000 --follows 50 2>/dev/null |
        grep '^{' >>"$OUT" ;;
    *) echo "unknown group $group" >&2; exit 2 ;;
  esac
done

python3 - "$OUT" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def pick(label):
    return [r for r in rows if r.get("label") == label or r.get("bench") == label]
def line(name, value, unit=""):
    if value is not None:
        print(f"{name:58s} {value:>12.2f} {unit}")
f = pick("send_floor")
for sockets in sorted({r["sockets"] for r in f}):
    for call in ["send", "writev"]:
        line(f"send floor: CPU per {call}, {sockets:,} sockets (median)",
             med([r.get(f"cpu_us_per_{call}") for r in f if r["sockets"] == sockets]), "µs")
f = pick("connect_floor")
line("connect floor: server kernel CPU per connection (median)", med([r["server_cpu_us_per_conn"] for r in f]), "µs")
line("connect floor: client kernel CPU per connection (median)", med([r["client_cpu_us_per_conn"] for r in f]), "µs")
line("connect floor: rate 2 cores allow at those costs (median)", med([r["two_core_bound_per_sec"] for r in f]), "/s")
f = pick("fanout")
line("fanout 19,800: last delivery (median of runs' medians)", med([r.get("median_last_delivery_ms") for r in f]), "ms")
line("fanout 19,800: server CPU per delivery", med([r.get("server_rounds", {}).get("cpu_us_per_delivery") for r in f]), "µs")
line("fanout 19,800: loadgen CPU per event", med([r.get("loadgen_rounds", {}).get("cpu_us_per_event") for r in f]), "µs")
line("fanout 19,800: machine steal during the rounds (median)", med([r.get("server_rounds", {}).get("machine_steal_pct") for r in f]), "%")
print(f"{'fanout 19,800: missing/duplicate/out of order':58s} {sum(r.get('missing',0)+r.get('duplicate',0)+r.get('out_of_order',0) for r in f):>12}")
for label in ["mesh-1000", "mesh-2000", "mesh-4000", "mesh-5000", "lobby-1000", "lobby-2000"]:
    for r in pick(label):
        l = r.get("latency", {})
        print(f"{label:14s} asked {r['asked_deliveries_per_sec']:>9.0f}/s delivered {r['delivered_per_sec_in_window']:>9.0f}/s "
              f"missing {r['missing']} dup {r['duplicate']} ooo {r['out_of_order']} closes {r['server_closes']} "
              f"p50 {l.get('p50_us',0)/1e3:.2f} ms p99 {l.get('p99_us',0)/1e3:.2f} ms max {l.get('max_us',0)/1e3:.1f} ms "
              f"server {r['server_run'].get('cpu_us_per_delivery',0):.2f} µs/delivery loadgen {r['loadgen_run'].get('cpu_us_per_event',0):.2f} µs/event "
              f"steal {r['server_run'].get('machine_steal_pct',0):.1f} %")
for r in pick("memory-idle"):
    line("memory: RSS per idle connection (19,800)", r["server_connect"]["rss_bytes_per_conn"] / 1024, "KiB")
for r in pick("memory-follows"):
    line("memory: RSS per connection with 50 follows (19,800)", r["server_follow"]["rss_bytes_per_conn"] / 1024, "KiB")
    line("follow rate, requests of 100 ids", r["follow_ids_per_sec"], "ids/s")
c = pick("connect")
line("connect rate (median)", med([r.get("connect_per_sec") for r in c]), "/s")
line("connect: server CPU per connection", med([r.get("server_connect", {}).get("cpu_us_per_conn") for r in c]), "µs")
e = pick("engine_scale/fanout")
line("in process: 1M followers, one change (median of runs)", med([r["median_ms"] for r in e]), "ms")
line("in process: shard CPU for it (median)", med([r.get("median_shard_cpu_ms") for r in e]), "ms")
for r in pick("engine_scale/memory"):
    line("in process: RSS, 1M sessions x 50 follows", r["rss_after_mb"], "MB")
    line("in process: bytes per session", r["bytes_per_session"], "B")
EOF

#!/usr/bin/env bash
# The cluster-mode measurements of PERF.md ("Cluster mode"), on this
# machine. Each group starts a fresh local cluster (one nats-server and
# Herald nodes, loadgen/cluster.py: processes started and stopped by PID),
# or a fresh single Herald for the single-node figure beside it, runs
# loadgen with --server-pid (every node) and --nats-pid, and appends one
# JSON line per run to $OUT (default /tmp/herald-cluster-perf.jsonl), with
# the label, the UTC time, the load average before the run, and
# `others_cpu_pct`: the machine's busy CPU over the run not charged to
# the measured processes (nodes, NATS, loadgen), in percent of one core,
# i.e. what anything else on the box took meanwhile.
#
#   bash loadgen/cluster-perf.sh                 # every group (about 25 minutes)
#   bash loadgen/cluster-perf.sh xnode fanout    # groups: xnode fanout mesh start
#
# Needs nats-server 2.11+ ($NATS_SERVER, $HERALD_NATS_SERVER or
# tests/.deps/nats-server). Bounded: every loadgen phase has a timeout,
# every run a fixed duration, every wait a deadline.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
OUT=${OUT:-/tmp/herald-cluster-perf.jsonl}
REPEAT=${REPEAT:-3}
XNODE_SECS=${XNODE_SECS:-60}
groups=${*:-xnode fanout mesh start}

cargo build --release --bin herald >/dev/null
cargo build --release -p loadgen >/dev/null
lg="$CARGO_TARGET_DIR/release/loadgen"
herald="$CARGO_TARGET_DIR/release/herald"
cl=(python3 loadgen/cluster.py)
tok=(--token-key defaultencryptionkey --source-addrs 4)
dir=$(mktemp -d /tmp/herald-cluster-perf.XXXXXX)
single_pid=
fill_pid=

cleanup() {
  if [ -n "$fill_pid" ]; then kill "$fill_pid" 2>/dev/null || true; wait "$fill_pid" 2>/dev/null || true; fi
  if [ -n "$single_pid" ]; then kill "$single_pid" 2>/dev/null || true; wait "$single_pid" 2>/dev/null || true; fi
  "${cl[@]}" stop "$dir" >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT

# Busy CPU (user, nice, system, irq, softirq) of the whole machine, and
# user+system of the measured servers, in ms.
machine_ms() { awk '/^cpu /{print ($2+$3+$4+$7+$8)*10}' /proc/stat; }
servers_ms() {
  local total=0 p
  for p in ${PIDS//,/ } ${NATS_PID:-}; do
    total=$((total + $(awk '{print ($14+$15)*10}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

# cluster N: a fresh cluster of N nodes; sets URLS PIDS ADMINS NATS_PID.
cluster() {
  "${cl[@]}" stop "$dir" >/dev/null
  rm -rf "${dir:?}"/*
  eval "$("${cl[@]}" start "$dir" "$1")"
}

# single: a fresh single-node Herald (no cluster) on 127.0.2.30:7350; sets URLS PIDS.
single() {
  stop_single
  local data
  data=$(mktemp -d "$dir/single.XXXXXX")
  "$herald" --listen 127.0.2.30:7350 --admin-listen off --data-dir "$data" --log-level warn >/dev/null 2>&1 &
  single_pid=$!
  for _ in $(seq 100); do
    curl -s -o /dev/null http://127.0.2.30:7350/ && break
    sleep 0.1
  done
  URLS=ws://127.0.2.30:7350 PIDS=$single_pid NATS_PID=
}
stop_single() {
  if [ -n "$single_pid" ]; then
    kill "$single_pid" 2>/dev/null || true
    wait "$single_pid" 2>/dev/null || true
    single_pid=
  fi
}

# run LABEL loadgen-args...: one loadgen run against $URLS, appended to $OUT.
run() {
  local label=$1 load when
  shift
  load=$(cut -d' ' -f1-3 /proc/loadavg)
  when=$(date -u +%FT%TZ)
  echo "==> $label ($when, load $load): loadgen $*" >&2
  local nats=()
  [ -n "${NATS_PID:-}" ] && nats=(--nats-pid "$NATS_PID")
  local m0 s0 t0 m1 s1 t1 out
  m0=$(machine_ms) s0=$(servers_ms) t0=$(date +%s%3N)
  out=$("$lg" "$@" --url "$URLS" "${tok[@]}" --server-pid "$PIDS" "${nats[@]}" 2>/dev/null)
  m1=$(machine_ms) s1=$(servers_ms) t1=$(date +%s%3N)
  python3 -c '
import json, sys
d = json.loads(sys.argv[1])
m0, m1, s0, s1, t0, t1 = map(int, sys.argv[5:11])
loadgen_ms = d.get("loadgen_total", {}).get("cpu_s", 0) * 1000
others = (m1 - m0) - (s1 - s0) - loadgen_ms
d.update(label=sys.argv[2], when=sys.argv[3], load_before=sys.argv[4],
         others_cpu_pct=round(100 * others / max(t1 - t0, 1), 1))
print(json.dumps(d))' "$out" "$label" "$when" "$load" "$m0" "$m1" "$s0" "$s1" "$t0" "$t1" >>"$OUT"
}

for group in $groups; do
  case $group in
    xnode)
      # C2: 1,000 followers on node B of 100 updaters on node A; the same
      # command with both on A; the same on a single (non-cluster) Herald.
      for i in $(seq "$REPEAT"); do
        cluster 2
        x=(xnode --updaters 100 --followers 1000 --follows 10 --duration "$XNODE_SECS" --seed "$i")
        run xnode-1k-cross "${x[@]}" --rate 1000 --follower-node 1
        run xnode-1k-same "${x[@]}" --rate 1000 --follower-node 0
        y=(xnode --updaters 100 --followers 1000 --follows 1 --duration "$XNODE_SECS" --seed "$i")
        run xnode-10k-cross "${y[@]}" --rate 10000 --follower-node 1
        run xnode-10k-same "${y[@]}" --rate 10000 --follower-node 0
        "${cl[@]}" stop "$dir" >/dev/null
        single
        run xnode-1k-single "${x[@]}" --rate 1000 --follower-node 0
        run xnode-10k-single "${y[@]}" --rate 10000 --follower-node 0
        stop_single
      done ;;
    fanout)
      # C3: one change to 19,800 followers over 2 nodes, against one node.
      for i in $(seq "$REPEAT"); do
        single
        run fanout-single fanout --followers 19800 --rounds 10 --procs 2 --seed "$i"
        stop_single
        cluster 2
        run fanout-2nodes fanout --followers 19800 --rounds 10 --procs 2 --seed "$i"
      done ;;
    mesh)
      # C13: mesh 10,000 x 50 over 2 nodes, by rate; the single node at 4,000/s.
      for rate in 1000 2000 3000 4000; do
        cluster 2
        run "mesh2-$rate" mesh --users 10000 --follows 50 --rate "$rate" --duration 20 --seed "$rate"
      done
      single
      run mesh1-4000 mesh --users 10000 --follows 50 --rate 4000 --duration 20 --seed 4000
      stop_single ;;
    start)
      # C11: six nodes hold 100,000 status=true sessions (10 per user, at
      # most 19,900 sockets per process here), connected at 1,000/s: each
      # user new to a node costs a fetch whose NATS CPU grows with the log
      # (PERF.md), and the full connect rate outruns NATS. Then a seventh
      # node starts, REPEAT times, timed from spawn to /readyz 200. Then its
      # memory per kept presence: on a fresh seventh node, 100 sessions
      # follow 100 users each (10,000 users x 10 sessions: 100,000 presences
      # kept), against the same on another fresh one with users never online.
      cluster 6
      fill_log=$dir/fill.log
      "$lg" connect --url "$URLS" "${tok[@]}" --conns 100000 --sessions-per-user 10 --status \
        --procs 6 --connect-rate 1000 --seed 500 --settle 1 --hold 3600 >"$dir/fill.json" 2>"$fill_log" &
      fill_pid=$!
      for _ in $(seq 600); do
        grep -q holding "$fill_log" && break
        sleep 0.5
      done
      grep -q holding "$fill_log" || { echo "the fill did not finish in 300 s" >&2; exit 1; }
      grep -o 'holding [0-9]* connections' "$fill_log" >&2
      node7() {
        "${cl[@]}" kill "$dir" 7 >/dev/null 2>&1 || true
        rm -rf "$dir/node7"
        "${cl[@]}" node "$dir" 7
      }
      for i in $(seq "$REPEAT"); do
        load=$(cut -d' ' -f1-3 /proc/loadavg)
        line=$(node7)
        echo "$line" >&2
        python3 -c 'import json,sys,re; print(json.dumps({"label": "start-7th", "when": sys.argv[2], "load_before": sys.argv[3], "ready_ms": float(re.search(r"after (\d+) ms", sys.argv[1]).group(1))}))' \
          "$line" "$(date -u +%FT%TZ)" "$load" >>"$OUT"
      done
      for seed in 501 500; do
        node7 >/dev/null
        eval "$("${cl[@]}" env "$dir")"
        label=memory-kept
        [ "$seed" = 501 ] && label=memory-offline
        URLS=ws://127.0.2.17:7350 PIDS=${PIDS##*,} run "$label" connect --conns 100 --follows 100 \
          --follow-rate 5 --follow-seed "$seed" --follow-users 10000 --seed 7001 --settle 2
      done
      kill "$fill_pid" 2>/dev/null || true
      wait "$fill_pid" 2>/dev/null || true
      fill_pid= ;;
    *) echo "unknown group $group" >&2; exit 2 ;;
  esac
done

python3 - "$OUT" <<'EOF'
import json, sys
for r in (json.loads(l) for l in open(sys.argv[1]) if l.strip()):
    label, lat = r.get("label", ""), r.get("latency") or {}
    if label.startswith(("xnode", "mesh")):
        nats = (r.get("nats_run") or {}).get("cpu_us_per_change")
        print(f"{label:18s} {r['when']} load {r['load_before']:14s} others {r.get('others_cpu_pct')} % asked {r['asked_deliveries_per_sec']:>9.0f}/s "
              f"delivered {r['delivered_per_sec_in_window']:>9.0f}/s missing {r['missing']} coalesced {r.get('coalesced')} dup {r['duplicate']} ooo {r['out_of_order']} "
              f"p50 {lat.get('p50_us',0)/1e3:.2f} p99 {lat.get('p99_us',0)/1e3:.2f} p99.9 {lat.get('p999_us',0)/1e3:.2f} max {lat.get('max_us',0)/1e3:.1f} ms "
              f"NATS {nats if nats is None else round(nats, 1)} µs/change steal {r['server_run'].get('machine_steal_pct',0):.1f} %")
    elif label.startswith("fanout"):
        print(f"{label:18s} {r['when']} load {r['load_before']:14s} others {r.get('others_cpu_pct')} % last delivery (median of rounds) {r['median_last_delivery_ms']:.1f} ms "
              f"p50 {r['median_p50_ms']:.1f} ms missing {r['missing']} dup {r['duplicate']} ooo {r['out_of_order']} "
              f"server {r['server_rounds'].get('cpu_us_per_delivery',0):.2f} µs/delivery steal {r['server_rounds'].get('machine_steal_pct',0):.1f} %")
    elif label == "start-7th":
        print(f"{label:18s} {r['when']} load {r['load_before']:14s} ready after {r['ready_ms']:.0f} ms")
    elif label.startswith("memory"):
        f = r.get("follow") or {}
        s = f.get("server") or {}
        print(f"{label:18s} {r['when']} load {r['load_before']:14s} {f.get('ids')} follows, {f.get('snapshot_presences')} presences in snapshots, "
              f"RSS +{s.get('rss_growth_kib')} KiB = {s.get('rss_bytes_per_follow', 0):.0f} B per follow")
EOF

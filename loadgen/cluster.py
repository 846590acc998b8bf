#!/usr/bin/env python3
"""A local Herald cluster for loadgen runs: one nats-server (JetStream, R1)
and N herald nodes on loopback, every process started here and recorded by
PID in DIR/pids; `stop` signals those PIDs only (after checking that each
still runs the program it was started as).

    python3 loadgen/cluster.py start DIR N     # NATS + nodes 1..N, each ready
    python3 loadgen/cluster.py node DIR I      # one more node I: ms to /readyz 200
    python3 loadgen/cluster.py kill DIR I      # SIGTERM node I, wait for it
    python3 loadgen/cluster.py env DIR         # URLS=… PIDS=… NATS_PID=… ADMINS=…
    python3 loadgen/cluster.py stop DIR        # everything started here

Node I listens on ws://127.0.2.(10+I):7350, its admin listener on port 7351
of the same address, with node id `lg<I>` and data directory DIR/node<I>.
NATS listens on a free port of 127.0.0.1 (`-js -sd DIR/nats`).

Binaries: $HERALD (default $CARGO_TARGET_DIR/release/herald), $NATS_SERVER
(default $HERALD_NATS_SERVER, then tests/.deps/nats-server). Accounts:
`--database-url` is required in cluster mode: $DATABASE_URL names the shared
Postgres database (required). loadgen mints its tokens offline, so its users
have no account rows: nodes get --follow-unknown-ids to keep their follows.
$HERALD_ARGS adds flags.
"""
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_IP = os.environ.get("BASE_IP", "127.0.2")
DATABASE = os.environ.get("DATABASE_URL")
ACCOUNTS = ["--database-url", DATABASE or "", "--follow-unknown-ids"]


def herald_bin():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.environ.get("HERALD", os.path.join(target, "release", "herald"))


def nats_bin():
    for path in (
        os.environ.get("NATS_SERVER"),
        os.environ.get("HERALD_NATS_SERVER"),
        os.path.join(ROOT, "tests", ".deps", "nats-server"),
    ):
        if path and os.path.exists(path):
            return path
    sys.exit("no nats-server: set NATS_SERVER or run tests/install-deps.sh")


def node_addr(i):
    return f"{BASE_IP}.{10 + i}"


def load(d):
    try:
        with open(os.path.join(d, "pids")) as f:
            return json.load(f)
    except FileNotFoundError:
        return {"nodes": {}}


def save(d, state):
    with open(os.path.join(d, "pids"), "w") as f:
        json.dump(state, f)


def alive(pid, program):
    """True when `pid` runs and is still `program` (not a reused pid)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv0 = f.read().split(b"\0")[0].decode()
    except OSError:
        return False
    return os.path.basename(argv0) == os.path.basename(program)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening(host, port):
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def readyz(admin):
    try:
        with urllib.request.urlopen(f"http://{admin}/readyz", timeout=1) as r:
            return r.status == 200
    except Exception:
        return False


def start_nats(d, state):
    port = free_port()
    store = os.path.join(d, "nats")
    os.makedirs(store, exist_ok=True)
    log = open(os.path.join(d, "nats.log"), "ab")
    p = subprocess.Popen(
        [nats_bin(), "-js", "-sd", store, "-a", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=log, start_new_session=True)
    state["nats"] = {"pid": p.pid, "port": port, "program": nats_bin()}
    save(d, state)
    for _ in range(200):
        if p.poll() is not None:
            sys.exit(f"nats-server exited: see {d}/nats.log")
        if listening("127.0.0.1", port):
            return
        time.sleep(0.05)
    sys.exit("nats-server did not listen within 10 s")


def start_node(d, state, i, wait=True):
    """Starts node i; returns ms from the spawn to /readyz 200 (None without wait)."""
    if not DATABASE:
        sys.exit("set DATABASE_URL to a Postgres database (README: Running a cluster)")
    ip = node_addr(i)
    if listening(ip, 7350) or listening(ip, 7351):
        sys.exit(f"{ip}:7350 or :7351 is already taken")
    data = os.path.join(d, f"node{i}")
    os.makedirs(data, exist_ok=True)
    args = [herald_bin(), "--listen", f"{ip}:7350", "--admin-listen", f"{ip}:7351",
            "--data-dir", data, "--nats-url", f"nats://127.0.0.1:{state['nats']['port']}",
            "--node-id", f"lg{i}", "--log-level", os.environ.get("LOG_LEVEL", "warn"),
            "--encryption-key", "defaultencryptionkey",
            *ACCOUNTS, *shlex.split(os.environ.get("HERALD_ARGS", ""))]
    log = open(os.path.join(d, f"node{i}.log"), "ab")
    t0 = time.monotonic()
    p = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True)
    state["nodes"][str(i)] = {"pid": p.pid, "url": f"ws://{ip}:7350", "admin": f"{ip}:7351",
                              "program": herald_bin()}
    save(d, state)
    if not wait:
        return None
    for _ in range(60_000):
        if p.poll() is not None:
            sys.exit(f"node {i} exited: see {d}/node{i}.log")
        if readyz(f"{ip}:7351"):
            return (time.monotonic() - t0) * 1e3
        time.sleep(0.005)
    sys.exit(f"node {i} not ready within 300 s")


def stop_pid(pid, program, sig=signal.SIGTERM):
    if not alive(pid, program):
        return
    os.kill(pid, sig)
    for _ in range(200):
        if not alive(pid, program):
            return
        time.sleep(0.05)
    if alive(pid, program):
        os.kill(pid, signal.SIGKILL)


def env(state):
    nodes = [state["nodes"][k] for k in sorted(state["nodes"], key=int)]
    print("URLS=" + ",".join(n["url"] for n in nodes))
    print("PIDS=" + ",".join(str(n["pid"]) for n in nodes))
    print("ADMINS=" + ",".join(n["admin"] for n in nodes))
    if "nats" in state:
        print(f"NATS_PID={state['nats']['pid']}")
        print(f"NATS_URL=nats://127.0.0.1:{state['nats']['port']}")


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    cmd, d = sys.argv[1], sys.argv[2]
    os.makedirs(d, exist_ok=True)
    state = load(d)
    if cmd == "start":
        if "nats" in state and alive(state["nats"]["pid"], state["nats"]["program"]):
            sys.exit(f"{d} already has a running cluster: stop it first")
        state = {"nodes": {}}
        start_nats(d, state)
        for i in range(1, int(sys.argv[3]) + 1):
            start_node(d, state, i, wait=False)
        for i in range(1, int(sys.argv[3]) + 1):
            n = state["nodes"][str(i)]
            for _ in range(6000):
                if readyz(n["admin"]):
                    break
                if not alive(n["pid"], n["program"]):
                    sys.exit(f"node {i} exited: see {d}/node{i}.log")
                time.sleep(0.01)
            else:
                sys.exit(f"node {i} not ready within 60 s")
        env(state)
    elif cmd == "node":
        ms = start_node(d, state, int(sys.argv[3]))
        print(f"node {sys.argv[3]} ready after {ms:.0f} ms (spawn to /readyz 200)")
    elif cmd == "kill":
        n = state["nodes"].pop(sys.argv[3])
        stop_pid(n["pid"], n["program"])
        save(d, state)
    elif cmd == "env":
        env(state)
    elif cmd == "stop":
        for n in state["nodes"].values():
            stop_pid(n["pid"], n["program"])
        if "nats" in state:
            stop_pid(state["nats"]["pid"], state["nats"]["program"])
        save(d, {"nodes": {}})
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Samples how the threads of some processes share the CPUs, interval by interval.

    python3 loadgen/thread-sampler.py [--interval SEC] [--count N] PID...

Every interval it prints one line: seconds since start, then for each thread
name (threads of the same name summed) `ran/waited`, both in percent of one
core: the time the thread ran, and the time it was runnable but waited on a
run queue (`/proc/PID/task/TID/schedstat`). Threads idle over the interval
are left out. It stops after N intervals or once every PID has exited.

PERF.md uses it to show, round by round, which shard thread shares its core
with the load generator during a fan-out.
"""
import argparse
import os
import time


def snapshot(pids):
    """(pid, tid, name) -> (ran ns, waited ns) for every thread of `pids`."""
    out = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{pid}/task/{tid}/comm") as f:
                    name = f.read().strip()
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    ran, waited, _ = f.read().split()
            except (OSError, ValueError):
                continue
            out[(pid, tid, name)] = (int(ran), int(waited))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=0.04)
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("pids", type=int, nargs="+")
    args = parser.parse_args()
    start = time.monotonic()
    previous = snapshot(args.pids)
    for _ in range(args.count):
        time.sleep(args.interval)
        current = snapshot(args.pids)
        per_name = {}
        for key, (ran, waited) in current.items():
            ran0, waited0 = previous.get(key, (0, 0))
            total = per_name.setdefault(key[2], [0.0, 0.0])
            total[0] += (ran - ran0) / (args.interval * 1e7)
            total[1] += (waited - waited0) / (args.interval * 1e7)
        previous = current
        cells = [
            f"{name}:{ran:.0f}/{waited:.0f}"
            for name, (ran, waited) in sorted(per_name.items())
            if ran + waited >= 1
        ]
        if cells:
            print(f"{time.monotonic() - start:6.2f} " + " ".join(cells), flush=True)
        if not any(os.path.exists(f"/proc/{pid}") for pid in args.pids):
            break


if __name__ == "__main__":
    main()

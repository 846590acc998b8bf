//! Cluster mode, process level: real nats-server and real Herald processes,
//! killed, stopped and cut off by PID and by network namespace, with
//! hundreds of real websocket sessions watching what every other node
//! tells its followers. Each test measures one of the cluster's promises
//! (`src/cluster/mod.rs`; design note §5).
//!
//! The tests run one at a time (they measure timings; see [`rig::run`]).
//! They need nats-server 2.11+ (`tests/install-deps.sh` installs it) and,
//! for the partition test, root (network namespaces).

#[path = "../common/mod.rs"]
mod common;
mod rig;

mod backend;
mod crash;
mod failover;
mod fetch;
mod partition;
mod pause;
mod startup;

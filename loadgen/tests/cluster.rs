//! Cluster mode under loadgen: real nats-server and Herald processes (see
//! `rig`), loadgen against several nodes.
//!
//! * `a_cluster_churn_run_…`: 4 nodes, a minute of random connects,
//!   disconnects, follows, unfollows and updates (`loadgen churn`, each
//!   session on a random node), every delivery checked against the model of
//!   the protocol; then every follower's view of every user it follows must
//!   equal the log's ground truth (`GET /v2/status`, which reads the log in
//!   cluster mode), and the log must equal what the sessions did.
//! * `follows_of_several_users_…`: a regression test: a follow of several
//!   users the node did not keep went unanswered.
//!
//! The tests run one at a time (they share 2 cores with their servers).

#[path = "../../tests/common/mod.rs"]
mod common;
mod rig;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use rig::Cluster;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

fn count(summary: &Value, key: &str) -> u64 {
    summary[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no count {key} in {summary:#}"))
}

#[test]
fn a_cluster_churn_run_loses_repeats_reorders_and_skips_nothing() {
    let _serial = serial();
    let started = Instant::now();
    let cluster = Cluster::start(4, &["--shards", "2"]);
    let admin = format!("http://{}", cluster.nodes[0].admin);
    let mut args = strings(&["churn", "--token-key", "defaultencryptionkey"]);
    args.extend(strings(&["--url", &cluster.urls(), "--spread-sessions"]));
    args.extend(strings(&["--server-pid", &cluster.pids()]));
    args.extend(strings(&["--nats-pid", &cluster.nats.pid().to_string()]));
    args.extend(strings(&["--status-url", &admin]));
    args.extend(strings(&["--duration", "60", "--rate", "400"]));
    args.extend(strings(&["--users", "60", "--max-sessions", "200"]));
    args.extend(strings(&["--phase-timeout", "30", "--settle", "10"]));
    // 60 s of operations, a 3 s drain, up to 10 s for the views: ≈ 80 s.
    let (status, summary) = rig::loadgen(&args, Duration::from_secs(150));
    eprintln!(
        "cluster churn: {} ops, {} events checked, {} views; {:.0} s in all",
        summary["ops"],
        summary["received_events"],
        summary["ground_truth"]["views_checked"],
        started.elapsed().as_secs_f64()
    );
    assert!(status.success(), "loadgen failed ({status}): {summary:#}");
    // Every event: none lost, repeated or reordered; no leave that does not
    // name the follower's previous status (a gap), including after a follow
    // snapshot older than an event that came before it.
    for key in [
        "missing",
        "duplicate",
        "out_of_order",
        "gaps",
        "snapshot_behind",
        "unexpected",
        "unresolved",
        "wrong_shape",
        "snapshot_stale",
        "snapshot_missing",
        "snapshot_unexpected",
        "errors",
        "decode_errors",
        "replies_missing",
    ] {
        assert_eq!(count(&summary, key), 0, "{key}: {summary:#}");
    }
    assert_eq!(
        summary["server_closed"].as_array().map(Vec::len),
        Some(0),
        "{summary:#}"
    );
    // After quiescence: every view equals the log, and the log what the
    // sessions did.
    let truth = &summary["ground_truth"];
    assert!(truth["error"].is_null(), "{summary:#}");
    assert_eq!(truth["view_mismatch"], 0, "{summary:#}");
    assert_eq!(truth["truth_mismatch"], 0, "{summary:#}");
    // Coalescing (a node skipping intermediate statuses) is allowed, counted,
    // and must be the servers' own: followers cannot see a skip no replica made.
    let coalesced = count(&summary, "coalesced_events");
    let by_servers = cluster.metric_sum("herald_cluster_coalesced_total");
    assert!(
        coalesced == 0 || by_servers > 0.0,
        "followers saw {coalesced} coalesced events, the servers skipped none: {summary:#}"
    );
    eprintln!("coalesced: {coalesced} events seen by followers, {by_servers} statuses skipped by replicas");
    // It did something, across nodes.
    assert!(count(&summary, "ops") > 20_000, "{summary:#}");
    assert!(count(&summary, "mandatory_events") > 10_000, "{summary:#}");
    assert!(
        truth["views_checked"].as_u64().is_some_and(|n| n > 100),
        "{summary:#}"
    );
}

#[test]
fn follows_of_several_users_a_node_does_not_keep_are_answered() {
    let _serial = serial();
    let cluster = Cluster::start(2, &["--shards", "2"]);
    // Everyone follows everyone else, in one request each: most users are
    // on the other node, several per owner shard.
    let mut args = strings(&["mesh", "--token-key", "defaultencryptionkey"]);
    args.extend(strings(&["--url", &cluster.urls()]));
    args.extend(strings(&["--users", "8", "--lobby", "--rate", "40"]));
    args.extend(strings(&["--duration", "1", "--drain", "3"]));
    args.extend(strings(&["--phase-timeout", "10"]));
    let (status, summary) = rig::loadgen(&args, Duration::from_secs(60));
    assert!(status.success(), "loadgen failed ({status}): {summary:#}");
    assert_eq!(summary["follow_requests"], 8, "{summary:#}");
    assert_eq!(summary["followed_ids"], 56, "{summary:#}");
    assert!(
        summary["follow_ids_per_sec"]
            .as_f64()
            .is_some_and(|r| r > 56.0),
        "the follows took more than a second: {summary:#}"
    );
    for key in ["missing", "duplicate", "out_of_order", "errors"] {
        assert_eq!(count(&summary, key), 0, "{key}: {summary:#}");
    }
    assert!(count(&summary, "delivered") > 0, "{summary:#}");
    assert_eq!(
        summary["delivered"], summary["expected_deliveries"],
        "{summary:#}"
    );
}

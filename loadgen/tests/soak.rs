//! A short soak in the suite: 3 nodes (the `rig`: nats-server and Herald
//! processes, stopped by PID also when the test fails), 19,000
//! connections for 60 s of `loadgen soak`; its summary's checks must all
//! hold: no event missing, repeated, reordered or with a wrong leave,
//! snapshots agreeing with the events around them, every final view equal
//! to `GET /v2/status`, no unplanned disconnect.

#[path = "../../tests/common/mod.rs"]
mod common;
mod rig;

use std::time::{Duration, Instant};

use rig::Cluster;

#[test]
fn a_short_soak_over_three_nodes_holds_every_check() {
    let started = Instant::now();
    let cluster = Cluster::start(3, &["--shards", "2"]);
    let admin = format!("http://{}", cluster.nodes[0].admin);
    let args: Vec<String> = [
        "soak",
        "--token-key",
        "defaultencryptionkey",
        "--url",
        &cluster.urls(),
        "--server-pid",
        &cluster.pids(),
        "--nats-pid",
        &cluster.nats.pid().to_string(),
        "--status-url",
        &admin,
        "--connections",
        "19000",
        "--procs",
        "2",
        "--source-base",
        "127.0.1.1",
        "--duration",
        "60",
        // A faster mix than the defaults, so that a minute sees every kind
        // of traffic: ≈630 status changes/s, reconnects and refollows.
        "--status-every-sec",
        "30",
        "--reconnect-pct-per-min",
        "5",
        "--refollow-pct-per-min",
        "5",
        "--phase-timeout",
        "30",
        "--drain",
        "3",
        "--settle",
        "10",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let (status, summary) = rig::loadgen(&args, Duration::from_secs(160));
    eprintln!(
        "soak: {} events, {} views checked, worst p99 {} ms; {:.0} s in all",
        summary["events"],
        summary["views_checked"],
        summary["worst_window_p99_ms"],
        started.elapsed().as_secs_f64()
    );
    let checks = summary["checks"]
        .as_object()
        .unwrap_or_else(|| panic!("no checks: {summary:#}"));
    for (name, held) in checks {
        assert_eq!(held.as_bool(), Some(true), "{name}: {summary:#}");
    }
    assert_eq!(summary["checks_passed"], true, "{summary:#}");
    // The servers skipped no status either (coalescing must be 0 here).
    let skipped = cluster.metric_sum("herald_cluster_coalesced_total");
    assert_eq!(skipped, 0.0, "the nodes coalesced {skipped} statuses");
    assert!(status.success(), "loadgen failed ({status}): {summary:#}");
    assert!(
        summary["applied"].as_u64().is_some_and(|n| n > 100_000),
        "{summary:#}"
    );
}

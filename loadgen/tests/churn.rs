//! The `churn` scenario against a real `herald` (issue 5, "no silent loss"):
//! a seeded mix of connects, disconnects, follows, unfollows and updates,
//! every delivery checked against the model of the protocol. Zero missing,
//! zero duplicate, zero out of order.
//!
//! `herald` is the binary cargo built into the same target directory
//! (`cargo test --workspace` builds it); the harness is Herald's own.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use common::{child_exit, HeraldProcess};

#[test]
fn a_churn_run_loses_repeats_and_reorders_nothing() {
    let herald = HeraldProcess::start(&["--shards", "2"]);
    let mut loadgen = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .arg("churn")
        .args(["--url", &format!("ws://{}", herald.addr)])
        .args(["--token-key", "defaultencryptionkey"])
        .args(["--server-pid", &herald.pid().to_string()])
        .args(["--duration", "6", "--rate", "300"])
        .args(["--users", "40", "--max-sessions", "120"])
        .args(["--phase-timeout", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("loadgen runs");
    // 6 s of operations, a 3 s drain, start-up: well under two minutes.
    let status = child_exit(&mut loadgen, Duration::from_secs(120)).unwrap_or_else(|| {
        let _ = loadgen.kill();
        panic!("loadgen churn did not finish in time")
    });
    let mut stdout = String::new();
    std::io::Read::read_to_string(
        &mut loadgen.stdout.take().expect("piped stdout"),
        &mut stdout,
    )
    .expect("read the summary");
    let summary: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|error| panic!("the summary is not JSON ({error}): {stdout}"));
    assert!(status.success(), "loadgen failed ({status}): {summary:#}");
    for key in ["missing", "duplicate", "out_of_order"] {
        assert_eq!(summary[key], 0, "{key}: {summary:#}");
    }
    // It did something: operations ran and events were checked.
    assert!(
        summary["ops"].as_u64().is_some_and(|n| n > 300),
        "{summary:#}"
    );
    assert!(
        summary["mandatory_events"].as_u64().is_some_and(|n| n > 0),
        "{summary:#}"
    );
}

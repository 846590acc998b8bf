//! A node is paused (SIGSTOP) for 10 s, longer than a verdict takes, then
//! resumed: its peers send its leaves as for a kill; once resumed it fences
//! itself (closes every socket with 1012) and registers again; and nothing
//! it wrote after the verdict is applied anywhere.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::rig::population::{Population, PopulationSpec};
use crate::rig::{run, secs, Cluster, ClusterSpec};

/// What a victim session sends while its node is paused.
const LATE_STATUS: &str = "written while paused";

#[test]
fn a_paused_node_is_declared_dead_then_fences_itself_and_its_late_writes_are_ignored() {
    run(async {
        let cluster = Cluster::start(ClusterSpec::new(3)).await;
        let spec = PopulationSpec {
            victim: 0,
            users: 100,
            sessions_per_user: 2,
            followers_per_node: 3,
            bystanders_per_node: 10,
        };
        let population = Population::build(&cluster, spec).await;
        let ignored_before = cluster.node(1).cluster_counters().await.ignored_records;

        let paused = Instant::now();
        cluster.node(0).signal(libc::SIGSTOP);
        let latencies = population.expect_verdict_leaves(paused).await;
        eprintln!("SIGSTOP: {latencies}");
        // After the verdict: the kernel keeps it until the node runs again.
        population.victims[0]
            .send(json!({"status_update": {"status": LATE_STATUS}, "cid": "late"}));
        tokio::time::sleep_until((paused + Duration::from_secs(10)).into()).await;
        let resumed = Instant::now();
        cluster.node(0).signal(libc::SIGCONT);

        // Every socket of the node closes with 1012 within a second.
        let closes = population.expect_victims_fenced(resumed).await;
        eprintln!("SIGCONT: sockets closed {closes} (from the resume)");
        assert!(
            closes.max <= Duration::from_secs(1),
            "sockets closed within 1 s of SIGCONT: {closes}"
        );
        let ready = cluster.node(0).wait_ready(Duration::from_secs(10)).await;
        eprintln!(
            "SIGCONT: ready again {} after the resume",
            secs(ready - resumed)
        );

        // The node serves again: a new session's status reaches the followers.
        population.expect_victim_node_back(cluster.node(0)).await;
        for (n, follower) in &population.followers {
            let late: Vec<_> = follower
                .events()
                .into_iter()
                .filter(|(_, e)| e.to_string().contains(LATE_STATUS))
                .collect();
            assert!(
                late.is_empty(),
                "follower on node {n} saw a write made after the verdict: {late:?}"
            );
        }
        let late_reply = population.victims[0]
            .messages()
            .into_iter()
            .find(|(_, m)| m["cid"] == "late");
        let self_counters = cluster.node(0).cluster_counters().await;
        assert_eq!(
            self_counters.fences[2], 1.0,
            "fenced once, for its lost lease: {self_counters:?}"
        );
        cluster.expect_verdicts(1..3, 1.0).await;
        let ignored = cluster.node(1).cluster_counters().await.ignored_records - ignored_before;
        let closed = population.victims[0].ended().map(|(at, _)| at);
        let when = |at: Option<Instant>| at.map_or("never".into(), |at| secs(at - resumed));
        eprintln!(
            "SIGSTOP: the write sent while paused: acknowledged to its client at {}, its socket \
             closed at {} (from the resume); node 1 ignored {ignored} records of dead incarnations",
            when(late_reply.map(|(at, _)| at)),
            when(closed),
        );
        population.expect_others_open();
    });
}

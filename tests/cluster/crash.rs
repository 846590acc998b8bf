//! A node dies: SIGKILL (peers declare it dead from the log) and SIGTERM
//! (it marks its lease left on the way out), and a restart with the same
//! node id (the new incarnation replaces the old one).

use std::time::{Duration, Instant};

use crate::rig::population::{Population, PopulationSpec};
use crate::rig::{run, secs, Cluster, ClusterSpec, NODE_START};

fn spec(victim: usize) -> PopulationSpec {
    PopulationSpec {
        victim,
        users: 100,
        sessions_per_user: 2,
        followers_per_node: 3,
        bystanders_per_node: 10,
    }
}

#[test]
fn a_killed_nodes_sessions_leave_at_every_follower_exactly_once_after_the_verdict() {
    run(async {
        let cluster = Cluster::start(ClusterSpec::new(3)).await;
        let population = Population::build(&cluster, spec(0)).await;
        let killed = Instant::now();
        cluster.node(0).signal(libc::SIGKILL);
        let latencies = population.expect_verdict_leaves(killed).await;
        eprintln!("SIGKILL: {latencies}");
        population.expect_others_open();
        cluster.expect_verdicts(1..3, 1.0).await;
    });
}

#[test]
fn a_terminated_nodes_sessions_leave_within_a_second() {
    run(async {
        let cluster = Cluster::start(ClusterSpec::new(3)).await;
        let population = Population::build(&cluster, spec(0)).await;
        let terminated = Instant::now();
        cluster.node(0).signal(libc::SIGTERM);
        let latencies = population
            .expect_leaves(
                terminated,
                Duration::ZERO,
                Duration::from_secs(1),
                Duration::from_secs(1),
            )
            .await;
        eprintln!("SIGTERM: {latencies}");
        population.expect_others_open();
        cluster.expect_verdicts(1..3, 0.0).await;
    });
}

#[test]
fn a_node_restarted_with_its_node_id_replaces_its_old_sessions_within_a_second() {
    run(async {
        let mut cluster = Cluster::start(ClusterSpec::new(3)).await;
        let population = Population::build(&cluster, spec(0)).await;
        let killed = cluster.nodes[0].kill_and_relaunch();
        let registered = tokio::task::block_in_place(|| {
            cluster.nodes[0].log_line("cluster lease registered", NODE_START)
        })
        .map(|(at, _)| at)
        .expect("the new incarnation registers");
        let since_kill = registered - killed;
        let latencies = population
            .expect_leaves(
                killed,
                Duration::ZERO,
                since_kill + Duration::from_secs(1),
                Duration::from_secs(1),
            )
            .await;
        eprintln!(
            "restart: registered {} after the kill; {latencies} (from the kill)",
            secs(since_kill)
        );
        tokio::task::block_in_place(|| cluster.nodes[0].wait_serving());
        cluster.node(0).wait_ready(NODE_START).await;
        population.expect_others_open();
        cluster.expect_verdicts(1..3, 0.0).await;
    });
}

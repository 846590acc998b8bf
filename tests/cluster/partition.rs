//! A node loses NATS for 20 s while its clients stay connected: a blackhole
//! route to nats-server inside the node's network namespace (see
//! `rig::net`). Its peers send its leaves; it closes its own sockets (1012)
//! by then and serves nobody while cut; after the heal it is ready again
//! within 2 s and back in the cluster.

use std::time::{Duration, Instant};

use crate::rig::net::Netns;
use crate::rig::population::{Population, PopulationSpec};
use crate::rig::{netns_or_skip, run, secs, Cluster, ClusterSpec};

#[test]
fn a_node_cut_from_nats_is_declared_dead_fences_itself_and_returns_after_the_heal() {
    let Some(netns) = netns_or_skip("a_node_cut_from_nats_…", 2) else {
        return;
    };
    run(async move {
        let cluster = Cluster::start(ClusterSpec::new(2).in_netns(netns)).await;
        let netns = cluster.netns.as_ref().expect("namespaces");
        let spec = PopulationSpec {
            victim: 0,
            users: 100,
            sessions_per_user: 2,
            followers_per_node: 4,
            bystanders_per_node: 10,
        };
        let population = Population::build(&cluster, spec).await;

        let cut = Instant::now();
        netns.cut(0, Netns::NATS);
        let latencies = population.expect_verdict_leaves(cut).await;
        eprintln!("partition: {latencies}");
        let closes = population.expect_victims_fenced(cut).await;
        eprintln!("partition: the cut node closed its sockets {closes} (from the cut)");
        assert!(
            closes.max <= Duration::from_secs(7),
            "sockets closed within 7 s of the cut: {closes}"
        );

        // While cut it serves nobody.
        let cut_node = cluster.node(0);
        assert_eq!(cut_node.readyz().await, Some(503), "not ready while cut");
        let refused = cut_node
            .refused_upgrade(&population.victims[0].user)
            .await
            .expect("no websocket while cut");
        assert_eq!(refused.status, 503, "{refused:?}");
        assert_eq!(refused.body, "Node not ready", "{refused:?}");
        let counters = cut_node.cluster_counters().await;
        assert_eq!(
            counters.fences[0], 1.0,
            "fenced for the lost connection: {counters:?}"
        );

        tokio::time::sleep_until((cut + Duration::from_secs(20)).into()).await;
        let healed = Instant::now();
        netns.heal(0, Netns::NATS);
        let ready = cut_node.wait_ready(Duration::from_secs(10)).await - healed;
        eprintln!("partition: ready again {} after the heal", secs(ready));
        assert!(
            ready <= Duration::from_secs(2),
            "ready within 2 s of the heal: {}",
            secs(ready)
        );

        // Back in the cluster: a new session's status reaches the followers.
        population.expect_victim_node_back(cut_node).await;
        cluster.expect_verdicts(1..2, 1.0).await;
        population.expect_others_open();
    });
}

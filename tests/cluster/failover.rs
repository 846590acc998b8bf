//! The stream leader of a three-server NATS cluster (`--nats-replicas 3`)
//! is killed while one node takes 500 status updates a second and another
//! node's followers watch them. The log stalls for everyone during the
//! election, so nobody is declared dead and nobody fences; writes resume
//! within 5 s of NATS electing a new leader (so within 10 s of the kill
//! when the election takes at most 5 s); no follower sees a leave or a
//! status nobody acknowledged; and every acknowledged update reaches every
//! follower, in order.
//!
//! That last promise rests on the followers' node: its log watch may die
//! with the leader (the consumer sat on it) and is recreated from its last
//! position once the log moves again; the versions written meanwhile are
//! still in the stream (a superseded version stays a minute, and each key
//! keeps at most 64), so the new watch reads them all.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{Client, Received};
use crate::rig::nats::{new_stream_leader_seen, stream_leader};
use crate::rig::population::Latencies;
use crate::rig::session::presences_in;
use crate::rig::{run, secs, Cluster, ClusterSpec, NatsLayout};

/// Writer sessions on node 0, one user each.
const WRITERS: usize = 100;
/// Each writer's updates per second (500/s in all).
const PER_SECOND: u64 = 5;
/// Followers on node 1, each following every writer.
const FOLLOWERS: usize = 2;

/// What the writers saw: (when acknowledged, writer, update number) per
/// update, and any end of a writer's socket.
#[derive(Default)]
struct Acks {
    acked: Vec<(Instant, usize, u64)>,
    ended: Vec<String>,
}

fn status_of(writer: usize, n: u64) -> String {
    format!("writer{writer} #{n}")
}

/// (writer, update number) of a status this test wrote.
fn parse_status(status: &str) -> Option<(usize, u64)> {
    let (writer, n) = status.strip_prefix("writer")?.split_once(" #")?;
    Some((writer.parse().ok()?, n.parse().ok()?))
}

/// Updates `client`'s status every 1/[`PER_SECOND`] s, one at a time
/// (each waits for its ack), until `stop`; returns the still open client.
async fn write(
    mut client: Client,
    writer: usize,
    acks: Arc<Mutex<Acks>>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Client {
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / PER_SECOND));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stop = stop;
    for n in 0u64.. {
        // A watch, not a Notify: a writer waiting for an ack when the stop
        // comes must still see it.
        if *stop.borrow() {
            break;
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break,
        }
        let status = status_of(writer, n);
        let cid = n.to_string();
        client
            .send_json(json!({"status_update": {"status": status}, "cid": cid}))
            .await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match client.try_recv(left).await {
                Some(Received::Text(text)) => {
                    let reply: Value = serde_json::from_str(&text).expect("JSON");
                    if reply["cid"] == cid.as_str() {
                        assert_eq!(reply, json!({"cid": cid}), "{status}: the update's ack");
                        let mut acks = acks.lock().expect("acks");
                        acks.acked.push((Instant::now(), writer, n));
                        break;
                    }
                }
                None => panic!("no ack of {status} within 30 s"),
                Some(other) => {
                    let mut acks = acks.lock().expect("acks");
                    acks.ended.push(format!("writer{writer}: {other:?}"));
                    return client;
                }
            }
        }
    }
    client
}

#[test]
fn killing_the_stream_leader_under_load_fences_nobody_and_delivers_every_acknowledged_update() {
    run(leader_failover());
}

async fn leader_failover() {
    let mut cluster = Cluster::start(
        ClusterSpec::new(2)
            .nats(NatsLayout::Three)
            .args(&["--nats-replicas", "3"]),
    )
    .await;
    let (writer_node, follower_node) = (cluster.node(0), cluster.node(1));
    let writer_users = futures_util::future::join_all(
        (0..WRITERS).map(|i| async move { writer_node.user(&format!("writer{i}")).await }),
    )
    .await;
    let ids: Vec<&str> = writer_users.iter().map(|u| u.id.as_str()).collect();
    let mut followers = Vec::new();
    for k in 0..FOLLOWERS {
        let user = follower_node.user(&format!("follower{k}")).await;
        let follower = follower_node.session(&user, false).await;
        for (i, chunk) in ids.chunks(40).enumerate() {
            follower.follow(&format!("follow{i}"), chunk).await;
        }
        followers.push(follower);
    }

    let acks = Arc::new(Mutex::new(Acks::default()));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut writers = Vec::new();
    for (i, user) in writer_users.iter().enumerate() {
        let client = writer_node.connect(user, false).await;
        writers.push(tokio::spawn(write(
            client,
            i,
            acks.clone(),
            stopped.clone(),
        )));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;

    let leader_name = stream_leader(&cluster.nats).await;
    let leader = cluster
        .nats
        .iter()
        .position(|s| s.name() == leader_name)
        .expect("the leader is one of ours");
    let killed = Instant::now();
    cluster.nats[leader].kill();
    let elected =
        new_stream_leader_seen(&cluster.nats, &leader_name, Duration::from_secs(20)).await;
    tokio::time::sleep(
        (killed + Duration::from_secs(20)).saturating_duration_since(Instant::now()),
    )
    .await;
    let _ = stop.send(true);
    let mut open_writers = Vec::new();
    for writer in writers {
        open_writers.push(writer.await.expect("a writer"));
    }
    let new_leader = stream_leader(&cluster.nats).await;

    let acks = std::mem::take(&mut *acks.lock().expect("acks"));
    assert!(
        acks.ended.is_empty(),
        "writer sockets ended: {:?}",
        acks.ended
    );
    let mut times: Vec<Instant> = acks.acked.iter().map(|(at, _, _)| *at).collect();
    times.sort();
    let before = times.iter().filter(|at| **at < killed).count();
    let (gap_start, gap) = times
        .windows(2)
        .map(|w| (w[0], w[1] - w[0]))
        .max_by_key(|(_, gap)| *gap)
        .expect("acks");
    let offset = |at: Instant| {
        let (sign, d) = match at.checked_duration_since(killed) {
            Some(d) => ("+", d),
            None => ("-", killed - at),
        };
        format!("{sign}{}", secs(d))
    };
    let elected = elected.expect("NATS elects a new stream leader within 20 s");
    eprintln!(
        "failover: {} updates acknowledged ({before} before the kill of {leader_name}, new leader \
         {new_leader} seen at {}); writes paused {} from {} (kill at 0)",
        acks.acked.len(),
        offset(elected),
        secs(gap),
        offset(gap_start),
    );
    let mut counters = Vec::new();
    for i in 0..2 {
        let node = cluster.node(i).cluster_counters().await;
        eprintln!("failover: node {i} {node:?}");
        counters.push(node);
    }
    // Herald's part of "writes resume within 10 s": the first write after
    // the pause is acknowledged within 5 s of NATS having a leader again.
    // Measured: 0.1–4.4 s. A publish sent during the election waits for
    // its 2 s ack timeout and is sent again 250 ms later; an update is
    // acknowledged once read back from the log, and a watch whose consumer
    // died with the leader is recreated after 1.5 s without the records it
    // expects. The rest is nats-server's election: a follower waits 4–9 s
    // (not configurable) for a lost leader before it campaigns, and a
    // refused vote costs a second round; one CI run's election alone took
    // 12.3 s. The 10 s bound on the whole pause is asserted when the
    // election left Herald its 5 s.
    let resumed = gap_start + gap;
    assert!(
        resumed <= elected + Duration::from_secs(5),
        "writes resume within 5 s of the new leader: resumed {}, leader seen {}",
        offset(resumed),
        offset(elected)
    );
    if elected <= killed + Duration::from_secs(5) {
        assert!(
            gap <= Duration::from_secs(10),
            "writes resume within 10 s: paused {}",
            secs(gap)
        );
    } else {
        eprintln!(
            "failover: NATS took {} to elect a leader; the 10 s bound on the pause is not checked",
            offset(elected)
        );
    }
    assert!(
        times
            .iter()
            .filter(|at| **at > killed + Duration::from_secs(10))
            .count()
            > 1000,
        "writes go on after the election"
    );

    // Each writer's last acknowledged update.
    let mut last: HashMap<usize, u64> = HashMap::new();
    for (_, writer, n) in &acks.acked {
        let entry = last.entry(*writer).or_default();
        *entry = (*entry).max(*n);
    }
    let acked: HashMap<(usize, u64), Instant> = acks
        .acked
        .iter()
        .map(|(at, w, n)| ((*w, *n), *at))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut delays = Vec::new();
    for (k, follower) in followers.iter().enumerate() {
        // Converged: every writer's last acknowledged status arrived.
        let joins = loop {
            let joins: Vec<(Instant, (usize, u64))> = follower
                .events()
                .iter()
                .flat_map(|(at, e)| {
                    presences_in(e, "joins").into_iter().map(move |p| {
                        let update = parse_status(&p.status)
                            .unwrap_or_else(|| panic!("a status nobody wrote: {}", p.status));
                        (*at, update)
                    })
                })
                .collect();
            let seen: std::collections::HashSet<(usize, u64)> =
                joins.iter().map(|(_, u)| *u).collect();
            let converged = last.iter().all(|(w, n)| seen.contains(&(*w, *n)));
            if converged || Instant::now() >= deadline {
                break joins;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        // In order per writer, each update at most once, and acknowledged.
        let mut newest: HashMap<usize, u64> = HashMap::new();
        for (at, (w, n)) in &joins {
            if let Some(previous) = newest.insert(*w, *n) {
                assert!(
                    *n > previous,
                    "follower {k}: writer{w} #{n} after #{previous}"
                );
            }
            let acked_at = acked.get(&(*w, *n));
            assert!(
                acked_at.is_some() || last.get(w).is_some_and(|l| n > l),
                "follower {k}: writer{w} #{n} arrived but was never acknowledged"
            );
            if let Some(acked_at) = acked_at {
                delays.push(at.saturating_duration_since(*acked_at));
            }
        }
        for (w, n) in &last {
            assert_eq!(
                newest.get(w),
                Some(n),
                "follower {k}: writer{w} ends on its last update"
            );
        }
        let seen: std::collections::HashSet<(usize, u64)> = joins.iter().map(|(_, u)| *u).collect();
        let mut skipped: Vec<(usize, u64, Instant)> = acks
            .acked
            .iter()
            .filter(|(_, w, n)| !seen.contains(&(*w, *n)))
            .map(|(at, w, n)| (*w, *n, *at))
            .collect();
        skipped.sort_by_key(|(_, _, at)| *at);
        eprintln!(
            "failover: follower {k}: {} of {} acknowledged updates never arrived (superseded, \
             acknowledged from {} to {})",
            skipped.len(),
            acks.acked.len(),
            skipped.first().map_or("-".into(), |s| offset(s.2)),
            skipped.last().map_or("-".into(), |s| offset(s.2)),
        );
        assert!(
            skipped.is_empty(),
            "follower {k}: acknowledged updates lost ({} counted as coalesced): {skipped:?}",
            counters[1].coalesced
        );
        let leaves: Vec<_> = follower
            .events()
            .into_iter()
            .filter(|(_, e)| presences_in(e, "joins").is_empty())
            .collect();
        assert!(leaves.is_empty(), "follower {k}: false leaves: {leaves:?}");
        assert!(
            follower.ended().is_none(),
            "follower {k} ended: {:?}",
            follower.ended()
        );
    }
    eprintln!(
        "failover: acknowledgement to delivery at the followers {}",
        Latencies::of(delays)
    );
    for (i, node) in counters.iter().enumerate() {
        assert_eq!(node.verdicts, 0.0, "node {i}: no verdict: {node:?}");
        assert_eq!(node.fences_total(), 0.0, "node {i}: no fence: {node:?}");
    }
    drop(open_writers);
}

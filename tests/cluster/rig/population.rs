//! [`Population`]: the sessions a failure test watches. One node is the
//! *victim*: its users each have several sessions, each with a status of its
//! own. Every other node holds *followers* (sessions that follow every user
//! below) and *bystanders* (sessions with a status that must never leave).
//! When the victim dies, [`Population::expect_leaves`] checks the promise at
//! every follower: each victim session leaves exactly once, with its last
//! status, inside a time window, and nothing else leaves.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::session::{presences_in, Session};
use super::{secs, Cluster, Node};

/// How many sessions of each kind (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct PopulationSpec {
    /// The victim node's index.
    pub victim: usize,
    /// Users on the victim node, and sessions per user.
    pub users: usize,
    pub sessions_per_user: usize,
    /// On every other node.
    pub followers_per_node: usize,
    pub bystanders_per_node: usize,
}

/// Most user ids in one `status_follow` (the default 4 KiB message limit).
const FOLLOW_CHUNK: usize = 40;
/// How long set-up steps may take.
const SETUP: Duration = Duration::from_secs(30);

/// The watched sessions (see the module doc).
pub struct Population {
    /// The victim node's sessions.
    pub victims: Vec<Session>,
    /// Session id → status, of every victim session.
    pub victim_statuses: HashMap<String, String>,
    /// Sessions with a status on the other nodes.
    pub bystanders: Vec<Session>,
    /// Followers on the other nodes, with their node's index.
    pub followers: Vec<(usize, Session)>,
}

/// Leave times measured from an instant, over every follower.
#[derive(Debug, Clone, Copy)]
pub struct Latencies {
    pub count: usize,
    pub min: Duration,
    pub median: Duration,
    pub max: Duration,
}

impl std::fmt::Display for Latencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} times: min {}, median {}, max {}",
            self.count,
            secs(self.min),
            secs(self.median),
            secs(self.max)
        )
    }
}

impl Latencies {
    pub fn of(mut times: Vec<Duration>) -> Latencies {
        assert!(!times.is_empty(), "no times");
        times.sort();
        Latencies {
            count: times.len(),
            min: times[0],
            median: times[times.len() / 2],
            max: times[times.len() - 1],
        }
    }
}

impl Population {
    /// Creates the users and sessions, sets every status, and waits until
    /// every follower sees every status.
    pub async fn build(cluster: &Cluster, spec: PopulationSpec) -> Population {
        let victim_node = cluster.node(spec.victim);
        let others: Vec<usize> = (0..cluster.nodes.len())
            .filter(|i| *i != spec.victim)
            .collect();

        // Users: victims on the victim node, the rest on their own node.
        let victim_users = futures_util::future::join_all(
            (0..spec.users).map(|u| async move { victim_node.user(&format!("victim{u}")).await }),
        )
        .await;
        let mut bystander_users = Vec::new();
        let mut follower_users = Vec::new();
        for &n in &others {
            let node = cluster.node(n);
            for k in 0..spec.bystanders_per_node {
                bystander_users.push((n, node.user(&format!("bystander{n}x{k}")).await));
            }
            for k in 0..spec.followers_per_node {
                follower_users.push((n, node.user(&format!("follower{n}x{k}")).await));
            }
        }
        let followed: Vec<&str> = victim_users
            .iter()
            .chain(bystander_users.iter().map(|(_, u)| u))
            .map(|u| u.id.as_str())
            .collect();

        // Followers first, so that every status reaches them as an event.
        let mut followers = Vec::new();
        for (n, user) in follower_users {
            let follower = cluster.node(n).session(&user, false).await;
            for (i, chunk) in followed.chunks(FOLLOW_CHUNK).enumerate() {
                let snapshot = follower.follow(&format!("follow{i}"), chunk).await;
                assert!(snapshot.is_empty(), "nobody is online yet: {snapshot:?}");
            }
            followers.push((n, follower));
        }

        let mut victims = Vec::new();
        let mut victim_statuses = HashMap::new();
        for (u, user) in victim_users.iter().enumerate() {
            for s in 0..spec.sessions_per_user {
                let mut session = victim_node.session(user, false).await;
                let status = format!("victim {u} session {s}");
                let id = session.set_status("set", &status).await;
                victim_statuses.insert(id, status);
                victims.push(session);
            }
        }
        let mut bystanders = Vec::new();
        let mut expected = victim_statuses.clone();
        for (n, user) in &bystander_users {
            let mut session = cluster.node(*n).session(user, false).await;
            let status = format!("bystander {}", user.username);
            let id = session.set_status("set", &status).await;
            expected.insert(id, status);
            bystanders.push(session);
        }

        let population = Population {
            victims,
            victim_statuses,
            bystanders,
            followers,
        };
        let deadline = Instant::now() + SETUP;
        for (n, follower) in &population.followers {
            loop {
                if follower.view() == expected {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "follower {} on node {n} does not see every status: {} of {} known",
                    follower.user.username,
                    follower.view().len(),
                    expected.len()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        population
    }

    /// Every follower's leave events after `since`: (when, session, status,
    /// whether the event also had joins).
    fn leaves_after(
        &self,
        follower: &Session,
        since: Instant,
    ) -> Vec<(Instant, String, String, bool)> {
        follower
            .events()
            .into_iter()
            .filter(|(at, _)| *at >= since)
            .flat_map(|(at, event)| {
                let with_joins = !presences_in(&event, "joins").is_empty();
                presences_in(&event, "leaves")
                    .into_iter()
                    .map(move |p| (at, p.session_id, p.status, with_joins))
            })
            .collect()
    }

    /// Checks the promise for a victim that died at `since` (see the module
    /// doc): waits until every follower has every victim session's leave
    /// (at most until `latest` plus 2 s, so that a late one is measured
    /// rather than missed), then `settle` longer for duplicates; then every
    /// victim session must have left exactly once at every follower, with
    /// its status, between `earliest` and `latest` after `since`, and
    /// nothing else may have left or joined. Returns the leave times.
    pub async fn expect_leaves(
        &self,
        since: Instant,
        earliest: Duration,
        latest: Duration,
        settle: Duration,
    ) -> Latencies {
        let deadline = since + latest + Duration::from_secs(2);
        let want = self.victim_statuses.len();
        loop {
            let complete = self.followers.iter().all(|(_, f)| {
                let left: HashSet<String> = self
                    .leaves_after(f, since)
                    .into_iter()
                    .map(|(_, session, _, _)| session)
                    .collect();
                left.len() >= want
            });
            if complete || Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(settle).await;

        let mut times = Vec::new();
        for (n, follower) in &self.followers {
            let who = format!("follower {} on node {n}", follower.user.username);
            let mut seen: HashMap<String, usize> = HashMap::new();
            for (at, session, status, with_joins) in self.leaves_after(follower, since) {
                let Some(expected) = self.victim_statuses.get(&session) else {
                    panic!("{who}: a false leave of {session} ({status:?}), not a victim session");
                };
                assert_eq!(
                    &status, expected,
                    "{who}: the leave of {session} carries the last status"
                );
                assert!(
                    !with_joins,
                    "{who}: the leave of {session} came as an update"
                );
                *seen.entry(session.clone()).or_default() += 1;
                times.push(at - since);
            }
            let missing = want - seen.len();
            let repeated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
            assert_eq!(
                missing, 0,
                "{who}: {missing} of {want} victim sessions never left"
            );
            assert!(repeated.is_empty(), "{who}: leaves repeated: {repeated:?}");
            let joins: Vec<_> = follower
                .events()
                .into_iter()
                .filter(|(at, event)| *at >= since && !presences_in(event, "joins").is_empty())
                .collect();
            assert!(
                joins.is_empty(),
                "{who}: joins after the failure: {joins:?}"
            );
        }
        let latencies = Latencies::of(times);
        assert!(
            latencies.min >= earliest && latencies.max <= latest,
            "leaves must arrive between {} and {} after the failure; got {latencies}",
            secs(earliest),
            secs(latest)
        );
        latencies
    }

    /// [`Population::expect_leaves`] after a kill, a pause or a cut: the
    /// verdict's window, 3 to 7 s (its peers need six heartbeats of their
    /// own without one of the victim's).
    pub async fn expect_verdict_leaves(&self, since: Instant) -> Latencies {
        self.expect_leaves(
            since,
            Duration::from_secs(3),
            Duration::from_secs(7),
            Duration::from_secs(1),
        )
        .await
    }

    /// Waits until every victim session was closed as a fenced node closes
    /// them (1012); returns when, from `since`.
    pub async fn expect_victims_fenced(&self, since: Instant) -> Latencies {
        let mut closes = Vec::new();
        for session in &self.victims {
            let (at, close) = session.wait_end(Duration::from_secs(10)).await;
            assert_eq!(
                close,
                Some((1012, "cluster node fenced, reconnect".to_owned())),
                "{}: closed as a fenced node closes",
                session.user.username
            );
            closes.push(at.saturating_duration_since(since));
        }
        Latencies::of(closes)
    }

    /// The victim node serves again: a new session of a victim user on
    /// `node` sets a status, and every follower gets its join. Returns the
    /// new session.
    pub async fn expect_victim_node_back(&self, node: &Node) -> Session {
        let user = &self.victims[0].user;
        let mut back = node.session(user, false).await;
        let id = back.set_status("back", "back in the cluster").await;
        for (n, follower) in &self.followers {
            let what = format!("node {n}'s join of the victim node's new session");
            follower
                .wait_message(&what, Duration::from_secs(5), |m| {
                    m["status_presence_event"]["joins"][0]["session_id"] == id.as_str()
                })
                .await;
        }
        back
    }

    /// Asserts that no bystander and no follower session ended.
    pub fn expect_others_open(&self) {
        for session in self
            .bystanders
            .iter()
            .chain(self.followers.iter().map(|(_, f)| f))
        {
            assert!(
                session.ended().is_none(),
                "{}'s session ended: {:?}",
                session.user.username,
                session.ended()
            );
        }
    }
}

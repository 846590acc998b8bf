//! Engine tests without threads or sockets: two shards side by side, with
//! their inboxes pumped by hand, so the cross-shard protocol (follow grants,
//! interest counts, deliveries) runs deterministically.

use std::sync::Arc;

use super::outbox::CloseCause;
use super::shard::{SessionKey, SessionSpec, Shard};
use super::{EngineConfig, EngineHandle, Outbox, Outcome};
use crate::ids::{SessionId, UserId};
use crate::protocol::{json, Format, Frame, Request, RequestBody, ServerBody, ServerMessage};

struct Cluster {
    handle: EngineHandle,
    shards: Vec<Shard>,
}

impl Cluster {
    fn new(shards: usize) -> Cluster {
        let config = EngineConfig {
            shards,
            pin_threads: false,
            ..EngineConfig::default()
        };
        let handle = EngineHandle::standalone(config);
        let shards = (0..shards)
            .map(|i| Shard::new(i, handle.clone(), handle.shard_stats(i)))
            .collect();
        Cluster { handle, shards }
    }

    /// A user id that lives on `shard`.
    fn user_on(&self, shard: usize, nth: u128) -> UserId {
        (1..)
            .map(|i: u128| UserId(uuid::Uuid::from_u128(i * 0x1_0000_0001 + nth * 7_919)))
            .filter(|u| self.handle.router().shard_of_user(*u) == shard)
            .nth(nth as usize)
            .unwrap_or_default()
    }

    fn register(&mut self, user: UserId) {
        let owner = self.handle.router().shard_of_user(user);
        self.shards[owner].register_id(user);
    }

    fn connect(&mut self, user: UserId, online: bool) -> Session {
        self.register(user);
        let owner = self.handle.router().shard_of_user(user);
        let outbox = Arc::new(Outbox::new(Format::Json, 1 << 20, 0));
        let spec = SessionSpec {
            id: SessionId::random(),
            user,
            username: Arc::from("player"),
            appear_online: online,
            outbox: outbox.clone(),
        };
        let (key, _) = self.shards[owner].connect(spec);
        self.pump();
        Session {
            shard: owner,
            key,
            outbox,
            user,
        }
    }

    fn request(&mut self, session: &Session, body: RequestBody) -> Outcome {
        let outcome = self.shards[session.shard].dispatch(
            session.key,
            Request {
                cid: "1".into(),
                body,
            },
        );
        self.pump();
        outcome
    }

    /// Delivers every queued inbox message until all are empty.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            for (i, shard) in self.shards.iter_mut().enumerate() {
                while let Some(msg) = self.handle.inbox(i).and_then(|inbox| inbox.try_recv()) {
                    shard.handle(msg);
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
    }
}

struct Session {
    shard: usize,
    key: SessionKey,
    outbox: Arc<Outbox>,
    user: UserId,
}

impl Session {
    /// Every frame queued to this session so far, taken as the writer would.
    fn frames(&self) -> Vec<Frame> {
        std::iter::from_fn(|| self.outbox.pop())
            .inspect(|frame| self.outbox.written(frame.len()))
            .collect()
    }

    /// Every message queued to this session so far, decoded.
    fn received(&self) -> Vec<ServerMessage> {
        self.frames()
            .into_iter()
            .filter(|frame| frame.as_bytes()[0] & 0x0f == 0x1)
            .map(|frame| {
                let mut payload = frame.payload().to_vec();
                json::decode_server_message(&mut payload).expect("server frames decode")
            })
            .collect()
    }

    /// Websocket pings queued to this session so far (other frames are dropped).
    fn pings_queued(&self) -> usize {
        self.frames()
            .iter()
            .filter(|frame| frame.as_bytes()[0] & 0x0f == 0x9)
            .count()
    }

    /// The statuses of `user` in the events received, in order ("-" for a leave-only event).
    fn statuses_of(&self, user: UserId) -> Vec<String> {
        self.received()
            .into_iter()
            .filter_map(|m| match m.body {
                ServerBody::Event { joins, leaves } => {
                    let join = joins
                        .iter()
                        .find(|p| p.user_id == user)
                        .map(|p| p.status.to_string());
                    let leave = leaves.iter().find(|p| p.user_id == user);
                    join.or(leave.map(|_| "-".to_string()))
                }
                _ => None,
            })
            .collect()
    }
}

fn follow(ids: &[UserId]) -> RequestBody {
    RequestBody::StatusFollow {
        user_ids: ids.iter().map(UserId::to_string).collect(),
        usernames: Vec::new(),
    }
}

fn update(status: &str) -> RequestBody {
    RequestBody::StatusUpdate {
        status: Some(status.to_owned()),
    }
}

#[test]
fn a_follower_on_another_shard_gets_every_change_after_its_snapshot() {
    let mut cluster = Cluster::new(2);
    let (alice, bob) = (cluster.user_on(0, 0), cluster.user_on(1, 0));
    let a = cluster.connect(alice, false);
    let b = cluster.connect(bob, false);
    cluster.request(&a, update("one"));
    // The follow is requested, and before its grant is pumped alice changes twice.
    cluster.shards[b.shard].dispatch(
        b.key,
        Request {
            cid: "9".into(),
            body: follow(&[alice]),
        },
    );
    cluster.shards[a.shard].dispatch(
        a.key,
        Request {
            cid: "2".into(),
            body: update("two"),
        },
    );
    cluster.pump();
    cluster.request(&a, update("three"));
    let messages = b.received();
    let snapshot = messages
        .iter()
        .find_map(|m| match &m.body {
            ServerBody::Status(presences) => Some(presences.clone()),
            _ => None,
        })
        .expect("a snapshot reply");
    let events: Vec<String> = messages
        .iter()
        .filter_map(|m| match &m.body {
            ServerBody::Event { joins, .. } => joins.first().map(|p| p.status.to_string()),
            _ => None,
        })
        .collect();
    // The snapshot shows "two" (the follow reached alice's shard after it), and
    // everything after the snapshot arrives: exactly "three".
    assert_eq!(snapshot.len(), 1);
    assert_eq!(&*snapshot[0].status, "two");
    assert_eq!(events, vec!["three".to_string()]);
}

#[test]
fn interest_counts_follow_edges_per_shard_and_drop_to_zero() {
    let mut cluster = Cluster::new(2);
    let alice = cluster.user_on(0, 0);
    let a = cluster.connect(alice, true);
    let followers: Vec<Session> = (0..3)
        .map(|i| cluster.connect(cluster.user_on(1, i), false))
        .collect();
    for f in &followers {
        cluster.request(f, follow(&[alice]));
    }
    assert_eq!(cluster.shards[0].interest_of(alice), vec![(1, 3)]);
    // Following again adds no edge.
    cluster.request(&followers[0], follow(&[alice]));
    assert_eq!(cluster.shards[0].interest_of(alice), vec![(1, 3)]);
    cluster.request(
        &followers[0],
        RequestBody::StatusUnfollow {
            user_ids: vec![alice.to_string()],
        },
    );
    assert_eq!(cluster.shards[0].interest_of(alice), vec![(1, 2)]);
    for f in &followers[1..] {
        cluster.shards[f.shard].disconnect(f.key);
    }
    cluster.pump();
    assert!(cluster.shards[0].interest_of(alice).is_empty());
    assert_eq!(cluster.shards[1].follower_count(alice), 0);
    // No follower left on shard 1, so a change sends nothing there.
    cluster.request(&a, update("alone"));
    assert_eq!(cluster.handle.inbox(1).map(|i| i.depth()), Some(0));
}

#[test]
fn a_grant_for_a_session_that_closed_meanwhile_is_handed_back() {
    let mut cluster = Cluster::new(2);
    let alice = cluster.user_on(0, 0);
    let _a = cluster.connect(alice, true);
    let b = cluster.connect(cluster.user_on(1, 0), false);
    let outcome = cluster.shards[b.shard].dispatch(
        b.key,
        Request {
            cid: "1".into(),
            body: follow(&[alice]),
        },
    );
    assert_eq!(outcome, Outcome::Pending);
    // Deliver the follow to shard 0 only, then close b before the grant lands.
    while let Some(msg) = cluster.handle.inbox(0).and_then(|i| i.try_recv()) {
        cluster.shards[0].handle(msg);
    }
    assert_eq!(cluster.shards[0].interest_of(alice), vec![(1, 1)]);
    cluster.shards[b.shard].disconnect(b.key);
    cluster.pump();
    assert!(cluster.shards[0].interest_of(alice).is_empty());
}

#[test]
fn own_sessions_see_each_others_changes_and_leaves_carry_the_last_status() {
    let mut cluster = Cluster::new(2);
    let alice = cluster.user_on(1, 3);
    let phone = cluster.connect(alice, false);
    let laptop = cluster.connect(alice, true);
    cluster.request(&phone, update("on phone"));
    cluster.shards[laptop.shard].disconnect(laptop.key);
    cluster.pump();
    // The phone saw the laptop's join (""), its own update, and the laptop's leave.
    assert_eq!(
        phone.statuses_of(alice),
        vec!["".to_string(), "on phone".to_string(), "-".to_string()]
    );
    assert_eq!(phone.user, alice);
}

#[test]
fn unknown_users_are_not_followed_unless_configured() {
    let mut cluster = Cluster::new(2);
    let stranger = cluster.user_on(0, 5);
    let b = cluster.connect(cluster.user_on(1, 0), false);
    cluster.request(&b, follow(&[stranger]));
    assert!(cluster.shards[0].interest_of(stranger).is_empty());
    assert!(!cluster.shards[0].knows(stranger));
}

#[test]
fn keepalive_spreads_the_pings_of_sessions_that_connected_together_over_the_period() {
    // Defaults: ping every 15 s, pong wait 25 s. 600 sessions connect at
    // once (engine time 0); a sweep of every slot runs each second after.
    let mut cluster = Cluster::new(1);
    let users: Vec<UserId> = (0..600).map(|i| cluster.user_on(0, i)).collect();
    let sessions: Vec<Session> = users.iter().map(|u| cluster.connect(*u, false)).collect();
    let mut pinged_at: Vec<Vec<u32>> = vec![Vec::new(); sessions.len()];
    let mut per_second = Vec::new();
    for now in 1..=45 {
        for session in &sessions {
            session.outbox.heard(now);
        }
        cluster.shards[0].keepalive(now, 0..usize::MAX);
        let mut pinged = 0;
        for (session, times) in sessions.iter().zip(&mut pinged_at) {
            match session.pings_queued() {
                0 => {}
                1 => {
                    times.push(now);
                    pinged += 1;
                }
                n => panic!("{n} pings queued in one sweep"),
            }
        }
        per_second.push(pinged);
    }
    // Every session's first ping comes in the second half of the first
    // period (8 to 15 s), then one each period.
    for (i, times) in pinged_at.iter().enumerate() {
        let first = times.first().copied().unwrap_or_default();
        assert!((8..=15).contains(&first), "session {i}: {times:?}");
        assert_eq!(times, &[first, first + 15, first + 30], "session {i}");
    }
    // An 8th of them per second on average (75), never a burst: the bound
    // is more than eight standard deviations above the mean.
    assert_eq!(per_second.iter().sum::<usize>(), 3 * 600);
    assert!(
        per_second.iter().all(|n| *n <= 150),
        "pings per second: {per_second:?}"
    );
}

#[test]
fn keepalive_closes_a_session_silent_for_the_pong_wait_and_ignores_slots_past_the_end() {
    let mut cluster = Cluster::new(1);
    let (quiet, chatty) = (cluster.user_on(0, 0), cluster.user_on(0, 1));
    let (quiet, chatty) = (
        cluster.connect(quiet, false),
        cluster.connect(chatty, false),
    );
    let shard = &mut cluster.shards[0];
    chatty.outbox.heard(24);
    shard.keepalive(25, 0..usize::MAX);
    assert!(
        matches!(quiet.outbox.close_cause(), Some(CloseCause::Timeout)),
        "silent for 25 s"
    );
    assert!(chatty.outbox.close_cause().is_none());
    shard.keepalive(50, 1_000..2_000);
    assert!(
        chatty.outbox.close_cause().is_none(),
        "slots outside the sweep are left alone"
    );
}

#[test]
fn keepalive_does_not_count_the_time_a_request_kept_the_server_from_reading() {
    let mut cluster = Cluster::new(1);
    let user = cluster.user_on(0, 0);
    let waiting = cluster.connect(user, false);
    let shard = &mut cluster.shards[0];
    waiting.outbox.begin_request();
    shard.keepalive(30, 0..usize::MAX);
    assert!(
        waiting.outbox.close_cause().is_none(),
        "not read for 30 s because its request waited: not silent"
    );
    waiting.outbox.finish_request();
    shard.keepalive(54, 0..usize::MAX);
    assert!(
        waiting.outbox.close_cause().is_none(),
        "24 s since reading resumed"
    );
    shard.keepalive(55, 0..usize::MAX);
    assert!(
        matches!(waiting.outbox.close_cause(), Some(CloseCause::Timeout)),
        "silent for the pong wait once reading resumed"
    );
}

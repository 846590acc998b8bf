//! Shared set-up for the engine benches: in-memory sessions (an outbox, no
//! socket) on a standalone shard or on the running multi-shard engine.

#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Wake, Waker};

use herald::engine::{EngineConfig, EngineHandle, Outbox, SessionKey, SessionSpec, Shard};
use herald::ids::{SessionId, UserId};
use herald::protocol::{Format, Request, RequestBody};

/// A waker that counts wake-ups: stands in for a connection's writer task,
/// so "writer scheduled" is a real wake through the real `AtomicWaker`.
#[derive(Default)]
pub struct WakeCounter(pub AtomicU64);

impl Wake for WakeCounter {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// The `i`-th bench user.
pub fn user(i: u64) -> UserId {
    // Spread the bits so shard placement is like real random ids.
    UserId(uuid::Uuid::from_u128(
        u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) | 1,
    ))
}

/// A session spec for `user` with a fresh outbox.
pub fn spec(user: UserId, format: Format) -> (SessionSpec, Arc<Outbox>) {
    let outbox = Arc::new(Outbox::new(format, 1 << 20, 0));
    let spec = SessionSpec {
        id: SessionId::random(),
        user,
        username: Arc::from(format!("u{}", user.0.as_u128() % 1_000_000_000).as_str()),
        appear_online: false,
        outbox: outbox.clone(),
    };
    (spec, outbox)
}

pub fn request(body: RequestBody) -> Request {
    Request {
        cid: "1".into(),
        body,
    }
}

pub fn follow(users: &[UserId]) -> Request {
    request(RequestBody::StatusFollow {
        user_ids: users.iter().map(UserId::to_string).collect(),
        usernames: Vec::new(),
    })
}

pub fn update(status: &str) -> Request {
    request(RequestBody::StatusUpdate {
        status: Some(status.to_owned()),
    })
}

/// Empties an outbox as a writer would, and re-arms its waker.
pub fn drain(outbox: &Outbox, waker: &Waker) -> usize {
    let mut frames = 0;
    while let Some(frame) = outbox.pop() {
        outbox.written(frame.len());
        frames += 1;
    }
    outbox.register(waker);
    frames
}

/// One standalone shard: a leader and `followers` sessions following it.
pub struct FanoutShard {
    pub shard: Shard,
    pub leader: SessionKey,
    pub outboxes: Vec<Arc<Outbox>>,
    pub waker: Waker,
    pub wakes: Arc<WakeCounter>,
}

impl FanoutShard {
    pub fn new(followers: usize, format_of: impl Fn(usize) -> Format) -> FanoutShard {
        let config = EngineConfig {
            shards: 1,
            pin_threads: false,
            ..EngineConfig::default()
        };
        let handle = EngineHandle::standalone(config);
        let mut shard = Shard::new(0, handle.clone(), handle.shard_stats(0));
        let leader_user = user(0);
        let (leader_spec, leader_outbox) = spec(leader_user, Format::Json);
        let (leader, _) = shard.connect(leader_spec);
        let mut outboxes = vec![leader_outbox];
        let follow_leader = follow(&[leader_user]);
        for i in 0..followers {
            let (follower, outbox) = spec(user(i as u64 + 1), format_of(i));
            let (key, _) = shard.connect(follower);
            shard.dispatch(key, follow_leader.clone());
            outboxes.push(outbox);
        }
        let wakes = Arc::new(WakeCounter::default());
        let waker = Waker::from(wakes.clone());
        let mut fanout = FanoutShard {
            shard,
            leader,
            outboxes,
            waker,
            wakes,
        };
        fanout.drain_all();
        fanout
    }

    pub fn drain_all(&mut self) -> usize {
        self.outboxes.iter().map(|o| drain(o, &self.waker)).sum()
    }
}

/// The server's allocator, so sizes and speeds match the `herald` binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

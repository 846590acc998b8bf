//! [`Replicator`]: reads the presence log in order and keeps this node's
//! replica in step with it.
//!
//! It owns the **lease table** (every node's live incarnation, as of the
//! last record read) and decides, record by record, what the shards apply:
//!
//! * a presence record is routed to the shard that owns its user iff its
//!   writer's incarnation holds a live lease at this position of the log;
//!   records of any other incarnation are ignored (counted), so a node that
//!   wrote after being declared dead changes nothing anywhere;
//! * a lease record that ends an incarnation (dead, left, or replaced by a
//!   newer incarnation of the same node) makes every shard drop that
//!   incarnation's presences, with a leave each;
//! * the node's own heartbeats, as they appear in the log, are the clock of
//!   verdicts: after [`VERDICT_BEATS`] of them with no heartbeat from node X,
//!   it asks for a verdict on X (compare-and-set on X's last lease record).
//!
//! The first read is a *load*: the last record of every key, in log order,
//! until the watch reports nothing pending. It builds the lease table; its
//! presence records are skipped, since no shard keeps any user before the
//! node serves (a shard fetches the users it starts keeping, see
//! [`super::fetch`], and the answer is judged with [`Replicator::presence`]).
//!
//! Only the cluster task calls this; it sends to the shards' inboxes.

use ahash::AHashMap;

use super::record::{self, Key, LeaseState, LeaseValue, PresenceValue, Subjects};
use super::{ClusterShared, Origin, PresenceRecord, VERDICT_BEATS};
use crate::engine::inbox::ShardMsg;
use crate::engine::EngineHandle;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// What a log message says about its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Put,
    /// A KV purge or delete, or an expiry marker: the key is gone.
    Gone,
}

/// What the replicator tells the membership half of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// This node's own lease record, as the log now has it.
    OwnLease { rev: u64, value: Option<LeaseValue> },
    /// Node `node` missed its heartbeats: declare incarnation `incarnation`
    /// dead with compare-and-set on its lease record `rev`.
    Verdict {
        node: String,
        incarnation: u64,
        rev: u64,
    },
    /// An incarnation ended at this position: its keys may be purged.
    Ended { node: String, incarnation: u64 },
}

/// One node as the lease table has it.
#[derive(Debug, Default)]
struct NodeView {
    /// The live incarnation and its origin number.
    live: Option<(u64, Origin)>,
    /// Log position of the node's last lease record.
    rev: u64,
    /// This node's own heartbeats read since that record.
    beats_since: u64,
    /// The lease record a verdict was already asked for.
    verdict_asked: u64,
}

/// Reads the log into the shards (see the module doc).
pub struct Replicator {
    engine: EngineHandle,
    shared: Arc<ClusterShared>,
    subjects: Subjects,
    /// This node's id.
    me: String,
    /// This node's current incarnation, 0 while it holds no lease.
    own_incarnation: u64,
    nodes: AHashMap<String, NodeView>,
    origins: AHashMap<(String, u64), Origin>,
    /// The first load is not done yet.
    loading: bool,
    /// Log position of the last record read.
    last_seq: u64,
}

impl Replicator {
    pub fn new(engine: EngineHandle, shared: Arc<ClusterShared>, bucket: &str, me: &str) -> Self {
        Replicator {
            engine,
            shared,
            subjects: Subjects::new(bucket),
            me: me.to_owned(),
            own_incarnation: 0,
            nodes: AHashMap::new(),
            origins: AHashMap::new(),
            loading: true,
            last_seq: 0,
        }
    }

    /// Log position of the last record read.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// True once the first load is done.
    pub fn loaded(&self) -> bool {
        !self.loading
    }

    /// This node now writes (and heartbeats) as `incarnation` (0: none).
    pub fn set_own_incarnation(&mut self, incarnation: u64) {
        self.own_incarnation = incarnation;
    }

    /// Nodes with a live lease.
    pub fn live_nodes(&self) -> usize {
        self.nodes.values().filter(|n| n.live.is_some()).count()
    }

    /// The live incarnation of `node`, if any.
    pub fn live_incarnation(&self, node: &str) -> Option<u64> {
        self.nodes.get(node)?.live.map(|(inc, _)| inc)
    }

    /// Reads one record. `pending` is what the watch says is left to
    /// deliver; 0 ends the load.
    pub fn on_record(
        &mut self,
        seq: u64,
        subject: &str,
        operation: Operation,
        payload: &[u8],
        pending: u64,
        notices: &mut Vec<Notice>,
    ) {
        self.last_seq = self.last_seq.max(seq);
        match self.subjects.parse(subject) {
            Some(Key::Lease { node }) => {
                let node = node.to_owned();
                self.on_lease(&node, seq, operation, payload, notices);
            }
            Some(Key::Presence { .. }) => {
                if self.loaded() {
                    if let Some(record) = self.presence(seq, subject, operation, payload) {
                        let shard = self.engine.router().shard_of_user(record.user);
                        self.engine
                            .send(shard, ShardMsg::ApplyPresence(Box::new(record)));
                    }
                }
            }
            Some(Key::NewestSession { user }) => {
                let session = record::decode_newest_session(payload);
                if let (Some(session), Operation::Put, true) = (session, operation, self.loaded()) {
                    let shard = self.engine.router().shard_of_user(user);
                    self.engine
                        .send(shard, ShardMsg::NewestSession { user, session, seq });
                }
            }
            None => self.ignore(),
        }
        self.shared.log_lag.store(pending, Ordering::Relaxed);
        if pending == 0 {
            self.finish_load();
        }
    }

    /// The first load found an empty log, or the watch reported nothing pending.
    pub fn finish_load(&mut self) {
        if self.loading {
            self.loading = false;
            self.publish_live_count();
        }
    }

    /// The presence record at `seq` if its writer's incarnation is live in
    /// the lease table now; `None` (counted as ignored) otherwise, or if the
    /// subject is not a presence key or the value is unreadable.
    pub fn presence(
        &mut self,
        seq: u64,
        subject: &str,
        operation: Operation,
        payload: &[u8],
    ) -> Option<PresenceRecord> {
        let Some(Key::Presence {
            node,
            incarnation,
            user,
            session,
        }) = self.subjects.parse(subject)
        else {
            self.ignore();
            return None;
        };
        if self.live_incarnation(node) != Some(incarnation) {
            self.ignore();
            return None;
        }
        let value = match operation {
            Operation::Put => match PresenceValue::decode(payload, None) {
                Some(value) => Some(value),
                None => {
                    self.ignore();
                    return None;
                }
            },
            Operation::Gone => None,
        };
        let own = node == self.me && incarnation == self.own_incarnation;
        let origin = self.origin(node, incarnation);
        Some(PresenceRecord {
            user,
            session,
            origin,
            own,
            seq,
            purge_change: if value.is_none() {
                record::decode_purge(payload)
            } else {
                0
            },
            value,
        })
    }

    fn ignore(&self) {
        self.shared.ignored_records.fetch_add(1, Ordering::Relaxed);
    }

    fn on_lease(
        &mut self,
        node: &str,
        seq: u64,
        operation: Operation,
        payload: &[u8],
        notices: &mut Vec<Notice>,
    ) {
        let value = match operation {
            Operation::Put => LeaseValue::decode(payload),
            Operation::Gone => None,
        };
        let live_now = value
            .filter(|v| v.state == LeaseState::Live)
            .map(|v| v.incarnation);
        let origin_now = live_now.map(|inc| self.origin(node, inc));
        let loaded = self.loaded();
        let view = self.nodes.entry(node.to_owned()).or_default();
        view.rev = seq;
        view.beats_since = 0;
        let mut ended = None;
        if let Some((old, old_origin)) = view.live {
            if live_now != Some(old) {
                view.live = None;
                ended = Some((old, old_origin));
            }
        }
        if let (Some(inc), Some(origin)) = (live_now, origin_now) {
            view.live = Some((inc, origin));
        }
        if let Some((incarnation, origin)) = ended {
            if loaded {
                for shard in 0..self.engine.router().shards() {
                    self.engine.send(shard, ShardMsg::DropOrigin(origin));
                }
            }
            let verdict = value.is_some_and(|v| v.state == LeaseState::Dead);
            if verdict {
                self.shared.verdicts.fetch_add(1, Ordering::Relaxed);
            }
            let how = match value.map(|v| v.state) {
                Some(LeaseState::Dead) => "declared dead (verdict)",
                Some(LeaseState::Left) => "left cleanly",
                Some(LeaseState::Live) => "replaced by a new incarnation",
                None => "lease removed",
            };
            tracing::info!(
                node,
                incarnation = format_args!("{incarnation:016x}"),
                seq,
                "cluster node incarnation ended: {how}; its sessions leave"
            );
            notices.push(Notice::Ended {
                node: node.to_owned(),
                incarnation,
            });
        }
        if node == self.me {
            notices.push(Notice::OwnLease { rev: seq, value });
            let own_beat = self.own_incarnation != 0 && live_now == Some(self.own_incarnation);
            if own_beat && loaded {
                self.count_own_beat(notices);
            }
        }
        if ended.is_some() || origin_now.is_some() {
            self.publish_live_count();
        }
    }

    /// One of this node's heartbeats was read: every other live node that
    /// has not heartbeated since gets one step closer to a verdict.
    fn count_own_beat(&mut self, notices: &mut Vec<Notice>) {
        for (node, view) in self.nodes.iter_mut() {
            if *node == self.me {
                continue;
            }
            let Some((incarnation, _)) = view.live else {
                continue;
            };
            view.beats_since += 1;
            if view.beats_since >= VERDICT_BEATS && view.verdict_asked != view.rev {
                view.verdict_asked = view.rev;
                notices.push(Notice::Verdict {
                    node: node.clone(),
                    incarnation,
                    rev: view.rev,
                });
            }
        }
    }

    fn publish_live_count(&self) {
        self.shared
            .nodes_live
            .store(self.live_nodes() as u64, Ordering::Relaxed);
    }

    /// The origin number of `(node, incarnation)`, interned.
    fn origin(&mut self, node: &str, incarnation: u64) -> Origin {
        let next = Origin(self.origins.len() as u32);
        *self
            .origins
            .entry((node.to_owned(), incarnation))
            .or_insert(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineConfig, EngineHandle};
    use crate::ids::{SessionId, UserId};

    struct Log {
        replicator: Replicator,
        engine: EngineHandle,
        seq: u64,
        subjects: Subjects,
    }

    impl Log {
        fn new(me: &str) -> Log {
            let engine = EngineHandle::standalone(EngineConfig::default());
            let shared = Arc::new(ClusterShared::default());
            Log {
                replicator: Replicator::new(engine.clone(), shared, "herald", me),
                engine,
                seq: 0,
                subjects: Subjects::new("herald"),
            }
        }

        fn put(&mut self, subject: String, payload: Vec<u8>) -> Vec<Notice> {
            self.seq += 1;
            let mut notices = Vec::new();
            self.replicator.on_record(
                self.seq,
                &subject,
                Operation::Put,
                &payload,
                0,
                &mut notices,
            );
            notices
        }

        fn lease(&mut self, node: &str, state: LeaseState, incarnation: u64) -> Vec<Notice> {
            let value = LeaseValue {
                state,
                incarnation,
                beat: self.seq,
            };
            self.put(self.subjects.lease(node), value.encode())
        }

        fn presence(&mut self, node: &str, incarnation: u64, status: &str) -> UserId {
            let user = UserId(uuid::Uuid::new_v4());
            let value = PresenceValue {
                change: 1,
                username: "u".into(),
                status: status.into(),
            };
            let subject =
                self.subjects
                    .presence(node, incarnation, user, SessionId(uuid::Uuid::new_v4()));
            self.put(subject, value.encode());
            user
        }

        /// Messages the (single) shard received, by kind.
        fn drain(&self) -> Vec<&'static str> {
            let inbox = self.engine.inbox(0).unwrap();
            std::iter::from_fn(|| inbox.try_recv())
                .map(|m| match m {
                    ShardMsg::ApplyPresence(_) => "apply",
                    ShardMsg::DropOrigin(_) => "drop",
                    _ => "other",
                })
                .collect()
        }
    }

    #[test]
    fn presences_count_only_while_their_incarnation_is_live() {
        let mut log = Log::new("a");
        log.lease("b", LeaseState::Live, 7);
        log.presence("b", 7, "hi");
        log.presence("b", 6, "an older incarnation");
        assert_eq!(log.drain(), ["apply"]);
        log.lease("b", LeaseState::Dead, 7);
        assert_eq!(log.drain(), ["drop"]);
        log.presence("b", 7, "written after the verdict");
        assert_eq!(log.drain(), Vec::<&str>::new());
        assert_eq!(log.replicator.shared.verdicts.load(Ordering::Relaxed), 1);
        // A restart: a new incarnation replaces the old one at once.
        log.lease("b", LeaseState::Live, 8);
        log.presence("b", 8, "back");
        log.lease("b", LeaseState::Live, 9);
        assert_eq!(log.drain(), ["apply", "drop"]);
    }

    #[test]
    fn the_load_builds_the_lease_table_and_skips_presences() {
        let mut log = Log::new("a");
        let mut notices = Vec::new();
        let subjects = Subjects::new("herald");
        let value = PresenceValue {
            change: 1,
            username: "u".into(),
            status: "s".into(),
        };
        let user = UserId(uuid::Uuid::new_v4());
        let session = SessionId(uuid::Uuid::new_v4());
        let presence = subjects.presence("b", 3, user, session);
        log.replicator.on_record(
            1,
            &presence,
            Operation::Put,
            &value.encode(),
            1,
            &mut notices,
        );
        let lease = LeaseValue {
            state: LeaseState::Live,
            incarnation: 3,
            beat: 9,
        };
        assert!(!log.replicator.loaded());
        log.replicator.on_record(
            2,
            &subjects.lease("b"),
            Operation::Put,
            &lease.encode(),
            0,
            &mut notices,
        );
        assert!(log.replicator.loaded());
        assert_eq!(log.drain(), Vec::<&str>::new(), "no shard keeps anyone yet");
        // Judged against the final lease table when fetched later.
        let record = log
            .replicator
            .presence(1, &presence, Operation::Put, &value.encode());
        assert!(record.is_some_and(|r| r.user == user && r.value == Some(value.clone())));
        let other = subjects.presence("c", 4, user, SessionId(uuid::Uuid::new_v4()));
        assert!(log
            .replicator
            .presence(1, &other, Operation::Put, &value.encode())
            .is_none());
    }

    #[test]
    fn a_verdict_is_asked_after_six_own_beats_without_a_peer_beat() {
        let mut log = Log::new("a");
        log.replicator.set_own_incarnation(1);
        log.lease("a", LeaseState::Live, 1);
        log.lease("b", LeaseState::Live, 2);
        for _ in 0..VERDICT_BEATS - 1 {
            let notices = log.lease("a", LeaseState::Live, 1);
            assert!(!notices.iter().any(|n| matches!(n, Notice::Verdict { .. })));
        }
        // b heartbeats: the count starts again.
        log.lease("b", LeaseState::Live, 2);
        let b_rev = log.seq;
        for _ in 0..VERDICT_BEATS - 1 {
            log.lease("a", LeaseState::Live, 1);
        }
        let notices = log.lease("a", LeaseState::Live, 1);
        assert!(notices.contains(&Notice::Verdict {
            node: "b".into(),
            incarnation: 2,
            rev: b_rev
        }));
        // Asked once per lease record.
        let notices = log.lease("a", LeaseState::Live, 1);
        assert!(!notices.iter().any(|n| matches!(n, Notice::Verdict { .. })));
    }
}

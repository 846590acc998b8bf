//! [`Writer`]: the shards' writes to the presence log, one at a time per
//! session.
//!
//! A session's writes must land in the order they were made: a connect's
//! join, then an update, then the purge when it closes. Publishes from one
//! connection usually keep their order, but a retried one would not (the
//! purge could land before a retried update and leave a ghost status), so
//! each session has a queue and at most one write in flight. A failed
//! publish (timeout, no stream leader during an election, connection lost)
//! is retried with the same `Nats-Msg-Id`, so JetStream stores it once,
//! until it succeeds or the session's incarnation is fenced; then the
//! session's queue is dropped (its sessions are being closed, and its
//! records would be ignored anyway). Nothing is dropped silently otherwise:
//! the session's waiting request is answered when its record is read back
//! from the log, as applied by every node (see [`crate::engine::replica`]),
//! and a session whose write can no longer be applied is closed by the fence.
//!
//! A purge is a marker written over the session's key, and the key's older
//! versions are then deleted one by one, by the log positions their acks
//! gave ([`Stored::superseded`]). A live key's older versions are deleted
//! the same way, [`super::SUPERSEDED_GRACE`] after a newer version is
//! stored ([`Stored::aged`]), so the stream holds about one version per
//! live key instead of all of them. A `Nats-Rollup: sub` header would do it
//! in one write, but nats-server finds a subject's older messages by
//! scanning every message between the first and the last (all the log
//! wrote since the session connected): in the soak, purges of long-lived
//! sessions took most of its CPU and held the stream's lock for seconds.
//!
//! Queues live only while a session has writes pending: an idle session
//! costs nothing here but the positions of its stored versions. Only the
//! cluster task touches this.

use std::collections::VecDeque;
use std::time::Duration;

use ahash::AHashMap;
use async_nats::jetstream::message::PublishMessage as Publish;
use bytes::Bytes;

use super::record::{self, Subjects};
use super::{LogWrite, WriteOp, NEWEST_SESSION_TTL, PURGE_MARKER_TTL};
use crate::ids::SessionId;

/// Delay before a failed publish is tried again.
pub const RETRY: Duration = Duration::from_millis(250);

/// A publish ready to send: subject and message.
pub struct Prepared {
    pub session: SessionId,
    pub subject: String,
    pub message: Publish,
}

/// Per-session write queues (see the module doc).
pub struct Writer {
    subjects: Subjects,
    /// This node's id.
    me: String,
    /// Sessions with writes pending; the front one is in flight.
    queues: AHashMap<SessionId, VecDeque<LogWrite>>,
    /// Each session's incarnation and the log position of its newest
    /// stored version (an older one is handed back as a newer is stored).
    versions: AHashMap<SessionId, (u64, u64)>,
}

/// What a stored write leads to.
pub struct Stored {
    /// The write that was stored.
    pub done: Option<LogWrite>,
    /// The session's next publish, if it has one queued.
    pub next: Option<Prepared>,
    /// Log positions of the session's older versions, to delete now that
    /// its purge marker is stored.
    pub superseded: Vec<u64>,
    /// Log positions of versions of a live key that the stored put
    /// superseded, to delete after [`super::SUPERSEDED_GRACE`].
    pub aged: Vec<u64>,
}

impl Writer {
    pub fn new(bucket: &str, me: &str) -> Writer {
        Writer {
            subjects: Subjects::new(bucket),
            me: me.to_owned(),
            queues: AHashMap::new(),
            versions: AHashMap::new(),
        }
    }

    /// Sessions with writes pending.
    pub fn pending_sessions(&self) -> usize {
        self.queues.len()
    }

    /// Queues `write`; returns the publish to start when the session had
    /// none in flight.
    pub fn push(&mut self, write: LogWrite) -> Option<Prepared> {
        let session = write.session;
        let queue = self.queues.entry(session).or_default();
        queue.push_back(write);
        if queue.len() == 1 {
            self.prepare_front(session)
        } else {
            None
        }
    }

    /// The session's write in flight was stored at log position `seq`.
    pub fn stored(&mut self, session: SessionId, seq: u64) -> Stored {
        let Some(queue) = self.queues.get_mut(&session) else {
            return Stored {
                done: None,
                next: None,
                superseded: Vec::new(),
                aged: Vec::new(),
            };
        };
        let done = queue.pop_front();
        let emptied = queue.is_empty();
        let (superseded, aged) = match &done {
            Some(write) => self.record_version(write, seq),
            None => (Vec::new(), Vec::new()),
        };
        let next = if emptied {
            self.queues.remove(&session);
            None
        } else {
            self.prepare_front(session)
        };
        Stored {
            done,
            next,
            superseded,
            aged,
        }
    }

    /// Remembers where a put of the session's key was stored and hands back
    /// the versions it superseded (`aged`); a purge marker hands back the
    /// older versions left (`superseded`).
    fn record_version(&mut self, write: &LogWrite, seq: u64) -> (Vec<u64>, Vec<u64>) {
        match write.op {
            WriteOp::Put(_) => {
                let aged = self
                    .versions
                    .insert(write.session, (write.incarnation, seq))
                    .map(|(_, older)| older);
                (Vec::new(), aged.into_iter().collect())
            }
            WriteOp::Purge(_) => {
                let superseded = self
                    .versions
                    .remove(&write.session)
                    .map(|(_, older)| older)
                    .filter(|&older| older < seq);
                (superseded.into_iter().collect(), Vec::new())
            }
            WriteOp::NewestSession => (Vec::new(), Vec::new()),
        }
    }

    /// The session's write in flight failed: the same publish again, unless
    /// its incarnation is no longer `current` (then the queue is dropped).
    pub fn retry(&mut self, session: SessionId, current: Option<u64>) -> Option<Prepared> {
        let front = self.queues.get(&session)?.front()?;
        if Some(front.incarnation) != current {
            self.queues.remove(&session);
            return None;
        }
        self.prepare_front(session)
    }

    /// Drops every queued write of `incarnation` (fenced). Writes already in
    /// flight finish or fail on their own; their sessions' queues are then
    /// dropped by [`Writer::retry`].
    pub fn drop_incarnation(&mut self, incarnation: u64) {
        // Its keys go with one purge of the whole incarnation.
        self.versions.retain(|_, (owner, _)| *owner != incarnation);
        self.queues.retain(|_, queue| {
            let in_flight = queue.pop_front();
            queue.retain(|w| w.incarnation != incarnation);
            if let Some(front) = in_flight {
                queue.push_front(front);
            }
            !queue.is_empty()
        });
    }

    fn prepare_front(&self, session: SessionId) -> Option<Prepared> {
        let write = self.queues.get(&session)?.front()?;
        let presence = || {
            self.subjects
                .presence(&self.me, write.incarnation, write.user, write.session)
        };
        let (subject, message) = match &write.op {
            WriteOp::Put(value) => (
                presence(),
                Publish::build()
                    .payload(Bytes::from(value.encode()))
                    .message_id(format!("{}:{}", write.session, value.change)),
            ),
            WriteOp::Purge(change) => (
                presence(),
                Publish::build()
                    .payload(Bytes::from(record::encode_purge(*change)))
                    .message_id(format!("{}:{}", write.session, change))
                    .header("KV-Operation", "PURGE")
                    .ttl(PURGE_MARKER_TTL),
            ),
            WriteOp::NewestSession => (
                self.subjects.newest_session(write.user),
                Publish::build()
                    .payload(Bytes::from(record::encode_newest_session(write.session)))
                    .message_id(format!("{}:newest", write.session))
                    .ttl(NEWEST_SESSION_TTL),
            ),
        };
        Some(Prepared {
            session,
            subject,
            message,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::PresenceValue;
    use crate::ids::UserId;

    fn put(session: SessionId, incarnation: u64, change: u64) -> LogWrite {
        LogWrite {
            session,
            user: UserId(uuid::Uuid::new_v4()),
            incarnation,
            op: WriteOp::Put(PresenceValue {
                change,
                username: "u".into(),
                status: "s".into(),
            }),
        }
    }

    #[test]
    fn one_write_in_flight_per_session_in_order() {
        let mut writer = Writer::new("herald", "a");
        let (s1, s2) = (SessionId::random(), SessionId::random());
        assert!(writer.push(put(s1, 1, 1)).is_some());
        assert!(
            writer.push(put(s1, 1, 2)).is_none(),
            "waits behind the first"
        );
        assert!(
            writer.push(put(s2, 1, 1)).is_some(),
            "other sessions do not wait"
        );
        let Stored { done, next, .. } = writer.stored(s1, 10);
        assert!(matches!(done.unwrap().op, WriteOp::Put(ref value) if value.change == 1));
        let next = next.unwrap();
        assert!(next.subject.starts_with("$KV.herald.s.a.0000000000000001."));
        let Stored { done, next, .. } = writer.stored(s1, 11);
        assert!(matches!(done.unwrap().op, WriteOp::Put(ref value) if value.change == 2));
        assert!(next.is_none());
        assert_eq!(writer.pending_sessions(), 1);
    }

    #[test]
    fn a_stored_purge_marker_hands_back_the_older_versions_of_its_key() {
        let mut writer = Writer::new("herald", "a");
        let (s, other) = (SessionId::random(), SessionId::random());
        let mut write = put(s, 1, 1);
        writer.push(write.clone());
        writer.stored(s, 10);
        writer.push(put(other, 1, 1));
        writer.stored(other, 11);
        write.op = WriteOp::Put(PresenceValue {
            change: 2,
            username: "u".into(),
            status: "t".into(),
        });
        writer.push(write.clone());
        let stored = writer.stored(s, 12);
        assert!(stored.superseded.is_empty(), "a put deletes nothing now");
        assert_eq!(stored.aged, vec![10], "it supersedes the older version");
        write.op = WriteOp::Purge(3);
        assert!(writer.push(write.clone()).is_some(), "nothing in flight");
        let stored = writer.stored(s, 13);
        assert_eq!(stored.superseded, vec![12], "the version left");
        assert!(stored.aged.is_empty());
        // Online again after appearing offline: a fresh history.
        write.op = WriteOp::Put(PresenceValue {
            change: 4,
            username: "u".into(),
            status: "u".into(),
        });
        writer.push(write.clone());
        writer.stored(s, 14);
        write.op = WriteOp::Purge(5);
        writer.push(write);
        assert_eq!(writer.stored(s, 15).superseded, vec![14]);
        // A fenced incarnation's keys go with one purge of all of them.
        writer.drop_incarnation(1);
        writer.push(LogWrite {
            op: WriteOp::Purge(2),
            ..put(other, 1, 0)
        });
        assert!(writer.stored(other, 16).superseded.is_empty());
    }

    #[test]
    fn a_fenced_incarnation_drops_its_writes() {
        let mut writer = Writer::new("herald", "a");
        let s = SessionId::random();
        writer.push(put(s, 1, 1));
        writer.push(put(s, 1, 2));
        assert!(writer.retry(s, Some(1)).is_some(), "retried while current");
        writer.drop_incarnation(1);
        assert_eq!(writer.pending_sessions(), 1, "the write in flight stays");
        assert!(writer.retry(s, Some(2)).is_none());
        assert_eq!(writer.pending_sessions(), 0);
    }
}

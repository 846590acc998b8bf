//! Cluster mode on a shard: the replica of its users' presences on every
//! node, fed by the presence log, and the shard's half of writing to it.
//! (Single-node mode never touches this file.)
//!
//! Who owns what: the shard that owns user U keeps, in U's entry, every
//! session of U that has a status on any node ([`ReplicaPresence`]), as the
//! log had it at the last record this shard applied. Only the node's
//! replicator changes it, through `ApplyPresence` and `DropOrigin` messages
//! that arrive in log order; each change is fanned out to the local
//! followers through the single-node path ([`Shard::publish`]), with the
//! previous status from the replica as the leave. A follow snapshot reads
//! the replica in the same shard step that records the follow, so it is
//! exact at that log position.
//!
//! A local session's own changes take the same road: `status_update` writes
//! to the log ([`Shard::log_status`]) and waits; the record coming back (or
//! the log's acknowledgement, whichever is first) answers the request, and
//! the record's event reaches followers here like anyone else's. The answer
//! is queued before the session's own echo of its change.

use std::sync::Arc;

use super::outbox::CloseCause;
use super::shard::{presence_of_replica, SessionKey, Shard};
use super::stats::ShardStats;
use super::Outcome;
use crate::cluster::{ClusterLink, LogWrite, Origin, PresenceRecord, PresenceValue, WriteOp};
use crate::ids::{SessionId, UserId};
use crate::protocol::{Reply, ReplyBody, StatusPresenceEvent};

/// One session with a status, on any node, as the log has it.
#[derive(Debug, Clone)]
pub(super) struct ReplicaPresence {
    pub session: SessionId,
    /// The incarnation that wrote it.
    pub origin: Origin,
    /// The session's change number of this status.
    pub change: u64,
    pub username: Arc<str>,
    pub status: Arc<str>,
}

/// A local session's place in the log (cluster mode only; boxed in the
/// session entry so that single-node sessions pay one pointer).
#[derive(Debug, Default)]
pub(super) struct LoggedSession {
    /// The incarnation the session registered under.
    pub incarnation: u64,
    /// Writes made so far: the change number of the last one.
    pub change: u64,
    /// The log holds (or will hold) a status of this session, so a purge is
    /// due when it goes offline or ends.
    pub has_status: bool,
    /// The request waiting for its write: its cid and change number.
    pub awaiting: Option<(String, u64)>,
    /// `--single-socket`: log position of this session's `c.<user>` record.
    pub newest_seq: Option<u64>,
}

impl Shard {
    /// The cluster, in cluster mode.
    pub(super) fn cluster(&self) -> Option<&ClusterLink> {
        self.engine.cluster()
    }

    /// Cluster mode: sets (`Some`) or clears the session's status by writing
    /// it to the log. With `cid`, the request is answered once the log has
    /// it ([`Outcome::Pending`] until then); clearing a session that has no
    /// status writes nothing and is answered at once.
    pub(super) fn log_status(
        &mut self,
        key: SessionKey,
        status: Option<Arc<str>>,
        cid: Option<&str>,
    ) -> Outcome {
        let Some(link) = self.cluster().cloned() else {
            return Outcome::Done;
        };
        let index = self.index as u16;
        let Some(entry) = self.entry_mut(key) else {
            return Outcome::Done;
        };
        let (session, user, username) = (entry.id, entry.user, entry.username.clone());
        entry.status = status.clone();
        let Some(logged) = entry.logged.as_deref_mut() else {
            return Outcome::Done;
        };
        if status.is_none() && !logged.has_status {
            if let Some(cid) = cid {
                self.ack(key, cid);
            }
            return Outcome::Done;
        }
        logged.change += 1;
        let change = logged.change;
        logged.has_status = status.is_some();
        let op = match status {
            Some(status) => WriteOp::Put(PresenceValue {
                change,
                username,
                status,
            }),
            None => WriteOp::Purge(change),
        };
        let pending = cid.is_some();
        if let Some(cid) = cid {
            logged.awaiting = Some((cid.to_owned(), change));
        }
        link.write(LogWrite {
            session,
            user,
            incarnation: logged.incarnation,
            op,
            reply: pending.then_some((index, key)),
        });
        if pending {
            if let Some(outbox) = self.outbox(key) {
                outbox.begin_request();
            }
            Outcome::Pending
        } else {
            Outcome::Done
        }
    }

    /// Cluster mode: a session ends; its status (if the log has one) is
    /// purged. Its leave comes back through the log.
    pub(super) fn log_disconnect(&self, session: SessionId, user: UserId, logged: &LoggedSession) {
        if let (Some(link), true) = (self.cluster(), logged.has_status) {
            link.write(LogWrite {
                session,
                user,
                incarnation: logged.incarnation,
                op: WriteOp::Purge(logged.change + 1),
                reply: None,
            });
        }
    }

    /// Cluster mode, `--single-socket`: announces a new session as its user's newest.
    pub(super) fn log_newest_session(&self, session: SessionId, user: UserId, incarnation: u64) {
        if let Some(link) = self.cluster() {
            link.write(LogWrite {
                session,
                user,
                incarnation,
                op: WriteOp::NewestSession,
                reply: None,
            });
        }
    }

    fn ack(&self, key: SessionKey, cid: &str) {
        self.reply(
            key,
            &Reply {
                cid,
                body: ReplyBody::Ack,
            },
        );
    }

    /// Answers the session's waiting `status_update` if the log now holds its
    /// write (`change` or a later one).
    pub(super) fn log_acked(&mut self, key: SessionKey, change: u64) {
        let Some(logged) = self.entry_mut(key).and_then(|e| e.logged.as_deref_mut()) else {
            return;
        };
        match &logged.awaiting {
            Some((_, waiting)) if *waiting <= change => {}
            _ => return,
        }
        if let Some((cid, _)) = logged.awaiting.take() {
            self.ack(key, &cid);
            if let Some(outbox) = self.outbox(key) {
                outbox.finish_request();
            }
        }
    }

    /// Applies one presence record of a user owned here (see the module doc).
    pub(super) fn apply_presence(&mut self, record: PresenceRecord) {
        let user = record.user;
        if record.own {
            // The session's own write came back: answer its request first,
            // so that the answer precedes the session's echo of the change.
            let change = record
                .value
                .as_ref()
                .map_or(record.purge_change, |v| v.change);
            if let Some(key) = self.local_session(user, record.session) {
                self.log_acked(key, change);
            }
        }
        let entry = self.users.entry(user).or_default();
        let was_online = !entry.replica.is_empty();
        let position = entry
            .replica
            .iter()
            .position(|p| p.session == record.session);
        let (old, new) = match record.value {
            Some(value) => {
                let new = ReplicaPresence {
                    session: record.session,
                    origin: record.origin,
                    change: value.change,
                    username: value.username,
                    status: value.status,
                };
                let old = match position {
                    Some(i) => Some(std::mem::replace(&mut entry.replica[i], new.clone())),
                    None => {
                        entry.replica.push(new.clone());
                        None
                    }
                };
                (old, Some(new))
            }
            None => (position.map(|i| entry.replica.swap_remove(i)), None),
        };
        let is_online = !entry.replica.is_empty();
        let latest = new.as_ref().map_or(record.purge_change, |n| n.change);
        if let Some(old) = &old {
            let skipped = latest.saturating_sub(old.change + 1);
            ShardStats::add(&self.stats.coalesced, skipped);
        }
        self.count_online(was_online, is_online);
        if old.is_none() && new.is_none() {
            self.forget_if_idle(user);
            return;
        }
        let event = StatusPresenceEvent {
            joins: new.map(|p| presence_of_replica(user, &p)),
            leaves: old.map(|p| presence_of_replica(user, &p)),
        };
        self.publish(user, event);
        if !is_online {
            self.forget_if_idle(user);
        }
    }

    /// Every presence written by `origin` ends (its node was declared dead,
    /// stopped, or restarted): each leaves, with its last status.
    pub(super) fn drop_origin(&mut self, origin: Origin) {
        let mut gone: Vec<(UserId, ReplicaPresence)> = Vec::new();
        let mut emptied = 0;
        for (user, entry) in self.users.iter_mut() {
            if !entry.replica.iter().any(|p| p.origin == origin) {
                continue;
            }
            let mut i = 0;
            while i < entry.replica.len() {
                if entry.replica[i].origin == origin {
                    gone.push((*user, entry.replica.swap_remove(i)));
                } else {
                    i += 1;
                }
            }
            if entry.replica.is_empty() {
                emptied += 1;
            }
        }
        ShardStats::gauge(&self.stats.users_online, -emptied);
        for (user, presence) in &gone {
            let event = StatusPresenceEvent {
                joins: None,
                leaves: Some(presence_of_replica(*user, presence)),
            };
            self.publish(*user, event);
        }
        for (user, _) in gone {
            self.forget_if_idle(user);
        }
    }

    /// `--single-socket`: the log names `session` as `user`'s newest at
    /// position `seq`. Local sessions of the user whose own record came
    /// earlier are replaced; a session whose record has not come back yet
    /// is newer by log order and stays.
    pub(super) fn newest_session(&mut self, user: UserId, session: SessionId, seq: u64) {
        let Some(slots) = self.users.get(&user).map(|u| u.sessions.clone()) else {
            return;
        };
        for slot in slots {
            let Some(entry) = self.entries.get_mut(slot as usize).and_then(Option::as_mut) else {
                continue;
            };
            let Some(logged) = entry.logged.as_deref_mut() else {
                continue;
            };
            if entry.id == session {
                logged.newest_seq = Some(seq);
            } else if logged.newest_seq.is_some_and(|own| own < seq) {
                self.replace_session(slot);
            }
        }
    }

    /// This node was fenced: every session closes (1012), to reconnect
    /// anywhere. Their presences leave through the log (a verdict, or the
    /// node's next registration).
    pub(super) fn fence(&self) {
        self.close_all(CloseCause::Fenced);
    }

    /// The key of the local session `session` of `user`, if it is here.
    fn local_session(&self, user: UserId, session: SessionId) -> Option<SessionKey> {
        let slots = &self.users.get(&user)?.sessions;
        slots.iter().find_map(|&slot| {
            let entry = self.entries.get(slot as usize)?.as_ref()?;
            (entry.id == session).then(|| self.key_of(slot))
        })
    }

    /// Keeps `herald_users_online` (users with a status anywhere, in cluster mode).
    fn count_online(&self, was: bool, is: bool) {
        match (was, is) {
            (false, true) => ShardStats::gauge(&self.stats.users_online, 1),
            (true, false) => ShardStats::gauge(&self.stats.users_online, -1),
            _ => {}
        }
    }
}

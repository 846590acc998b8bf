//! Cluster mode on a shard: the replica of its users' presences on every
//! node, fed by the presence log, and the shard's half of writing to it.
//! (Single-node mode never touches this file.)
//!
//! # What a shard keeps
//!
//! The shard that owns user U keeps U's presences on all nodes (every
//! session of U with a status, `ReplicaPresence`) **only while U is of
//! interest on this node**: a local session belongs to U, or a local session
//! follows U. So a node's memory grows with its own sessions and the users
//! they follow, not with the cluster. Records of other users are read and
//! dropped.
//!
//! When U becomes of interest, the shard starts *loading* it: it asks the
//! cluster for U's keys as they stand ([`crate::cluster::fetch`]) and
//! buffers U's records that arrive meanwhile. The snapshot comes with the
//! log position it is the state of; the buffered records after that
//! position are applied on top (each one an event for the local
//! followers), records at or before it are already in the snapshot.
//! Follow grants for a user that is loading wait for it, so a follow
//! snapshot is always the replica at the shard's position: gap-free and
//! duplicate-free with the events after it.
//!
//! Once loaded, only the node's replicator changes the replica, through
//! `ApplyPresence` and `DropOrigin` messages in log order; each change is
//! fanned out to the local followers through the single-node path
//! (`Shard::publish`), with the replica's previous status as the leave.
//!
//! # Writes
//!
//! A local session's own changes take the same road: `status_update` writes
//! to the log (`Shard::log_status`) and waits; its record coming back,
//! visible (its incarnation holds a live lease at that position, so every
//! node applies it), answers the request, and the record's event reaches
//! followers here like anyone else's. The answer is queued before the
//! session's own echo of its change. A write stored after a verdict on this
//! node is never read back as visible, so it is never answered: the
//! session is closed by the fence instead.

use std::sync::Arc;

use ahash::AHashMap;
use smallvec::SmallVec;

use super::inbox::ShardMsg;
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

/// What a shard keeps of one user while the user is of interest.
#[derive(Debug, Default)]
pub(super) struct Replica {
    /// The user's sessions with a status, on every node.
    pub presences: Vec<ReplicaPresence>,
    /// The log position of the snapshot the replica was loaded from:
    /// records at or before it are already reflected.
    as_of: u64,
    /// While the snapshot is being fetched.
    loading: Option<Box<Loading>>,
}

impl Replica {
    /// Loaded and current: snapshots and events may be served from it.
    pub fn is_loaded(&self) -> bool {
        self.loading.is_none()
    }
}

/// A user whose snapshot is being fetched.
#[derive(Debug, Default)]
struct Loading {
    /// The shard's log position when loading began: an older snapshot is stale.
    since: u64,
    /// The user's records that arrived since, in log order.
    buffer: Vec<PresenceRecord>,
    /// Incarnations that ended since: their presences in the snapshot are gone.
    dropped: SmallVec<[Origin; 1]>,
    /// Follow grants waiting for this user.
    grants: SmallVec<[u64; 1]>,
}

/// A follow grant that waits for users to load.
#[derive(Debug)]
pub(super) struct ParkedGrant {
    pub from_shard: u16,
    pub session: SessionKey,
    pub users: Vec<UserId>,
    pub new_edges: Vec<bool>,
    /// Users still loading.
    waiting: usize,
}

/// A shard's cluster bookkeeping (unused in single-node mode).
#[derive(Debug, Default)]
pub(super) struct ReplicaState {
    /// The log position of the last record this shard received.
    log_seq: u64,
    /// Follow grants waiting for snapshots, by number.
    parked: AHashMap<u64, ParkedGrant>,
    next_grant: u64,
    /// Users named by parked grants, with how many: they stay kept until
    /// the grants run, or a user loaded early would be released (nothing
    /// follows it yet) and fetched again when the grant runs, which would
    /// then wait for it while another of its users is released, and so on.
    pinned: AHashMap<UserId, u32>,
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

    // ---- writes ---------------------------------------------------------------

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

    /// Answers the session's waiting `status_update` if its write (`change`,
    /// or a later one) was read back from the log.
    fn log_acked(&mut self, key: SessionKey, change: u64) {
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

    // ---- interest ---------------------------------------------------------------

    /// Whether `user` (owned here) is of interest on this node: a local
    /// session follows it (its own sessions follow it from the start).
    fn interested(&self, user: UserId) -> bool {
        self.followers.followers_of(user).is_some()
            || self
                .users
                .get(&user)
                .is_some_and(|u| !u.interest.is_empty())
            || self.replica_state.pinned.contains_key(&user)
    }

    /// Whether the replica of `user` is loaded (cluster mode; always true
    /// in single-node mode, which keeps every local session anyway).
    pub(super) fn is_loaded(&self, user: UserId) -> bool {
        self.cluster().is_none()
            || self
                .users
                .get(&user)
                .and_then(|u| u.replica.as_deref())
                .is_some_and(Replica::is_loaded)
    }

    /// Starts keeping `users` (owned here): those not kept yet begin
    /// loading. Returns the users that are not loaded yet.
    pub(super) fn retain(&mut self, users: &[UserId]) -> Vec<UserId> {
        let Some(link) = self.cluster().cloned() else {
            return Vec::new();
        };
        let since = self.replica_state.log_seq;
        let mut fetch = Vec::new();
        let mut loading = Vec::new();
        for &user in users {
            let entry = self.users.entry(user).or_default();
            match entry.replica.as_deref() {
                Some(replica) if replica.is_loaded() => {}
                Some(_) => loading.push(user),
                None => {
                    entry.replica = Some(Box::new(Replica {
                        loading: Some(Box::new(Loading {
                            since,
                            ..Loading::default()
                        })),
                        ..Replica::default()
                    }));
                    fetch.push(user);
                    loading.push(user);
                }
            }
        }
        if !fetch.is_empty() {
            link.fetch(self.index as u16, fetch, since);
        }
        loading
    }

    /// Stops keeping `user` if nothing here is interested in it any more.
    pub(super) fn release_if_uninterested(&mut self, user: UserId) {
        if self.cluster().is_none() || self.interested(user) {
            return;
        }
        let Some(entry) = self.users.get_mut(&user) else {
            return;
        };
        let releasable = entry
            .replica
            .as_deref()
            .is_some_and(|r| r.loading.is_none());
        if releasable {
            if let Some(replica) = entry.replica.take() {
                if !replica.presences.is_empty() {
                    ShardStats::gauge(&self.stats.users_online, -1);
                }
            }
        }
        self.forget_if_idle(user);
    }

    // ---- the log ----------------------------------------------------------------

    /// Applies one presence record of a user owned here (see the module doc).
    pub(super) fn apply_presence(&mut self, record: PresenceRecord) {
        let user = record.user;
        self.replica_state.log_seq = self.replica_state.log_seq.max(record.seq);
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
        let Some(replica) = self
            .users
            .get_mut(&user)
            .and_then(|u| u.replica.as_deref_mut())
        else {
            return; // not of interest here
        };
        if let Some(loading) = replica.loading.as_mut() {
            loading.buffer.push(record);
            return;
        }
        if record.seq <= replica.as_of {
            return; // already in the snapshot
        }
        self.update_replica(record);
    }

    /// Applies `record` to its user's loaded replica and tells the local followers.
    fn update_replica(&mut self, record: PresenceRecord) {
        let user = record.user;
        let Some(replica) = self
            .users
            .get_mut(&user)
            .and_then(|u| u.replica.as_deref_mut())
        else {
            return;
        };
        let was_online = !replica.presences.is_empty();
        let position = replica
            .presences
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
                    Some(i) => Some(std::mem::replace(&mut replica.presences[i], new.clone())),
                    None => {
                        replica.presences.push(new.clone());
                        None
                    }
                };
                (old, Some(new))
            }
            None => (position.map(|i| replica.presences.swap_remove(i)), None),
        };
        let is_online = !replica.presences.is_empty();
        let latest = new.as_ref().map_or(record.purge_change, |n| n.change);
        if let Some(old) = &old {
            let skipped = latest.saturating_sub(old.change + 1);
            ShardStats::add(&self.stats.coalesced, skipped);
        }
        self.count_online(was_online, is_online);
        if old.is_none() && new.is_none() {
            return;
        }
        let event = StatusPresenceEvent {
            joins: new.map(|p| presence_of_replica(user, &p)),
            leaves: old.map(|p| presence_of_replica(user, &p)),
        };
        self.publish(user, event);
    }

    /// Every presence written by `origin` ends (its node was declared dead,
    /// stopped, or restarted): each leaves, with its last status.
    pub(super) fn drop_origin(&mut self, origin: Origin) {
        let mut gone: Vec<(UserId, ReplicaPresence)> = Vec::new();
        let mut emptied = 0;
        for (user, entry) in self.users.iter_mut() {
            let Some(replica) = entry.replica.as_deref_mut() else {
                continue;
            };
            if let Some(loading) = replica.loading.as_mut() {
                loading.buffer.retain(|r| r.origin != origin);
                loading.dropped.push(origin);
                continue;
            }
            if !replica.presences.iter().any(|p| p.origin == origin) {
                continue;
            }
            let mut i = 0;
            while i < replica.presences.len() {
                if replica.presences[i].origin == origin {
                    gone.push((*user, replica.presences.swap_remove(i)));
                } else {
                    i += 1;
                }
            }
            if replica.presences.is_empty() {
                emptied += 1;
            }
        }
        ShardStats::gauge(&self.stats.users_online, -emptied);
        for (user, presence) in gone {
            let event = StatusPresenceEvent {
                joins: None,
                leaves: Some(presence_of_replica(user, &presence)),
            };
            self.publish(user, event);
        }
    }

    /// The snapshot of `users` (owned here) at log position `as_of`, from
    /// the cluster: each user still loading is loaded from it, then its
    /// buffered records after `as_of` are applied, then the follow grants
    /// that waited for it run.
    pub(super) fn snapshot_loaded(
        &mut self,
        as_of: u64,
        users: Vec<UserId>,
        records: Vec<PresenceRecord>,
    ) {
        let mut by_user: AHashMap<UserId, Vec<PresenceRecord>> = AHashMap::new();
        for record in records {
            by_user.entry(record.user).or_default().push(record);
        }
        let mut stale = Vec::new();
        for user in users {
            let Some(replica) = self
                .users
                .get_mut(&user)
                .and_then(|u| u.replica.as_deref_mut())
            else {
                continue;
            };
            let Some(loading) = replica.loading.take() else {
                continue; // loaded already (a duplicate answer)
            };
            if as_of < loading.since {
                // Older than what this shard has read: ask again.
                replica.loading = Some(loading);
                stale.push(user);
                continue;
            }
            let Loading {
                buffer,
                dropped,
                grants,
                ..
            } = *loading;
            replica.as_of = as_of;
            replica.presences = by_user
                .remove(&user)
                .unwrap_or_default()
                .into_iter()
                .filter(|r| !dropped.contains(&r.origin))
                .filter_map(|r| {
                    let value = r.value?;
                    Some(ReplicaPresence {
                        session: r.session,
                        origin: r.origin,
                        change: value.change,
                        username: value.username,
                        status: value.status,
                    })
                })
                .collect();
            if !replica.presences.is_empty() {
                ShardStats::gauge(&self.stats.users_online, 1);
            }
            let (covered, after): (Vec<_>, Vec<_>) =
                buffer.into_iter().partition(|r| r.seq <= as_of);
            self.echo_own_changes(user, covered);
            for record in after {
                self.update_replica(record);
            }
            // Grants still waiting for other users pin this one (see
            // `ReplicaState::pinned`), so it is not released here.
            for grant in grants {
                self.grant_loaded(grant);
            }
            self.release_if_uninterested(user);
        }
        if !stale.is_empty() {
            if let Some(link) = self.cluster() {
                link.fetch(self.index as u16, stale, self.replica_state.log_seq);
            }
        }
    }

    /// While `user` loaded because a session of it connected here, that
    /// session (following its own user from the start) made changes the
    /// snapshot already holds: their events are still due to it (its own
    /// join from `status=true` among them). Nobody else here follows the
    /// user yet, so they go to its own sessions only. Each event's leave is
    /// the session's previous change in the same window.
    fn echo_own_changes(&mut self, user: UserId, covered: Vec<PresenceRecord>) {
        let mut previous: AHashMap<SessionId, ReplicaPresence> = AHashMap::new();
        for record in covered {
            if !record.own || self.local_session(user, record.session).is_none() {
                continue;
            }
            let new = record.value.map(|value| ReplicaPresence {
                session: record.session,
                origin: record.origin,
                change: value.change,
                username: value.username,
                status: value.status,
            });
            let old = match &new {
                Some(new) => previous.insert(record.session, new.clone()),
                None => previous.remove(&record.session),
            };
            if old.is_none() && new.is_none() {
                continue;
            }
            let event = StatusPresenceEvent {
                joins: new.map(|p| presence_of_replica(user, &p)),
                leaves: old.map(|p| presence_of_replica(user, &p)),
            };
            self.publish(user, event);
        }
    }

    // ---- follow grants that wait ---------------------------------------------

    /// Parks a follow grant until `loading` (some of its users) are loaded.
    pub(super) fn park_grant(
        &mut self,
        from_shard: u16,
        session: SessionKey,
        users: Vec<UserId>,
        new_edges: Vec<bool>,
        loading: &[UserId],
    ) {
        let id = self.replica_state.next_grant;
        self.replica_state.next_grant += 1;
        for user in &users {
            *self.replica_state.pinned.entry(*user).or_default() += 1;
        }
        for user in loading {
            if let Some(l) = self
                .users
                .get_mut(user)
                .and_then(|u| u.replica.as_deref_mut())
                .and_then(|r| r.loading.as_mut())
            {
                l.grants.push(id);
            }
        }
        self.replica_state.parked.insert(
            id,
            ParkedGrant {
                from_shard,
                session,
                users,
                new_edges,
                waiting: loading.len(),
            },
        );
    }

    /// One user of parked grant `id` is loaded; the grant runs once all are.
    fn grant_loaded(&mut self, id: u64) {
        let Some(grant) = self.replica_state.parked.get_mut(&id) else {
            return;
        };
        grant.waiting = grant.waiting.saturating_sub(1);
        if grant.waiting > 0 {
            return;
        }
        if let Some(grant) = self.replica_state.parked.remove(&id) {
            for user in &grant.users {
                if let Some(n) = self.replica_state.pinned.get_mut(user) {
                    *n -= 1;
                    if *n == 0 {
                        self.replica_state.pinned.remove(user);
                    }
                }
            }
            let users = grant.users.clone();
            // Runs the grant again (its users are all loaded: pinned).
            self.handle(ShardMsg::Follow {
                from_shard: grant.from_shard,
                session: grant.session,
                users: grant.users,
                new_edges: grant.new_edges,
            });
            // Users the grant did not end up following (none, usually).
            for user in users {
                self.release_if_uninterested(user);
            }
        }
    }

    // ---- other cluster messages -----------------------------------------------

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

    /// Keeps `herald_users_online` (in cluster mode: users kept here with a
    /// status on some node).
    fn count_online(&self, was: bool, is: bool) {
        match (was, is) {
            (false, true) => ShardStats::gauge(&self.stats.users_online, 1),
            (true, false) => ShardStats::gauge(&self.stats.users_online, -1),
            _ => {}
        }
    }
}

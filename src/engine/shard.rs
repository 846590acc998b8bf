//! [`Shard`]: the state one shard thread owns, and the operations on it that
//! are not requests (connect, disconnect, fan-out, inbox messages, keepalive).
//! The requests themselves live in [`super::commands`], one file each.
//!
//! Everything here is touched by exactly one thread, the shard's, so there is
//! no lock: the connection tasks of this shard and its inbox drain task run
//! on the same single-threaded runtime and take turns on a `RefCell`.
//!
//! State, by who owns it:
//! * sessions whose user hashes here (`slots`, `entries`): their status,
//!   their follow set, their outbox, their pending request;
//! * users that hash here (`users`): which local sessions have a status (for
//!   snapshots), which other shards hold follow edges to them and how many
//!   (so a change is sent only where followers are), and whether the user
//!   exists (the directory);
//! * usernames that hash here (`usernames`): the username directory;
//! * the follower index (`followers`): for any user, wherever it lives, the
//!   local sessions that follow it. A status change is fanned out by every
//!   shard that holds followers, in parallel.

use std::collections::hash_map::Entry;
use std::ops::Range;
use std::sync::Arc;

use ahash::AHashMap;
use fastwebsockets::OpCode;
use smallvec::SmallVec;

use super::event::StatusChange;
use super::follow_graph::{FollowerIndex, HandleSet};
use super::inbox::ShardMsg;
use super::outbox::{CloseCause, Outbox, Push};
use super::replica::{LoggedSession, Replica, ReplicaPresence, ReplicaState};
use super::stats::ShardStats;
use super::status_query::UserStatus;
use super::EngineHandle;
use crate::ids::{SessionId, UserId};
use crate::protocol::errors::close_reason;
use crate::protocol::{Frame, Notification, Presence, Reply, ReplyBody, StatusPresenceEvent};

/// Followers handled per batch in the fan-out loop (see [`Shard::deliver`]).
const FANOUT_BATCH: usize = 32;

/// Names a session on its home shard. The generation makes a key of a closed
/// session useless once its slot is reused, so late messages for it are
/// recognised and answered (e.g. follow edges handed back).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub slot: u32,
    pub generation: u32,
}

/// What a connection brings to [`Shard::connect`].
pub struct SessionSpec {
    pub id: SessionId,
    pub user: UserId,
    /// The token's `usn`, shown in this session's presences.
    pub username: Arc<str>,
    /// `status=true` on the connect URL: appear online with `""` at once.
    pub appear_online: bool,
    pub outbox: Arc<Outbox>,
}

/// A follow request waiting for other shards.
pub(super) struct PendingFollow {
    /// The request's cid, for the reply.
    pub cid: String,
    /// Replies still expected from other shards.
    pub awaiting: usize,
    /// While usernames are being resolved: the ids gathered so far.
    pub resolving: Option<Vec<UserId>>,
    /// Snapshot presences gathered so far.
    pub presences: Vec<Presence>,
}

/// One session's state on its home shard.
pub(super) struct SessionEntry {
    pub id: SessionId,
    pub user: UserId,
    pub username: Arc<str>,
    /// The current status; `None` means not online.
    pub status: Option<Arc<str>>,
    /// Handles (in the shard's [`FollowerIndex`]) of the users this session
    /// follows, its own user excluded.
    pub follows: HandleSet,
    /// A follow request waiting for other shards.
    pub pending: Option<Box<PendingFollow>>,
    /// Engine time at which this session's next websocket ping is due.
    pub next_ping: u32,
    /// Requests counted against the opt-in rate limits in the current second.
    pub rate: RateWindow,
    /// Cluster mode only: the session's writes to the presence log.
    pub logged: Option<Box<LoggedSession>>,
}

/// A one-second window of rate-limited requests (`--status-update-rate`,
/// `--follow-rate`).
#[derive(Default)]
pub(super) struct RateWindow {
    second: u32,
    updates: u32,
    follows: u32,
}

impl RateWindow {
    fn roll(&mut self, now: u32) {
        if self.second != now {
            *self = RateWindow {
                second: now,
                updates: 0,
                follows: 0,
            };
        }
    }

    /// Counts one status update; false if `limit` (per second, 0 = none) is reached.
    pub fn allow_update(&mut self, now: u32, limit: u32) -> bool {
        self.roll(now);
        if limit != 0 && self.updates >= limit {
            return false;
        }
        self.updates += 1;
        true
    }

    /// Counts `ids` followed ids; false if they would pass `limit` (per second, 0 = none).
    pub fn allow_follows(&mut self, now: u32, ids: usize, limit: u32) -> bool {
        self.roll(now);
        let ids = u32::try_from(ids).unwrap_or(u32::MAX);
        if limit != 0 && self.follows.saturating_add(ids) > limit {
            return false;
        }
        self.follows = self.follows.saturating_add(ids);
        true
    }
}

/// A slot of the session table. Kept small: the fan-out loop reads only this.
struct Slot {
    generation: u32,
    outbox: Option<Arc<Outbox>>,
}

/// A user owned by this shard.
#[derive(Default)]
pub(super) struct UserEntry {
    /// The user exists (has an account, or was seen in a valid token).
    known: bool,
    /// Slots of this user's sessions (all of them live on this shard).
    pub sessions: SmallVec<[u32; 1]>,
    /// Slots of this user's sessions that have a status (single-node mode).
    online: SmallVec<[u32; 2]>,
    /// Other shards with follow edges to this user, and how many each.
    pub interest: SmallVec<[(u16, u32); 2]>,
    /// Cluster mode, while the user is of interest on this node: its
    /// sessions with a status on every node, as the presence log has them
    /// (see [`super::replica`]).
    pub replica: Option<Box<Replica>>,
}

impl UserEntry {
    fn is_idle(&self) -> bool {
        !self.known
            && self.sessions.is_empty()
            && self.online.is_empty()
            && self.interest.is_empty()
            && self.replica.is_none()
    }
}

/// The state of one shard (see the module doc).
pub struct Shard {
    pub(super) index: usize,
    pub(super) engine: EngineHandle,
    pub(super) stats: Arc<ShardStats>,
    slots: Vec<Slot>,
    pub(super) entries: Vec<Option<SessionEntry>>,
    free: Vec<u32>,
    /// Local followers of any user.
    pub(super) followers: FollowerIndex,
    pub(super) users: AHashMap<UserId, UserEntry>,
    usernames: AHashMap<Arc<str>, UserId>,
    /// The websocket ping frame, shared by every session.
    ping: Frame,
    /// Cluster mode: log position, follow grants waiting for snapshots.
    pub(super) replica_state: ReplicaState,
}

impl Shard {
    pub fn new(index: usize, engine: EngineHandle, stats: Arc<ShardStats>) -> Shard {
        Shard {
            index,
            engine,
            stats,
            slots: Vec::new(),
            entries: Vec::new(),
            free: Vec::new(),
            followers: FollowerIndex::default(),
            users: AHashMap::new(),
            usernames: AHashMap::new(),
            ping: Frame::control(OpCode::Ping, b""),
            replica_state: ReplicaState::default(),
        }
    }

    /// This shard's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The session id and user of session `key` while it is registered (for log lines).
    pub fn session_ids(&self, key: SessionKey) -> Option<(SessionId, UserId)> {
        let entry = self.entries.get(self.live_index(key)?)?.as_ref()?;
        Some((entry.id, entry.user))
    }

    /// Open sessions on this shard.
    pub fn session_count(&self) -> usize {
        self.entries.len() - self.free.len()
    }

    /// Session slots, open or free: the range a keepalive sweep covers.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    // ---- sessions -------------------------------------------------------

    /// Registers a session of a user owned by this shard. The session follows
    /// its own user from the start; with `appear_online` it gets the status
    /// `""` and a join goes to every follower, itself included.
    ///
    /// Returns the session's key and whether its user was unknown until now
    /// (a token minted by another Nakama): the caller records such users.
    pub fn connect(&mut self, spec: SessionSpec) -> (SessionKey, bool) {
        debug_assert_eq!(self.engine.router().shard_of_user(spec.user), self.index);
        let slot = match self.free.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot {
                    generation: 0,
                    outbox: None,
                });
                self.entries.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        let generation = self.slots[slot as usize].generation;
        // Cluster mode: the session writes under the node's current
        // incarnation. A node without one (fenced since the upgrade began)
        // serves no session: it closes at once, and the client reconnects.
        let logged = self.cluster().map(|link| {
            let incarnation = link.incarnation().unwrap_or(0);
            if incarnation == 0 {
                spec.outbox.close(CloseCause::Fenced);
            }
            Box::new(LoggedSession {
                incarnation,
                ..LoggedSession::default()
            })
        });
        self.slots[slot as usize].outbox = Some(spec.outbox);
        self.entries[slot as usize] = Some(SessionEntry {
            id: spec.id,
            user: spec.user,
            username: spec.username,
            status: None,
            follows: HandleSet::default(),
            pending: None,
            next_ping: self.engine.now().saturating_add(first_ping_delay(
                spec.id,
                self.engine.config().ping_period(),
            )),
            rate: RateWindow::default(),
            logged,
        });
        ShardStats::gauge(&self.stats.sessions, 1);
        let key = SessionKey { slot, generation };

        let user = self.users.entry(spec.user).or_default();
        let first_seen = !user.known;
        user.known = true;
        let replaced: SmallVec<[u32; 1]> = if self.engine.config().single_socket {
            std::mem::take(&mut user.sessions)
        } else {
            SmallVec::new()
        };
        user.sessions.push(slot);
        for old in replaced {
            self.replace_session(old);
        }
        if self.engine.config().single_socket {
            if let Some(incarnation) = self.entries[slot as usize]
                .as_ref()
                .and_then(|e| e.logged.as_ref())
                .map(|l| l.incarnation)
            {
                self.log_newest_session(spec.id, spec.user, incarnation);
            }
        }
        self.followers.add(spec.user, slot);
        // Cluster mode: the session's own user is now of interest here.
        self.retain(&[spec.user]);
        if spec.appear_online {
            self.set_status(key, Some(Arc::from("")));
        }
        (key, first_seen)
    }

    /// Removes a session: its follow edges first, then a leave carrying its
    /// last status (so the closing session does not receive its own leave).
    /// A follow still waiting for other shards is abandoned; its grants are
    /// handed back when they arrive.
    pub fn disconnect(&mut self, key: SessionKey) {
        let Some(entry) = self.take_entry(key) else {
            return;
        };
        let mut dropped: Vec<Vec<UserId>> = vec![Vec::new(); self.engine.router().shards()];
        for handle in entry.follows.to_vec() {
            let user = self.followers.user(handle);
            self.followers.remove(handle, key.slot);
            dropped[self.engine.router().shard_of_user(user)].push(user);
        }
        ShardStats::gauge(&self.stats.follow_edges, -(entry.follows.len() as i64));
        if let Some(own) = self.followers.handle(entry.user) {
            self.followers.remove(own, key.slot);
        }
        self.send_unfollowed(dropped);

        if let Some(logged) = &entry.logged {
            self.log_disconnect(entry.id, entry.user, logged);
            self.release_if_uninterested(entry.user);
        } else if let Some(old) = entry.status.clone() {
            self.mark_offline(entry.user, key.slot);
            let leave = presence_of(&entry, old);
            self.publish(
                entry.user,
                StatusPresenceEvent {
                    joins: None,
                    leaves: Some(leave),
                },
            );
        }
        self.forget_if_idle(entry.user);
    }

    /// `--single-socket`: tells an older session of a user that a newer one
    /// replaced it (Nakama's notification), then closes it.
    pub(super) fn replace_session(&mut self, slot: u32) {
        if let Some(outbox) = self
            .slots
            .get(slot as usize)
            .and_then(|s| s.outbox.as_ref())
        {
            let notice = Notification::single_socket(unix_now());
            let reply = Reply {
                cid: "",
                body: ReplyBody::Notification(&notice),
            };
            self.push(outbox, Frame::reply(outbox.format(), &reply));
            outbox.close(CloseCause::Kicked(
                close_reason::SERVER_SIDE_DISCONNECT.to_owned(),
            ));
        }
    }

    fn take_entry(&mut self, key: SessionKey) -> Option<SessionEntry> {
        let slot = self.slots.get_mut(key.slot as usize)?;
        if slot.generation != key.generation || slot.outbox.is_none() {
            return None;
        }
        slot.outbox = None;
        slot.generation = slot.generation.wrapping_add(1);
        let entry = self.entries[key.slot as usize].take()?;
        self.free.push(key.slot);
        if let Some(user) = self.users.get_mut(&entry.user) {
            user.sessions.retain(|s| *s != key.slot);
        }
        ShardStats::gauge(&self.stats.sessions, -1);
        Some(entry)
    }

    /// The index of `key`'s slot, if `key` still names that slot's session
    /// (not an earlier one that held the slot).
    fn live_index(&self, key: SessionKey) -> Option<usize> {
        let index = key.slot as usize;
        (self.slots.get(index)?.generation == key.generation).then_some(index)
    }

    /// The key of the session now in `slot`.
    pub(super) fn key_of(&self, slot: u32) -> SessionKey {
        SessionKey {
            slot,
            generation: self.slots.get(slot as usize).map_or(0, |s| s.generation),
        }
    }

    /// The session's state, if `key` still names a live session.
    pub(super) fn entry_mut(&mut self, key: SessionKey) -> Option<&mut SessionEntry> {
        let index = self.live_index(key)?;
        self.entries.get_mut(index)?.as_mut()
    }

    /// The session's outbox, if `key` still names a live session.
    pub(super) fn outbox(&self, key: SessionKey) -> Option<&Arc<Outbox>> {
        self.slots.get(self.live_index(key)?)?.outbox.as_ref()
    }

    /// Queues a reply to the session's outbox.
    pub(super) fn reply(&self, key: SessionKey, reply: &Reply<'_>) {
        if let Some(outbox) = self.outbox(key) {
            let frame = Frame::reply(outbox.format(), reply);
            self.push(outbox, frame);
        }
    }

    #[inline]
    fn push(&self, outbox: &Outbox, frame: Frame) {
        if outbox.push(frame) == Push::Overflowed {
            // Counted once per session here; the connection reports the close.
            tracing::debug!("session outgoing queue full");
        }
    }

    // ---- statuses and fan-out --------------------------------------------

    /// Sets (`Some`) or clears (`None`) the session's status and publishes the
    /// change. Clearing a session without status publishes nothing.
    pub(super) fn set_status(&mut self, key: SessionKey, status: Option<Arc<str>>) {
        if self.cluster().is_some() {
            self.log_status(key, status, None);
            return;
        }
        let Some(entry) = self.entry_mut(key) else {
            return;
        };
        let user = entry.user;
        let old = std::mem::replace(&mut entry.status, status.clone());
        let event = StatusPresenceEvent {
            joins: status.clone().map(|s| presence_of(entry, s)),
            leaves: old.clone().map(|s| presence_of(entry, s)),
        };
        match (&old, &status) {
            (None, None) => return,
            (None, Some(_)) => self.mark_online(user, key.slot),
            (Some(_), None) => self.mark_offline(user, key.slot),
            (Some(_), Some(_)) => {}
        }
        self.publish(user, event);
    }

    fn mark_online(&mut self, user: UserId, slot: u32) {
        let entry = self.users.entry(user).or_default();
        if entry.online.is_empty() {
            ShardStats::gauge(&self.stats.users_online, 1);
        }
        entry.online.push(slot);
    }

    fn mark_offline(&mut self, user: UserId, slot: u32) {
        if let Some(entry) = self.users.get_mut(&user) {
            entry.online.retain(|s| *s != slot);
            if entry.online.is_empty() {
                ShardStats::gauge(&self.stats.users_online, -1);
            }
        }
    }

    /// Sends a change of a user owned here to every shard with followers of
    /// it (first, so they work in parallel), then delivers it locally.
    pub(super) fn publish(&mut self, user: UserId, event: StatusPresenceEvent) {
        ShardStats::add(&self.stats.status_changes, 1);
        let interest = self
            .users
            .get(&user)
            .map(|e| e.interest.as_slice())
            .unwrap_or_default();
        let change = Arc::new(StatusChange::new(user, event, 1 + interest.len()));
        for &(shard, _) in interest {
            self.engine
                .send(shard as usize, ShardMsg::Deliver(change.clone()));
        }
        self.deliver(&change);
    }

    /// Queues `change` to every local follower of its user, in the follower's
    /// format. This is the fan-out loop: no allocation per follower, one
    /// `Arc` clone and one queue push each.
    pub(super) fn deliver(&self, change: &StatusChange) {
        let followers = self.followers.followers_of(change.user);
        if let Some(followers) = followers {
            self.push_to(followers, change);
        }
        // Every delivering shard counts, followers here or not: the last one
        // records the fan-out time. A change that only its owner delivers
        // and nobody there follows has no fan-out to time.
        if let Some(elapsed) = change.delivered() {
            if followers.is_some() || change.shards() > 1 {
                self.stats.fanout.record(elapsed);
            }
        }
    }

    /// Queues `change` to every session in `followers`, in batches: a whole
    /// batch of outboxes is looked up and touched first, so that their cache
    /// misses overlap, then each gets the frame.
    fn push_to(&self, followers: &HandleSet, change: &StatusChange) {
        let local = self.engine.router().shard_of_user(change.user) == self.index;
        let mut frames: [Option<Frame>; 2] = [None, None];
        let mut delivered = 0u64;
        let mut push_all = |batch: &[Option<&Outbox>]| {
            for outbox in batch.iter().flatten() {
                let format = outbox.format();
                let frame = frames[format as usize].get_or_insert_with(|| {
                    // Another shard's change: take a shard-local copy of the
                    // encoded bytes, so the reference count this loop bumps per
                    // follower never bounces between cores.
                    let shared = change.frame(format);
                    if local {
                        shared.clone()
                    } else {
                        shared.copied()
                    }
                });
                if outbox.push(frame.clone()) == Push::Queued {
                    delivered += 1;
                }
            }
        };
        // A software pipeline, one batch deep: while the outbox lines of
        // `filling` load, the pushes go to `ready`, whose outboxes and
        // writer tasks were prefetched one batch earlier.
        let mut filling: [Option<&Outbox>; FANOUT_BATCH] = [None; FANOUT_BATCH];
        let mut ready = filling;
        let (mut len, mut ready_len) = (0, 0);
        followers.for_each(|slot| {
            let Some(outbox) = self
                .slots
                .get(slot as usize)
                .and_then(|s| s.outbox.as_deref())
            else {
                return;
            };
            outbox.prefetch();
            filling[len] = Some(outbox);
            len += 1;
            if len == FANOUT_BATCH {
                prefetch_wakers(&filling);
                push_all(&ready[..ready_len]);
                (ready, ready_len, len) = (filling, len, 0);
            }
        });
        prefetch_wakers(&filling[..len]);
        push_all(&ready[..ready_len]);
        push_all(&filling[..len]);
        ShardStats::add(&self.stats.deliveries, delivered);
    }

    // ---- follow graph -----------------------------------------------------

    /// Whether the session in `slot` follows `user` (its own user included).
    pub(super) fn is_following(&self, slot: u32, user: UserId) -> bool {
        self.followers
            .followers_of(user)
            .is_some_and(|set| set.contains(slot))
    }

    /// Adds the edge from session `key` to `user` on both sides of the graph.
    /// False if it already existed or the session is gone.
    pub(super) fn add_edge(&mut self, key: SessionKey, user: UserId) -> bool {
        if self.outbox(key).is_none() {
            return false;
        }
        let (handle, new) = self.followers.add(user, key.slot);
        if new {
            if let Some(entry) = self
                .entries
                .get_mut(key.slot as usize)
                .and_then(Option::as_mut)
            {
                entry.follows.insert(handle);
            }
            ShardStats::gauge(&self.stats.follow_edges, 1);
        }
        new
    }

    /// Removes the edge from session `key` to `user`; false if there was none.
    pub(super) fn remove_edge(&mut self, key: SessionKey, user: UserId) -> bool {
        let Some(handle) = self.followers.handle(user) else {
            return false;
        };
        let Some(entry) = self.entry_mut(key) else {
            return false;
        };
        if !entry.follows.remove(handle) {
            return false;
        }
        self.followers.remove(handle, key.slot);
        ShardStats::gauge(&self.stats.follow_edges, -1);
        true
    }

    /// Number of users session `key` follows.
    pub(super) fn follow_count(&mut self, key: SessionKey) -> usize {
        self.entry_mut(key).map_or(0, |e| e.follows.len())
    }

    /// Tells each owner shard which of its users lost a follow edge from here.
    /// `dropped` is indexed by owner shard; edges to local users need no message.
    pub(super) fn send_unfollowed(&mut self, dropped: Vec<Vec<UserId>>) {
        for (owner, users) in dropped.into_iter().enumerate() {
            if owner == self.index {
                for user in users {
                    self.release_if_uninterested(user);
                }
                continue;
            }
            if users.is_empty() {
                continue;
            }
            self.engine.send(
                owner,
                ShardMsg::Unfollowed {
                    from_shard: self.index as u16,
                    users,
                },
            );
        }
    }

    /// Whether `user` may be followed: it exists, or `--follow-unknown-ids`.
    pub(super) fn may_follow(&self, user: UserId) -> bool {
        if user.is_nil() {
            return false;
        }
        self.engine.config().follow_unknown_ids || self.users.get(&user).is_some_and(|u| u.known)
    }

    /// Appends one presence per session of `user` (owned here) that has a status.
    pub(super) fn snapshot(&self, user: UserId, out: &mut Vec<Presence>) {
        let Some(entry) = self.users.get(&user) else {
            return;
        };
        if self.cluster().is_some() {
            let presences = entry.replica.as_deref().map(|r| r.presences.as_slice());
            out.extend(
                presences
                    .unwrap_or_default()
                    .iter()
                    .map(|p| presence_of_replica(user, p)),
            );
            return;
        }
        for &slot in &entry.online {
            if let Some(session) = self.entries.get(slot as usize).and_then(Option::as_ref) {
                if let Some(status) = &session.status {
                    out.push(presence_of(session, status.clone()));
                }
            }
        }
    }

    /// Counts a follow edge from `from_shard` to `user` (owned here).
    pub(super) fn count_interest(&mut self, user: UserId, from_shard: u16) {
        let entry = self.users.entry(user).or_default();
        match entry
            .interest
            .iter_mut()
            .find(|(shard, _)| *shard == from_shard)
        {
            Some((_, count)) => *count += 1,
            None => entry.interest.push((from_shard, 1)),
        }
    }

    fn uncount_interest(&mut self, user: UserId, from_shard: u16) {
        if let Some(entry) = self.users.get_mut(&user) {
            if let Some(pos) = entry
                .interest
                .iter()
                .position(|(shard, _)| *shard == from_shard)
            {
                entry.interest[pos].1 -= 1;
                if entry.interest[pos].1 == 0 {
                    entry.interest.swap_remove(pos);
                }
            }
        }
        self.release_if_uninterested(user);
        self.forget_if_idle(user);
    }

    pub(super) fn forget_if_idle(&mut self, user: UserId) {
        if let Entry::Occupied(entry) = self.users.entry(user) {
            if entry.get().is_idle() {
                entry.remove();
            }
        }
    }

    // ---- directory ----------------------------------------------------------

    /// Records that `user` exists (its id is owned here).
    pub fn register_id(&mut self, user: UserId) {
        self.users.entry(user).or_default().known = true;
    }

    /// Records `username` → `user` (the name is owned here).
    pub fn register_name(&mut self, username: Arc<str>, user: UserId) {
        self.usernames.insert(username, user);
    }

    /// The user with `username`, if the name is owned here and known.
    pub(super) fn resolve_name(&self, username: &str) -> Option<UserId> {
        self.usernames.get(username).copied()
    }

    // ---- inbox ----------------------------------------------------------------

    /// Applies one message from another thread. (`Run` is handled by the
    /// caller, which must not hold the shard borrowed while it runs.)
    pub fn handle(&mut self, msg: ShardMsg) {
        match msg {
            ShardMsg::Deliver(change) => self.deliver(&change),
            ShardMsg::Follow {
                from_shard,
                session,
                users,
                new_edges,
            } => self.grant_follow(from_shard, session, users, new_edges),
            ShardMsg::FollowGranted {
                from_shard,
                session,
                granted_new,
                presences,
            } => self.follow_granted(from_shard, session, granted_new, presences),
            ShardMsg::Unfollowed { from_shard, users } => {
                for user in users {
                    self.uncount_interest(user, from_shard);
                }
            }
            ShardMsg::ResolveNames {
                from_shard,
                session,
                names,
            } => {
                let users = names.iter().filter_map(|n| self.resolve_name(n)).collect();
                self.engine.send(
                    from_shard as usize,
                    ShardMsg::NamesResolved { session, users },
                );
            }
            ShardMsg::NamesResolved { session, users } => self.names_resolved(session, users),
            ShardMsg::RegisterUser {
                user,
                username,
                owns_id,
                owns_name,
                done,
            } => {
                if owns_id {
                    self.register_id(user);
                }
                if owns_name {
                    self.register_name(username, user);
                }
                if let Some(done) = done {
                    let _ = done.send(());
                }
            }
            ShardMsg::QueryStatus { users, reply } => {
                let statuses = users.into_iter().map(|u| self.user_status(u)).collect();
                let _ = reply.send(statuses);
            }
            ShardMsg::Kick {
                session,
                cause,
                reply,
            } => {
                let _ = reply.send(self.kick(session, cause));
            }
            ShardMsg::Shutdown => self.close_all(CloseCause::Shutdown),
            ShardMsg::ApplyPresence(record) => self.apply_presence(*record),
            ShardMsg::DropOrigin(origin) => self.drop_origin(origin),
            ShardMsg::NewestSession { user, session, seq } => {
                self.newest_session(user, session, seq)
            }
            ShardMsg::Fence => self.fence(),
            ShardMsg::Snapshot {
                as_of,
                users,
                records,
            } => self.snapshot_loaded(as_of, users, records),
            ShardMsg::Run(_) => {
                debug_assert!(false, "Run must be handled by the shard loop");
            }
        }
    }

    /// The statuses of `user` (owned here), for the backend API.
    pub fn user_status(&self, user: UserId) -> UserStatus {
        let mut presences = Vec::new();
        self.snapshot(user, &mut presences);
        UserStatus {
            user_id: user,
            sessions: presences
                .into_iter()
                .map(|p| (p.session_id, p.status))
                .collect(),
        }
    }

    /// Asks the session with `id` to close. Scans the shard: kicks are rare.
    pub fn kick(&self, id: SessionId, cause: CloseCause) -> bool {
        for (slot, entry) in self.slots.iter().zip(&self.entries) {
            if let (Some(outbox), Some(entry)) = (&slot.outbox, entry) {
                if entry.id == id {
                    return outbox.close(cause);
                }
            }
        }
        false
    }

    /// Asks every session to close with `cause`.
    pub fn close_all(&self, cause: CloseCause) {
        for outbox in self.slots.iter().filter_map(|s| s.outbox.as_ref()) {
            outbox.close(cause.clone());
        }
    }

    /// Keepalive for the sessions in `slots` (the caller sweeps every slot
    /// once a second, a slice at a time): closes those silent for the pong
    /// wait (not counting time the server spent not reading them, while a
    /// request waited), and queues a websocket ping to each one whose ping
    /// is due.
    /// Slots past the end are ignored.
    pub fn keepalive(&mut self, now: u32, slots: Range<usize>) {
        let config = self.engine.config();
        let (period, wait) = (config.ping_period(), config.pong_wait_sec);
        let end = slots.end.min(self.slots.len());
        let start = slots.start.min(end);
        let entries = self.entries.get_mut(start..end).unwrap_or_default();
        for (slot, entry) in self.slots[start..end].iter().zip(entries) {
            let (Some(outbox), Some(entry)) = (&slot.outbox, entry) else {
                continue;
            };
            if outbox.request_pending() {
                // The connection does not read while a request of its waits
                // for other shards or a cluster fetch: the silence is the
                // server's, so it counts from the moment reading resumes.
                outbox.heard(now);
            } else if now.saturating_sub(outbox.last_heard()) >= wait {
                outbox.close(CloseCause::Timeout);
            } else if now >= entry.next_ping {
                entry.next_ping = now.saturating_add(period);
                let _ = outbox.push_ping(self.ping.clone());
            }
        }
    }
}

/// Seconds from a session's start to its first websocket ping: in the
/// second half of the period (8 to 15 s by default), spread by the session
/// id's random bits. Sessions that connect together (a mass reconnect after
/// a deploy) are then pinged a few at a time from the start, instead of all
/// at once, every period, forever: one burst of writes per shard that would
/// hold back every delivery queued behind it. A session that just connected
/// has just shown it is alive, hence not the first half. `period` is at
/// least 1 ([`super::EngineConfig::ping_period`]).
fn first_ping_delay(session: SessionId, period: u32) -> u32 {
    let half = u64::from(period.div_ceil(2)).max(1);
    let spread = session.0.as_u64_pair().1 % half;
    period.saturating_sub(u32::try_from(spread).unwrap_or(0))
}

/// Starts loading the writer tasks of a batch of outboxes (see [`Shard::push_to`]).
fn prefetch_wakers(batch: &[Option<&Outbox>]) {
    batch
        .iter()
        .flatten()
        .for_each(|outbox| outbox.prefetch_waker());
}

/// The presence of `session` with `status`.
pub(super) fn presence_of(session: &SessionEntry, status: Arc<str>) -> Presence {
    Presence {
        user_id: session.user,
        session_id: session.id,
        username: session.username.clone(),
        status,
    }
}

/// The presence of a replica entry of `user`.
pub(super) fn presence_of_replica(user: UserId, presence: &ReplicaPresence) -> Presence {
    Presence {
        user_id: user,
        session_id: presence.session,
        username: presence.username.clone(),
        status: presence.status.clone(),
    }
}

/// Inspection helpers for tests.
#[cfg(test)]
impl Shard {
    pub(super) fn knows(&self, user: UserId) -> bool {
        self.users.get(&user).is_some_and(|u| u.known)
    }
    pub(super) fn interest_of(&self, user: UserId) -> Vec<(u16, u32)> {
        self.users
            .get(&user)
            .map(|u| u.interest.to_vec())
            .unwrap_or_default()
    }
    pub(super) fn follower_count(&self, user: UserId) -> usize {
        self.followers.followers_of(user).map_or(0, |s| s.len())
    }
}

/// Wall-clock unix seconds (for notification timestamps).
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

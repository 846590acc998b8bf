//! [`Inbox`]: the one way into a shard from another thread, and the
//! messages ([`ShardMsg`]) that travel through it.
//!
//! An inbox is a crossbeam `SegQueue` (lock-free, unbounded) plus a tokio
//! `Notify` that wakes the shard's drain task. Unbounded is deliberate:
//! a shard must never block another shard (two shards waiting on each
//! other's full inboxes would deadlock), and what flows in is bounded
//! upstream instead. Each session has at most one request in flight, so
//! request traffic is bounded by the number of sessions, and event traffic
//! by the status changes those requests make. `herald_shard_inbox_depth`
//! shows the depth.
//!
//! Messages between two shards are delivered in the order they were sent
//! (FIFO per sender), which the follow protocol relies on: see
//! [`super`]'s "Follow atomicity".

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam::queue::SegQueue;
use tokio::sync::{oneshot, Notify};

use super::event::StatusChange;
use super::outbox::CloseCause;
use super::runtime::ShardContext;
use super::shard::SessionKey;
use super::status_query::UserStatus;
use crate::cluster::{Origin, PresenceRecord};
use crate::ids::{SessionId, UserId};
use crate::protocol::Presence;

/// A closure to run on a shard thread, with that shard's context.
pub type ShardTask = Box<dyn FnOnce(&std::rc::Rc<ShardContext>) + Send>;

/// Work sent to a shard by other threads.
pub enum ShardMsg {
    /// A status change of `change.user`, owned by the sending shard, for the
    /// receiving shard's local followers of that user.
    Deliver(Arc<StatusChange>),
    /// A session of the sending shard asks to follow users owned here.
    /// `new_edges[i]` says whether `users[i]` is a new follow for the session
    /// (count it) or one it already has (snapshot only).
    Follow {
        from_shard: u16,
        session: SessionKey,
        users: Vec<UserId>,
        new_edges: Vec<bool>,
    },
    /// The answer to [`ShardMsg::Follow`]: the new edges that were granted
    /// (users that exist, or `--follow-unknown-ids`), now counted here, and
    /// the snapshot of every granted user's statuses, taken in the same step.
    FollowGranted {
        from_shard: u16,
        session: SessionKey,
        granted_new: Vec<UserId>,
        presences: Vec<Presence>,
    },
    /// Follow edges from the sending shard to users owned here are gone
    /// (unfollow, disconnect, or a grant that arrived after the session closed).
    Unfollowed { from_shard: u16, users: Vec<UserId> },
    /// Usernames owned here, to be resolved to user ids for a follow.
    ResolveNames {
        from_shard: u16,
        session: SessionKey,
        names: Vec<String>,
    },
    /// The answer to [`ShardMsg::ResolveNames`] (unknown names are left out).
    NamesResolved {
        session: SessionKey,
        users: Vec<UserId>,
    },
    /// Records a user account in the directory: its id, if `owns_id`, and its
    /// username, if `owns_name` (the two may live on different shards).
    RegisterUser {
        user: UserId,
        username: Arc<str>,
        owns_id: bool,
        owns_name: bool,
        done: Option<oneshot::Sender<()>>,
    },
    /// Statuses of users owned here, for the backend API.
    QueryStatus {
        users: Vec<UserId>,
        reply: oneshot::Sender<Vec<UserStatus>>,
    },
    /// Closes one session of this shard, if it exists here.
    Kick {
        session: SessionId,
        cause: CloseCause,
        reply: oneshot::Sender<bool>,
    },
    /// Runs a closure on the shard thread (used to hand a connection to its home shard).
    Run(ShardTask),
    /// Cluster mode: a presence record of a user owned here, from the
    /// replicator, in log order.
    ApplyPresence(Box<PresenceRecord>),
    /// Cluster mode: every presence written by this incarnation ends.
    DropOrigin(Origin),
    /// Cluster mode, `--single-socket`: the log names `session` as `user`'s
    /// newest session at position `seq`.
    NewestSession {
        user: UserId,
        session: SessionId,
        seq: u64,
    },
    /// Cluster mode: this node was fenced; close every session.
    Fence,
    /// Cluster mode: the presences of `users` (owned here) at log position
    /// `as_of`, fetched because they became of interest (see
    /// [`super::replica`]).
    Snapshot {
        as_of: u64,
        users: Vec<UserId>,
        records: Vec<PresenceRecord>,
    },
    /// Closes every session with 1001 and stops the shard once they are gone.
    Shutdown,
}

/// A shard's inbox (see the module doc).
pub struct Inbox {
    queue: SegQueue<ShardMsg>,
    notify: Notify,
    /// Messages pushed and not yet taken, for the depth gauge.
    depth: AtomicUsize,
}

impl Inbox {
    pub fn new() -> Inbox {
        Inbox {
            queue: SegQueue::new(),
            notify: Notify::new(),
            depth: AtomicUsize::new(0),
        }
    }

    /// Enqueues `msg` and wakes the shard.
    pub fn send(&self, msg: ShardMsg) {
        self.depth.fetch_add(1, Ordering::Relaxed);
        self.queue.push(msg);
        self.notify.notify_one();
    }

    /// Takes the next message, if any.
    pub fn try_recv(&self) -> Option<ShardMsg> {
        let msg = self.queue.pop();
        if msg.is_some() {
            self.depth.fetch_sub(1, Ordering::Relaxed);
        }
        msg
    }

    /// Waits until something was sent since the last wait.
    pub async fn wait(&self) {
        self.notify.notified().await
    }

    /// Messages waiting.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }
}

impl Default for Inbox {
    fn default() -> Self {
        Inbox::new()
    }
}

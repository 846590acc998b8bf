//! The engine: shards, the follow graph, and fan-out.
//!
//! # Threading model
//!
//! Herald runs **N shard threads** (`--shards`, default one per core), each
//! pinned to a core and each running its own single-threaded tokio runtime.
//! There is no other worker pool: a shard thread runs
//!
//! * its **inbox drain task**, applying messages from other threads;
//! * an **accept loop** on its own `SO_REUSEPORT` listener, and the HTTP
//!   connections it accepted (REST calls, websocket handshakes);
//! * the **connection tasks** of every websocket session whose user hashes
//!   to it (its "home" sessions), each reading frames and draining that
//!   session's outbox into the socket;
//! * a **keepalive** sweep (websocket pings, pong deadlines) that visits
//!   every session once a second, a tenth of them every 100 ms.
//!
//! A handshake accepted on the wrong shard is handed to the home shard (the
//! socket moves through the inbox) before the session is registered.
//!
//! ## Who owns what
//!
//! Users hash to shards ([`routing::Router`], fixed-seed ahash). The shard
//! that owns user U owns, outright and with no lock ([`shard::Shard`]):
//!
//! * every session of U, with its status and its follow set;
//! * U's online sessions (for snapshots) and, per other shard, how many
//!   follow edges that shard holds to U ("interest");
//! * whether U exists (the directory); usernames are owned by the shard of
//!   the username's hash.
//!
//! With an account store other nodes share (Postgres), the directory only
//! holds the users this node has met; a process-wide set of them
//! ([`directory`]) tells a follow which users to look up in the store first.
//!
//! Follower sets are sharded **by follower**: each shard keeps, for every
//! user U anywhere, the set of *its own* sessions that follow U. A session's
//! requests therefore only ever touch its home shard's state, plus messages.
//!
//! ## Queues between threads
//!
//! * **Shard inboxes** ([`inbox::Inbox`]): a crossbeam `SegQueue` per shard,
//!   unbounded, FIFO per sender. They carry status changes to deliver,
//!   follow requests and grants, unfollow counts, directory registrations,
//!   hand-offs and shutdown. Unbounded because shards must never wait on
//!   each other; the load is bounded upstream (one request in flight per
//!   session). Depth is exported as a gauge.
//! * **Outboxes** ([`outbox::Outbox`]): a crossbeam `SegQueue` of shared
//!   [`Frame`](crate::protocol::Frame)s per connection, bounded in **bytes**.
//!   The shard pushes, the connection's writer drains everything queued into
//!   one `writev` per batch (up to 64 frames), so a busy follower gets many
//!   events per syscall. **Full means close**: a push past
//!   `--outgoing-queue-bytes` closes that one session with
//!   `session outgoing queue full` and counts it in
//!   `herald_sessions_closed_total{reason="slow_consumer"}`. The shard never
//!   blocks, and no other follower loses anything.
//! * The **account store** thread has its own channel (see [`crate::auth`]).
//!
//! ## A status change
//!
//! A session of U sets its status on its home shard S (= owner of U). S
//! queues the ack, then builds one [`event::StatusChange`] in an `Arc`, sends
//! it to every shard with interest in U (first, so they start at once), and
//! then delivers it to its own followers of U. Each shard's delivery loop
//! pushes a clone of the same encoded frame (encoded at most once per wire
//! format, by whichever shard needs it first) onto each follower's outbox.
//! No lock is taken anywhere on this path; a million followers spread over
//! N shards are served by N threads in parallel.
//!
//! ## Ordering
//!
//! All changes of U are made on S, in order, and travel S → T in one FIFO
//! inbox, so every follower receives the changes of each session in the
//! order they happened. There is no order across different users.
//!
//! ## Follow atomicity
//!
//! A session on shard T following U (owned by S) sends `Follow` to S. In
//! one step S checks U exists, counts T's new edge to U and takes the
//! snapshot, then sends `FollowGranted` back on the S → T queue, after every
//! change of U made before the snapshot and before every change made after
//! it. T adds the edge to its follower index when `FollowGranted` arrives, so
//! the session receives every change after its snapshot, and none is lost
//! between the two. (An event already queued to the session can still arrive
//! before the snapshot reply, as in Nakama.) Unfollow and disconnect remove
//! the edge on T first, then send `Unfollowed` so S stops sending there.

pub mod commands;
pub mod directory;
pub mod event;
pub mod follow_graph;
pub mod inbox;
pub mod outbox;
pub mod replica;
pub mod routing;
pub mod runtime;
pub mod shard;
pub mod stats;
pub mod status_query;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_cluster;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

pub use commands::Outcome;
use directory::{Misses, SharedDirectory};
use inbox::{Inbox, ShardMsg};
pub use outbox::{CloseCause, Outbox, Push};
use routing::Router;
pub use runtime::{Engine, ShardContext, ShardStart};
pub use shard::{SessionKey, SessionSpec, Shard};
use stats::{ShardStats, StatsSnapshot};
use status_query::UserStatus;

use crate::auth::{AccountError, Accounts};
use crate::cluster::ClusterLink;
use crate::config::Config;
use crate::ids::{SessionId, UserId};

/// The engine's settings, taken from [`Config`] at start-up.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub shards: usize,
    pub outgoing_queue_bytes: usize,
    pub max_follows: usize,
    pub follow_unknown_ids: bool,
    /// Read it through [`EngineConfig::ping_period`], which is never 0.
    pub ping_period_sec: u32,
    pub pong_wait_sec: u32,
    /// Pin shard threads to cores.
    pub pin_threads: bool,
    /// `status_update`s allowed per session per second; 0 = unlimited.
    pub status_update_rate: u32,
    /// User ids a session may follow per second; 0 = unlimited.
    pub follow_rate: u32,
    /// A new session closes the user's older sessions (`--single-socket`).
    pub single_socket: bool,
    /// How long shards keep running after shutdown begins, at most.
    pub shutdown_grace: std::time::Duration,
    /// The account store when other nodes share it (Postgres): follows look
    /// up there the users this node does not know yet ([`directory`]).
    /// `None`: the directory given to [`Engine::start`] is complete (SQLite).
    pub shared_accounts: Option<Accounts>,
}

impl Default for EngineConfig {
    /// The defaults of the `herald` binary, on one shard.
    fn default() -> EngineConfig {
        EngineConfig {
            shards: 1,
            outgoing_queue_bytes: 2 << 20,
            max_follows: 100_000,
            follow_unknown_ids: false,
            ping_period_sec: 15,
            pong_wait_sec: 25,
            pin_threads: true,
            status_update_rate: 0,
            follow_rate: 0,
            single_socket: false,
            shutdown_grace: std::time::Duration::from_secs(3),
            shared_accounts: None,
        }
    }
}

impl EngineConfig {
    /// Seconds between websocket pings to a session, at least 1.
    pub fn ping_period(&self) -> u32 {
        self.ping_period_sec.max(1)
    }

    pub fn from_config(config: &Config) -> EngineConfig {
        EngineConfig {
            shards: config.shard_count(),
            outgoing_queue_bytes: usize::try_from(config.outgoing_queue_bytes)
                .unwrap_or(usize::MAX),
            max_follows: config.max_follows,
            follow_unknown_ids: config.follow_unknown_ids,
            ping_period_sec: u32::try_from(config.ping_period_sec).unwrap_or(u32::MAX),
            pong_wait_sec: u32::try_from(config.pong_wait_sec).unwrap_or(u32::MAX),
            pin_threads: true,
            status_update_rate: config.status_update_rate,
            follow_rate: config.follow_rate,
            single_socket: config.single_socket,
            shutdown_grace: std::time::Duration::from_secs(config.shutdown_grace_sec),
            shared_accounts: None,
        }
    }
}

/// State shared by every thread: the inboxes, routing, settings, counters.
struct Shared {
    inboxes: Box<[Inbox]>,
    router: Router,
    config: EngineConfig,
    stats: Box<[Arc<ShardStats>]>,
    started: Instant,
    shutting_down: AtomicBool,
    /// Cluster mode: where status changes go (see [`crate::cluster`]).
    cluster: Option<ClusterLink>,
    /// The users known here, in shared-store mode only.
    directory: Option<SharedDirectory>,
}

/// A cloneable, thread-safe handle to the running shards.
#[derive(Clone)]
pub struct EngineHandle {
    shared: Arc<Shared>,
}

impl EngineHandle {
    /// A handle with inboxes but no shard threads, for benches and tests that
    /// drive one [`Shard`] directly (`Shard::new(0, handle, stats)`). Messages
    /// sent to it are never drained, so use it with one shard.
    pub fn standalone(config: EngineConfig) -> EngineHandle {
        EngineHandle::new(config, None)
    }

    /// As [`EngineHandle::standalone`], in cluster mode with `cluster`.
    #[cfg(test)]
    pub(crate) fn standalone_cluster(config: EngineConfig, cluster: ClusterLink) -> EngineHandle {
        EngineHandle::new(config, Some(cluster))
    }

    fn new(config: EngineConfig, cluster: Option<ClusterLink>) -> EngineHandle {
        let shards = config.shards.max(1);
        EngineHandle {
            shared: Arc::new(Shared {
                inboxes: (0..shards).map(|_| Inbox::new()).collect(),
                router: Router::new(shards),
                stats: (0..shards)
                    .map(|_| Arc::new(ShardStats::default()))
                    .collect(),
                directory: config.shared_accounts.clone().map(SharedDirectory::new),
                config,
                started: Instant::now(),
                shutting_down: AtomicBool::new(false),
                cluster,
            }),
        }
    }

    /// Routing of users and usernames to shards.
    pub fn router(&self) -> &Router {
        &self.shared.router
    }

    /// The cluster link, in cluster mode.
    pub fn cluster(&self) -> Option<&ClusterLink> {
        self.shared.cluster.as_ref()
    }

    /// The engine's settings.
    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// Engine time: whole seconds since start.
    pub fn now(&self) -> u32 {
        u32::try_from(self.shared.started.elapsed().as_secs()).unwrap_or(u32::MAX)
    }

    /// Sends `msg` to shard `shard`.
    pub fn send(&self, shard: usize, msg: ShardMsg) {
        if let Some(inbox) = self.shared.inboxes.get(shard) {
            inbox.send(msg);
        }
    }

    pub(crate) fn inbox(&self, shard: usize) -> Option<&Inbox> {
        self.shared.inboxes.get(shard)
    }

    /// Runs `run` on shard `shard`'s thread.
    pub fn run_on(
        &self,
        shard: usize,
        run: impl FnOnce(&std::rc::Rc<ShardContext>) + Send + 'static,
    ) {
        self.send(shard, ShardMsg::Run(Box::new(run)));
    }

    /// Announces a user account (new, first seen in a token, or found by a
    /// follow's lookup) to the shards that own its id and its username.
    /// Resolves once both have recorded it, so a follow issued after this
    /// returns finds the user.
    pub async fn register_user(&self, user: UserId, username: &str) {
        let router = self.router();
        let (id_shard, name_shard) = (router.shard_of_user(user), router.shard_of_name(username));
        let username: Arc<str> = Arc::from(username);
        let has_name = !username.is_empty();
        let targets = if id_shard == name_shard {
            vec![(id_shard, true, has_name)]
        } else {
            vec![(id_shard, true, false), (name_shard, false, has_name)]
        };
        let mut waits = Vec::with_capacity(targets.len());
        for (shard, owns_id, owns_name) in targets {
            let (done, wait) = oneshot::channel();
            let username = username.clone();
            self.send(
                shard,
                ShardMsg::RegisterUser {
                    user,
                    username,
                    owns_id,
                    owns_name,
                    done: Some(done),
                },
            );
            waits.push(wait);
        }
        for wait in waits {
            let _ = wait.await;
        }
        if let Some(directory) = &self.shared.directory {
            directory.remember(user, &username);
        }
    }

    /// In shared-store mode, the users known on this node ([`directory`]).
    pub fn directory(&self) -> Option<&SharedDirectory> {
        self.shared.directory.as_ref()
    }

    /// Notes that the owner shard of `user` has recorded it (a session of a
    /// user it did not know connected there). Only shared-store mode keeps count.
    pub fn user_connected(&self, user: UserId) {
        if let Some(directory) = &self.shared.directory {
            directory.remember_id(user);
        }
    }

    /// Looks a follow's unknown users up in the shared store and registers
    /// those found (see [`directory`]). Without a shared store there is
    /// nothing to find: the directory is complete.
    pub async fn look_up(&self, misses: Misses) -> Result<(), AccountError> {
        match &self.shared.directory {
            Some(directory) => directory.look_up(self, misses).await,
            None => Ok(()),
        }
    }

    /// Current statuses of `users`, in the order given.
    pub async fn query_status(&self, users: &[UserId]) -> Vec<UserStatus> {
        if let Some(cluster) = self.cluster() {
            // Cluster mode: a node keeps only the users of interest to it;
            // the log has everyone.
            return cluster.query_status(users.to_vec()).await;
        }
        let mut by_shard: HashMap<usize, Vec<UserId>> = HashMap::new();
        for user in users {
            by_shard
                .entry(self.router().shard_of_user(*user))
                .or_default()
                .push(*user);
        }
        let mut found: HashMap<UserId, UserStatus> = HashMap::new();
        let mut waits = Vec::new();
        for (shard, users) in by_shard {
            let (reply, wait) = oneshot::channel();
            self.send(shard, ShardMsg::QueryStatus { users, reply });
            waits.push(wait);
        }
        for wait in waits {
            for status in wait.await.unwrap_or_default() {
                found.insert(status.user_id, status);
            }
        }
        users
            .iter()
            .map(|u| {
                found.get(u).cloned().unwrap_or(UserStatus {
                    user_id: *u,
                    sessions: Vec::new(),
                })
            })
            .collect()
    }

    /// Closes the session `id`, wherever it lives. False if there is none.
    pub async fn kick(&self, id: SessionId, cause: CloseCause) -> bool {
        let mut waits = Vec::new();
        for shard in 0..self.router().shards() {
            let (reply, wait) = oneshot::channel();
            self.send(
                shard,
                ShardMsg::Kick {
                    session: id,
                    cause: cause.clone(),
                    reply,
                },
            );
            waits.push(wait);
        }
        let mut kicked = false;
        for wait in waits {
            kicked |= wait.await.unwrap_or(false);
        }
        kicked
    }

    /// Counters and gauges summed over all shards.
    pub fn stats(&self) -> StatsSnapshot {
        StatsSnapshot::sum(self.shared.stats.iter().map(|s| s.as_ref()))
    }

    /// Messages waiting in each shard's inbox.
    pub fn inbox_depths(&self) -> Vec<usize> {
        self.shared.inboxes.iter().map(Inbox::depth).collect()
    }

    /// The counters block of shard `shard`.
    pub fn shard_stats(&self, shard: usize) -> Arc<ShardStats> {
        self.shared.stats[shard].clone()
    }

    /// True once shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutting_down.load(Ordering::Acquire)
    }

    /// Begins shutdown: every shard stops accepting, closes its sessions with
    /// 1001 `going away`, and stops once they are gone (or the grace ends).
    pub fn begin_shutdown(&self) {
        if !self.shared.shutting_down.swap(true, Ordering::AcqRel) {
            for shard in 0..self.router().shards() {
                self.send(shard, ShardMsg::Shutdown);
            }
        }
    }
}

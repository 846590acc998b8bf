//! Cluster mode: several Herald nodes share presence through one replicated,
//! totally ordered **presence log**, a NATS JetStream KV bucket
//! (`--nats-url`). Without cluster flags none of this runs: a single node
//! delivers a change straight from the shard that made it (the in-process
//! path of [`crate::engine`]), exactly as before.
//!
//! # The seam
//!
//! A status change is *made* on the session's home shard and *applied* in
//! log order on every node. In cluster mode the shard does not deliver its
//! own change: it appends it to the log ([`ClusterLink::write`]), and the
//! node's one ordered watch of the log feeds every record back to the shard
//! that owns the record's user ([`crate::engine::inbox::ShardMsg`]
//! `ApplyPresence`), on every node, the writer's included. That shard keeps
//! a replica of the user's sessions on all nodes, computes the event from
//! it (the leave carries the replica's previous status) and fans it out to
//! its local followers through the single-node path. So every node applies
//! the same records in the same order, a follow snapshot is a read of the
//! replica at the shard's log position (gap-free and duplicate-free with the
//! events after it), and each followed session's changes reach a follower
//! in the order they were logged.
//!
//! # Leases and fencing
//!
//! A presence record is visible iff its writer's incarnation holds a live
//! lease at that position of the log ([`replicator`]). Each node writes a
//! heartbeat into its lease key `n.<node>` every second, with compare-and-set
//! ([`membership`]). A node that sees six of its own heartbeats in the log
//! after node X's last one writes a *verdict* (X's lease, marked dead, with
//! compare-and-set on X's last heartbeat): at that position every replica
//! drops X's sessions and their followers get the leaves. Counting is done in
//! the log, not on clocks, so a stalled log (a NATS leader election)
//! condemns nobody. A node fences itself (closes every socket with 1012 and
//! registers a new incarnation) when it loses NATS for 2 s, when no
//! heartbeat was acknowledged for 15 s, or when it sees its own lease taken.
//! Records of a dead incarnation that reach the log later are ignored by
//! every replica.
//!
//! # Threads
//!
//! One OS thread (`herald-cluster`) runs a current-thread tokio runtime with
//! the NATS client and one task ([`node`]), that owns all cluster
//! state: the watch, the lease table, the writer's per-session queues, the
//! membership state machine. Shards reach it through an unbounded channel
//! ([`ClusterLink`]); it reaches the shards through their inboxes. Nothing
//! here runs on a shard thread, and shards never wait for it.
//!
//! Files: [`record`] (keys and values), [`nats`] (connection, stream,
//! publishing), [`replicator`] (the watch: leases, visibility, routing),
//! [`membership`] (own lease: registration, heartbeats, fencing, verdicts),
//! [`writer`] (per-session write queues), [`control`] (cross-node kicks),
//! [`node`] (the task that ties them together).

pub mod control;
pub mod fetch;
pub mod membership;
pub mod nats;
pub mod node;
pub mod record;
pub mod replicator;
pub mod writer;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::engine::status_query::UserStatus;
use crate::engine::EngineHandle;
use crate::ids::{SessionId, UserId};

pub use record::validate_node_id;
pub use record::PresenceValue;

/// The bucket (stream `KV_herald`).
pub const BUCKET: &str = "herald";
/// Heartbeat period of a node's lease.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Own heartbeats seen after a peer's last one before the peer is declared
/// dead. With one-second beats the verdict comes 4 to 6 s after a node
/// dies: its last beat was up to 1 s before, and the first beat counted is
/// up to 1 s after that.
pub const VERDICT_BEATS: u64 = 6;
/// A node without a NATS connection for this long fences itself.
pub const FENCE_DISCONNECTED: Duration = Duration::from_secs(2);
/// A node without an acknowledged heartbeat for this long fences itself
/// (longer than a NATS stream leader election, 4-9 s).
pub const FENCE_NO_HEARTBEAT: Duration = Duration::from_secs(15);
/// The watch has stalled when a heartbeat of this node was acknowledged by
/// the log this long ago, the watch has not delivered it, and the watch has
/// delivered nothing for as long: the log moves, the watch does not (its
/// consumer died with a NATS server). A watch that lags but delivers is
/// left alone. It is then
/// recreated from its last position. While the log itself stalls (a leader
/// election), nothing is acknowledged and nothing is recreated: a consumer
/// that survived resumes by itself.
pub const WATCH_STALL: Duration = Duration::from_millis(1500);
/// A watch silent for this long while the node is registered is recreated
/// whatever the heartbeats say (the node fences itself at 15 s anyway).
pub const WATCH_SILENT: Duration = Duration::from_secs(10);
/// How long the marker of an ended session stays in the log: longer than
/// any watch interruption a node survives without being fenced.
pub const PURGE_MARKER_TTL: Duration = Duration::from_secs(600);
/// How long a live key's older version stays in the log after a newer one
/// is stored, before the writer deletes it by position: longer than any
/// watch interruption a node survives without being fenced (15 s), so
/// every watch reads every version; a watch further behind skips it, which
/// is the counted coalescing. Without it the stream kept every version
/// (up to [`nats::HISTORY`]) of every live key: nats-server's memory and
/// its cost per write grew through a soak until its acks came seconds
/// late and every node fenced itself (PERF.md, "Soak").
pub const SUPERSEDED_GRACE: Duration = Duration::from_secs(60);
/// How long a `c.<user>` record (newest session) stays in the log.
pub const NEWEST_SESSION_TTL: Duration = Duration::from_secs(3600);
/// Close code of sockets a fenced node closes (1012: service restart; reconnect).
pub const FENCE_CLOSE_CODE: u16 = 1012;
/// Close reason of sockets a fenced node closes.
pub const FENCE_CLOSE_REASON: &str = "cluster node fenced, reconnect";

/// The cluster settings, from [`Config`].
#[derive(Clone)]
pub struct ClusterConfig {
    /// Server URLs as given (they may hold credentials: never log them; see
    /// [`ClusterConfig::redacted_urls`]).
    pub urls: Vec<String>,
    pub node_id: String,
    pub replicas: u8,
    pub creds: Option<std::path::PathBuf>,
    pub ca: Option<std::path::PathBuf>,
    pub bucket: String,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("urls", &self.redacted_urls())
            .field("node_id", &self.node_id)
            .field("replicas", &self.replicas)
            .finish_non_exhaustive()
    }
}

impl ClusterConfig {
    /// The cluster settings of `config`, or `None` in single-node mode.
    pub fn from_config(config: &Config) -> Option<ClusterConfig> {
        if !config.cluster_mode() {
            return None;
        }
        Some(ClusterConfig {
            urls: config
                .nats_url
                .iter()
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty())
                .collect(),
            node_id: config
                .node_id
                .clone()
                .unwrap_or_else(|| default_node_id(config.listen)),
            replicas: config.nats_replicas,
            creds: config.nats_creds.clone(),
            ca: config.nats_ca.clone(),
            bucket: BUCKET.to_owned(),
        })
    }

    /// The server URLs with any password or token replaced by `***`.
    pub fn redacted_urls(&self) -> String {
        self.urls
            .iter()
            .map(|url| nats::redact_url(url))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// The default node id: the host name, plus the listen address's IP when it
/// is a specific one, plus the port (`game1-7350`, `game1-127-0-0-11-7350`).
/// Stable across restarts, readable, and distinct for nodes sharing a host.
pub fn default_node_id(listen: std::net::SocketAddr) -> String {
    let host = hostname().unwrap_or_else(|| "herald".to_owned());
    let mut id: String = host
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    if !listen.ip().is_unspecified() {
        id.push('-');
        id.extend(listen.ip().to_string().chars().map(|c| {
            if c.is_ascii_alphanumeric() {
                c
            } else {
                '-'
            }
        }));
    }
    id.push_str(&format!("-{}", listen.port()));
    let id = id.trim_matches('-').to_owned();
    let start = id.len().saturating_sub(record::MAX_NODE_ID_LEN);
    id[start..].trim_start_matches('-').to_owned()
}

fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// A node incarnation that wrote presences, as a small number interned by
/// this process's replicator. Shards store it with each replica presence so
/// that all presences of one incarnation can be dropped at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin(pub u32);

/// One presence record of the log, routed to the shard that owns its user.
#[derive(Debug)]
pub struct PresenceRecord {
    pub user: UserId,
    pub session: SessionId,
    /// The writer's incarnation.
    pub origin: Origin,
    /// Written by this node's current incarnation (its own sessions' echo).
    pub own: bool,
    /// Log position.
    pub seq: u64,
    /// The session's status, or `None` when the session went offline or ended.
    pub value: Option<PresenceValue>,
    /// The change number of a purge (`value` is `None`).
    pub purge_change: u64,
}

/// A write a shard asks the log for, on behalf of one of its sessions.
#[derive(Debug, Clone)]
pub struct LogWrite {
    pub session: SessionId,
    pub user: UserId,
    /// The incarnation the session was registered under; a write of an
    /// incarnation that has been fenced is dropped.
    pub incarnation: u64,
    pub op: WriteOp,
}

#[derive(Debug, Clone)]
pub enum WriteOp {
    /// The session's status is now this value.
    Put(PresenceValue),
    /// The session went offline or ended (change number of the purge).
    Purge(u64),
    /// `--single-socket`: the session is its user's newest.
    NewestSession,
}

/// What the shards and the admin thread send to the cluster task.
pub(crate) enum Command {
    Write(LogWrite),
    /// Close a session on whichever node has it (backend API).
    Kick {
        session: SessionId,
        reason: String,
        reply: oneshot::Sender<bool>,
    },
    /// A shard starts keeping `users` (owned by it): fetch their presences
    /// as of a position no older than `since`, answer with `Snapshot`.
    Fetch {
        shard: u16,
        users: Vec<UserId>,
        since: u64,
    },
    /// The backend API asks who is online.
    QueryStatus {
        users: Vec<UserId>,
        reply: oneshot::Sender<Vec<UserStatus>>,
    },
    /// Clean stop: mark the lease left, then answer.
    Leave(oneshot::Sender<()>),
    /// Purge this incarnation's keys, close NATS, end the task.
    Stop(oneshot::Sender<()>),
}

/// Counters and state the cluster task publishes for metrics and readiness.
#[derive(Default)]
pub struct ClusterShared {
    /// Caught up with the log and holding a live lease: `/readyz` 200.
    ready: AtomicBool,
    /// This node's current incarnation; 0 while it holds no lease.
    incarnation: AtomicU64,
    pub log_lag: AtomicU64,
    pub nodes_live: AtomicU64,
    pub verdicts: AtomicU64,
    /// Fences by reason, indexed by [`membership::FenceReason`].
    pub fences: [AtomicU64; membership::FenceReason::COUNT],
    pub watch_restarts: AtomicU64,
    pub ignored_records: AtomicU64,
    pub publish: crate::engine::stats::Histogram,
}

/// What a shard holds to reach the cluster: cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct ClusterLink {
    commands: mpsc::UnboundedSender<Command>,
    shared: Arc<ClusterShared>,
}

impl ClusterLink {
    /// Queues a write. Never blocks.
    pub fn write(&self, write: LogWrite) {
        let _ = self.commands.send(Command::Write(write));
    }

    /// The incarnation new sessions register under, `None` while the node
    /// holds no lease (starting, fenced): such a node serves no sessions.
    pub fn incarnation(&self) -> Option<u64> {
        match self.shared.incarnation.load(Ordering::Acquire) {
            0 => None,
            inc => Some(inc),
        }
    }

    /// Caught up and registered: sessions may connect.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::Acquire)
    }

    pub fn shared(&self) -> &Arc<ClusterShared> {
        &self.shared
    }

    /// A link to no cluster task, registered as `incarnation` and ready, and
    /// the receiving end of its commands: engine tests play the log.
    #[cfg(test)]
    pub(crate) fn detached(incarnation: u64) -> (ClusterLink, mpsc::UnboundedReceiver<Command>) {
        let (commands, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(ClusterShared::default());
        shared.incarnation.store(incarnation, Ordering::Release);
        shared.ready.store(true, Ordering::Release);
        (ClusterLink { commands, shared }, receiver)
    }

    /// Asks for the presences of `users` (owned by `shard`) as of a log
    /// position no older than `since`; they come back as a `Snapshot`.
    pub fn fetch(&self, shard: u16, users: Vec<UserId>, since: u64) {
        let _ = self.commands.send(Command::Fetch {
            shard,
            users,
            since,
        });
    }

    /// The current statuses of `users` on every node, read from the log
    /// (the backend API's `GET /v2/status`), in the order given.
    pub async fn query_status(&self, users: Vec<UserId>) -> Vec<UserStatus> {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::QueryStatus { users, reply })
            .is_err()
        {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    /// Closes `session` on whichever node has it (this one first); false if
    /// none does.
    pub async fn kick(&self, session: SessionId, reason: String) -> bool {
        let (reply, answer) = oneshot::channel();
        let command = Command::Kick {
            session,
            reason,
            reply,
        };
        if self.commands.send(command).is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }
}

/// Starting the cluster failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Config(String),
    #[error("cannot connect to NATS at {urls}: {reason}")]
    Connect { urls: String, reason: String },
    #[error(
        "nats-server {found} at {urls} is too old: Herald needs 2.11 or newer (per-message TTL)"
    )]
    ServerTooOld { urls: String, found: String },
    #[error("JetStream is not enabled on the NATS server at {urls} (start nats-server with -js)")]
    NoJetStream { urls: String },
    #[error("presence log stream {stream}: {reason}")]
    Stream { stream: String, reason: String },
    #[error("the node did not catch up with the presence log and register within {0:?}")]
    NotReady(Duration),
    #[error("cannot start the cluster thread: {0}")]
    Thread(std::io::Error),
}

/// The running cluster task (see the module doc).
pub struct Cluster {
    link: ClusterLink,
    config: ClusterConfig,
    /// Hands the engine to the task once the shards run.
    start: Mutex<Option<oneshot::Sender<EngineHandle>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Cluster {
    /// Starts the cluster thread and connects to NATS: checks the server's
    /// version and JetStream, and creates the stream if it is missing. Returns
    /// once that is done, or with the error that stops start-up. The node
    /// does not read the log or register until [`Cluster::begin`].
    pub fn connect(config: ClusterConfig) -> Result<Cluster, ClusterError> {
        let shared = Arc::new(ClusterShared::default());
        let (commands, receiver) = mpsc::unbounded_channel();
        let (start, engine) = oneshot::channel();
        let (connected, outcome) = std::sync::mpsc::channel();
        let task_config = config.clone();
        let task_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("herald-cluster".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = connected.send(Err(ClusterError::Thread(error)));
                        return;
                    }
                };
                runtime.block_on(node::run(
                    task_config,
                    task_shared,
                    receiver,
                    connected,
                    engine,
                ));
            })
            .map_err(ClusterError::Thread)?;
        let result = outcome.recv().unwrap_or_else(|_| {
            Err(ClusterError::Connect {
                urls: config.redacted_urls(),
                reason: "the cluster thread stopped".into(),
            })
        });
        let cluster = Cluster {
            link: ClusterLink { commands, shared },
            config,
            start: Mutex::new(Some(start)),
            thread: Mutex::new(Some(thread)),
        };
        result.map(|()| cluster)
    }

    /// The link the shards use.
    pub fn link(&self) -> ClusterLink {
        self.link.clone()
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Starts reading the log into `engine`'s shards and registering this node.
    pub fn begin(&self, engine: EngineHandle) {
        if let Some(start) = self.start.lock().ok().and_then(|mut s| s.take()) {
            let _ = start.send(engine);
        }
    }

    /// Waits until the node is ready (caught up and registered), at most `limit`.
    pub fn wait_ready(&self, limit: Duration) -> Result<(), ClusterError> {
        let deadline = std::time::Instant::now() + limit;
        while !self.link.is_ready() {
            if std::time::Instant::now() >= deadline {
                return Err(ClusterError::NotReady(limit));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// Clean stop, first half: marks this node's lease left, so every peer
    /// sends the leaves of its sessions at once. Bounded by `limit`.
    pub fn leave(&self, limit: Duration) {
        self.request(Command::Leave, limit);
    }

    /// Clean stop, second half (after the sessions closed): removes this
    /// incarnation's keys from the log, closes NATS and joins the thread.
    pub fn stop(&self, limit: Duration) {
        self.request(Command::Stop, limit);
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
    }

    fn request(&self, make: impl FnOnce(oneshot::Sender<()>) -> Command, limit: Duration) {
        let (done, wait) = oneshot::channel();
        if self.link.commands.send(make(done)).is_err() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        else {
            return;
        };
        let _ = runtime.block_on(async { tokio::time::timeout(limit, wait).await });
    }
}

//! [`ShardStats`]: counters and gauges of one shard.
//!
//! Each shard (and the connections it runs) writes only its own block, with
//! relaxed atomics on cache lines nobody else writes, so recording costs no
//! contention on the fan-out path. Readers (the metrics endpoint, tests) sum
//! the blocks of all shards at scrape time.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Why a session ended, for `herald_sessions_closed_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseKind {
    /// The client closed the socket, or it broke.
    Client = 0,
    /// Its outgoing queue passed `--outgoing-queue-bytes`.
    SlowConsumer = 1,
    /// It sent something undecodable or a websocket protocol violation.
    Malformed = 2,
    /// No pong in time, or the handshake/close did not finish in time.
    Timeout = 3,
    /// Server shutdown.
    Shutdown = 4,
    /// Closed through the backend API or by `--single-socket`.
    Kicked = 5,
    /// Cluster mode: the node fenced itself (it lost its lease).
    Fenced = 6,
}

impl CloseKind {
    pub const ALL: [CloseKind; 7] = [
        CloseKind::Client,
        CloseKind::SlowConsumer,
        CloseKind::Malformed,
        CloseKind::Timeout,
        CloseKind::Shutdown,
        CloseKind::Kicked,
        CloseKind::Fenced,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            CloseKind::Client => "client",
            CloseKind::SlowConsumer => "slow_consumer",
            CloseKind::Malformed => "malformed",
            CloseKind::Timeout => "timeout",
            CloseKind::Shutdown => "shutdown",
            CloseKind::Kicked => "kicked",
            CloseKind::Fenced => "fenced",
        }
    }
}

/// How a REST authenticate call ended, for `herald_auth_total{result}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthResult {
    /// A new account was created.
    Created = 0,
    /// An existing account was found.
    Existing = 1,
    /// Refused: server key, invalid id or body, account not found, username taken.
    Rejected = 2,
    /// The account store or token signing failed.
    Error = 3,
}

impl AuthResult {
    pub const ALL: [AuthResult; 4] = [
        AuthResult::Created,
        AuthResult::Existing,
        AuthResult::Rejected,
        AuthResult::Error,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            AuthResult::Created => "created",
            AuthResult::Existing => "existing",
            AuthResult::Rejected => "rejected",
            AuthResult::Error => "error",
        }
    }
}

/// One shard's counters (see the module doc). Padded so two shards never share a cache line.
#[repr(align(128))]
#[derive(Default)]
pub struct ShardStats {
    /// Open sessions on this shard (gauge).
    pub sessions: AtomicI64,
    /// Users owned here with at least one status (gauge).
    pub users_online: AtomicI64,
    /// Follow edges held here, self-follows excluded (gauge).
    pub follow_edges: AtomicI64,
    /// Status changes made by sessions of this shard.
    pub status_changes: AtomicU64,
    /// Event frames queued to followers on this shard.
    pub deliveries: AtomicU64,
    /// Bytes written to sockets by this shard's connections.
    pub bytes_written: AtomicU64,
    /// `write`/`writev` calls made by this shard's connections.
    pub write_syscalls: AtomicU64,
    /// Sessions closed, per [`CloseKind`].
    pub closed: [AtomicU64; CloseKind::ALL.len()],
    /// Cluster mode: intermediate statuses a replica skipped (a lagging or
    /// recovering watch sees only a session's latest record).
    pub coalesced: AtomicU64,
    /// REST authenticate calls served on this shard's thread, per [`AuthResult`].
    pub auth: [AtomicU64; 4],
    /// Time from a status change to its last follower frame queued.
    pub fanout: Histogram,
}

/// Upper bounds (seconds) of the `herald_fanout_seconds` buckets.
pub const FANOUT_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A fixed-bucket histogram of durations, written by one shard.
#[derive(Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last slot is +Inf.
    buckets: [AtomicU64; FANOUT_BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    /// Adds this histogram's counts to `total`.
    pub fn add_to(&self, total: &mut HistogramSnapshot) {
        let r = Ordering::Relaxed;
        for (sum, c) in total.buckets.iter_mut().zip(&self.buckets) {
            *sum += c.load(r);
        }
        total.sum_seconds += self.sum_nanos.load(r) as f64 / 1e9;
        total.count += self.count.load(r);
    }

    pub fn record(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let bucket = FANOUT_BUCKETS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(FANOUT_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// A histogram summed over shards: per-bucket counts (not cumulative, last
/// is +Inf), the sum in seconds and the count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    pub buckets: [u64; FANOUT_BUCKETS.len() + 1],
    pub sum_seconds: f64,
    pub count: u64,
}

impl ShardStats {
    #[inline]
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    #[inline]
    pub fn gauge(gauge: &AtomicI64, delta: i64) {
        gauge.fetch_add(delta, Ordering::Relaxed);
    }

    /// Counts one closed session.
    pub fn closed(&self, kind: CloseKind) {
        self.closed[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one authenticate call.
    pub fn auth(&self, result: AuthResult) {
        self.auth[result as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// A point-in-time sum over all shards.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatsSnapshot {
    pub sessions: i64,
    pub users_online: i64,
    pub follow_edges: i64,
    pub status_changes: u64,
    pub deliveries: u64,
    pub bytes_written: u64,
    pub write_syscalls: u64,
    pub closed: [u64; CloseKind::ALL.len()],
    pub auth: [u64; 4],
    pub fanout: HistogramSnapshot,
    pub coalesced: u64,
}

impl StatsSnapshot {
    /// Sums `shards`.
    pub fn sum<'a>(shards: impl IntoIterator<Item = &'a ShardStats>) -> StatsSnapshot {
        let mut total = StatsSnapshot::default();
        for s in shards {
            let r = Ordering::Relaxed;
            total.sessions += s.sessions.load(r);
            total.users_online += s.users_online.load(r);
            total.follow_edges += s.follow_edges.load(r);
            total.status_changes += s.status_changes.load(r);
            total.deliveries += s.deliveries.load(r);
            total.bytes_written += s.bytes_written.load(r);
            total.write_syscalls += s.write_syscalls.load(r);
            total.coalesced += s.coalesced.load(r);
            for (sum, c) in total.closed.iter_mut().zip(&s.closed) {
                *sum += c.load(r);
            }
            for (sum, c) in total.auth.iter_mut().zip(&s.auth) {
                *sum += c.load(r);
            }
            s.fanout.add_to(&mut total.fanout);
        }
        total
    }

    /// Sessions closed for `kind`.
    pub fn closed(&self, kind: CloseKind) -> u64 {
        self.closed[kind as usize]
    }

    /// Authenticate calls that ended with `result`.
    pub fn auth(&self, result: AuthResult) -> u64 {
        self.auth[result as usize]
    }
}

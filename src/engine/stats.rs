//! [`ShardStats`]: counters and gauges of one shard.
//!
//! Each shard (and the connections it runs) writes only its own block, with
//! relaxed atomics on cache lines nobody else writes, so recording costs no
//! contention on the fan-out path. Readers (the metrics endpoint, tests) sum
//! the blocks of all shards at scrape time.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

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
}

impl CloseKind {
    pub const ALL: [CloseKind; 6] = [
        CloseKind::Client,
        CloseKind::SlowConsumer,
        CloseKind::Malformed,
        CloseKind::Timeout,
        CloseKind::Shutdown,
        CloseKind::Kicked,
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
    pub closed: [AtomicU64; 6],
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
}

/// A point-in-time sum over all shards.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    pub sessions: i64,
    pub users_online: i64,
    pub follow_edges: i64,
    pub status_changes: u64,
    pub deliveries: u64,
    pub bytes_written: u64,
    pub write_syscalls: u64,
    pub closed: [u64; 6],
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
            for (sum, c) in total.closed.iter_mut().zip(&s.closed) {
                *sum += c.load(r);
            }
        }
        total
    }

    /// Sessions closed for `kind`.
    pub fn closed(&self, kind: CloseKind) -> u64 {
        self.closed[kind as usize]
    }
}

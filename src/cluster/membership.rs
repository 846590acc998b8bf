//! [`Membership`]: this node's own lease, as a state machine with no I/O.
//! The cluster task feeds it time, connection state, write outcomes and
//! what the log says about the lease, and carries out the [`Step`]s it
//! returns (writes and fences).
//!
//! ```text
//!   Unregistered ──register──▶ Registering ──ack──▶ Live ──(record read)──▶ ready
//!        ▲                         │ conflict            │
//!        └──────── fence ◀─────────┴──────────────────────┘
//!   Blocked: another live process holds this node id; wait until it ends.
//! ```
//!
//! Fence rules (any of them closes every socket and drops the incarnation):
//! * **F1** no NATS connection for [`FENCE_DISCONNECTED`] (a cut node
//!   should stop serving before its peers declare it dead, ≈5 s);
//! * **F2** no heartbeat acknowledged for [`FENCE_NO_HEARTBEAT`] (longer
//!   than a stream leader election, so a failover fences nobody);
//! * **F3** the log shows this node's lease ended (a verdict, after a pause)
//!   or taken by another incarnation (another process with this node id:
//!   then *Blocked*, never fighting it for the lease).

use std::time::{Duration, Instant};

use super::record::{LeaseState, LeaseValue};
use super::{FENCE_DISCONNECTED, FENCE_NO_HEARTBEAT, HEARTBEAT};

/// Why a node fenced itself (`herald_cluster_fences_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceReason {
    /// F1: no NATS connection.
    Disconnected = 0,
    /// F2: no heartbeat acknowledged.
    NoHeartbeat = 1,
    /// F3: the lease was declared dead or ended.
    LeaseLost = 2,
    /// F3: another process registered this node id.
    NodeIdTaken = 3,
}

impl FenceReason {
    pub const COUNT: usize = 4;
    pub const ALL: [FenceReason; 4] = [
        FenceReason::Disconnected,
        FenceReason::NoHeartbeat,
        FenceReason::LeaseLost,
        FenceReason::NodeIdTaken,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            FenceReason::Disconnected => "nats_disconnected",
            FenceReason::NoHeartbeat => "heartbeat_unacknowledged",
            FenceReason::LeaseLost => "lease_lost",
            FenceReason::NodeIdTaken => "node_id_taken",
        }
    }
}

/// What the cluster task must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Write the lease `value` with compare-and-set on `expected` (0: the key
    /// must not exist, or holds only a purge).
    Write { value: LeaseValue, expected: u64 },
    /// Close every session, drop the incarnation; register again later.
    Fence {
        reason: FenceReason,
        incarnation: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Unregistered,
    /// A registration write of `incarnation` is in flight.
    Registering {
        incarnation: u64,
    },
    Live {
        incarnation: u64,
        /// Log position of the registration write: the node is ready once
        /// its reads have reached it.
        registered: u64,
        /// Log position of the lease's last acknowledged write.
        rev: u64,
        beat: u64,
        last_acked: Instant,
        next_beat: Instant,
        /// A heartbeat write is in flight.
        writing: bool,
    },
    Blocked,
    /// Stopping: no more writes.
    Leaving,
}

/// This node's lease (see the module doc).
#[derive(Debug)]
pub struct Membership {
    phase: Phase,
    /// The own lease key as the log has it: position and value.
    seen_rev: u64,
    seen: Option<LeaseValue>,
    /// When the NATS connection was lost, while it is.
    disconnected_since: Option<Instant>,
    /// Not before this instant: the next registration attempt.
    retry_at: Instant,
    /// The log position the node's reads have reached.
    read_seq: u64,
}

impl Membership {
    pub fn new(now: Instant) -> Membership {
        Membership {
            phase: Phase::Unregistered,
            seen_rev: 0,
            seen: None,
            disconnected_since: None,
            retry_at: now,
            read_seq: 0,
        }
    }

    /// The incarnation this node writes as, while it holds the lease.
    pub fn incarnation(&self) -> Option<u64> {
        match self.phase {
            Phase::Live { incarnation, .. } => Some(incarnation),
            _ => None,
        }
    }

    /// The incarnation the log's record of this node's lease names, if any.
    pub fn seen_incarnation(&self) -> Option<u64> {
        self.seen.map(|v| v.incarnation)
    }

    /// Holding the lease, and the log read up to its last write: serve.
    pub fn is_ready(&self) -> bool {
        matches!(self.phase, Phase::Live { registered, .. } if self.read_seq >= registered)
    }

    /// The lease's last acknowledged write, for a clean `left` write.
    pub fn lease_rev(&self) -> Option<(u64, u64, u64)> {
        match self.phase {
            Phase::Live {
                incarnation,
                rev,
                beat,
                ..
            } => Some((incarnation, rev, beat)),
            _ => None,
        }
    }

    /// The connection to NATS went down (`false`) or came back.
    pub fn connection(&mut self, connected: bool, now: Instant) {
        if connected {
            self.disconnected_since = None;
        } else if self.disconnected_since.is_none() {
            self.disconnected_since = Some(now);
        }
    }

    /// The log was read up to `seq`.
    pub fn read_up_to(&mut self, seq: u64) {
        self.read_seq = self.read_seq.max(seq);
    }

    /// The log's record of this node's lease key.
    pub fn own_lease(&mut self, rev: u64, value: Option<LeaseValue>, now: Instant) -> Option<Step> {
        self.seen_rev = rev;
        self.seen = value;
        match &mut self.phase {
            Phase::Live {
                incarnation,
                rev: own_rev,
                ..
            } => {
                let incarnation = *incarnation;
                match value {
                    Some(v) if v.incarnation == incarnation && v.state == LeaseState::Live => {
                        // One of this node's heartbeats: the next one
                        // compares with the newest (see `written`).
                        *own_rev = (*own_rev).max(rev);
                        None
                    }
                    Some(v) if v.state == LeaseState::Live => {
                        Some(self.fence(FenceReason::NodeIdTaken, now))
                    }
                    // Declared dead, left, or removed.
                    _ => Some(self.fence(FenceReason::LeaseLost, now)),
                }
            }
            Phase::Blocked if !value.is_some_and(|v| v.state == LeaseState::Live) => {
                tracing::info!("the other holder of this node id is gone; registering again");
                self.phase = Phase::Unregistered;
                None
            }
            _ => None,
        }
    }

    /// Time passes: heartbeats, registration, the fence timers. `loaded`:
    /// the first read of the log is done.
    pub fn tick(
        &mut self,
        now: Instant,
        loaded: bool,
        new_incarnation: impl FnOnce() -> u64,
    ) -> Option<Step> {
        if let Some(since) = self.disconnected_since {
            if self.incarnation().is_some() && now.duration_since(since) >= FENCE_DISCONNECTED {
                return Some(self.fence(FenceReason::Disconnected, now));
            }
        }
        match &mut self.phase {
            Phase::Unregistered => {
                if !loaded || self.disconnected_since.is_some() || now < self.retry_at {
                    return None;
                }
                let incarnation = new_incarnation();
                self.phase = Phase::Registering { incarnation };
                Some(Step::Write {
                    value: LeaseValue {
                        state: LeaseState::Live,
                        incarnation,
                        beat: 0,
                    },
                    expected: self.seen_rev,
                })
            }
            Phase::Live {
                incarnation,
                rev,
                beat,
                last_acked,
                next_beat,
                writing,
                ..
            } => {
                if now.duration_since(*last_acked) >= FENCE_NO_HEARTBEAT {
                    return Some(self.fence(FenceReason::NoHeartbeat, now));
                }
                if *writing || now < *next_beat || self.disconnected_since.is_some() {
                    return None;
                }
                *writing = true;
                // A steady period, so that peers' verdict timing is tight;
                // after a stall (a paused process) it starts over from now.
                *next_beat += HEARTBEAT;
                if *next_beat <= now {
                    *next_beat = now + HEARTBEAT;
                }
                Some(Step::Write {
                    value: LeaseValue {
                        state: LeaseState::Live,
                        incarnation: *incarnation,
                        beat: *beat + 1,
                    },
                    expected: *rev,
                })
            }
            Phase::Registering { .. } | Phase::Blocked | Phase::Leaving => None,
        }
    }

    /// The outcome of the last lease write: its log position, or whether the
    /// compare-and-set was refused (`Err(true)`) or the write failed.
    pub fn written(&mut self, outcome: Result<u64, bool>, now: Instant) -> Option<Step> {
        match (&mut self.phase, outcome) {
            (Phase::Registering { incarnation }, Ok(rev)) => {
                tracing::info!(
                    incarnation = format_args!("{:016x}", incarnation),
                    seq = rev,
                    "cluster lease registered"
                );
                self.phase = Phase::Live {
                    incarnation: *incarnation,
                    registered: rev,
                    rev,
                    beat: 0,
                    last_acked: now,
                    next_beat: now + HEARTBEAT,
                    writing: false,
                };
                None
            }
            (Phase::Registering { .. }, Err(_)) => {
                // Lost a race for the key (or NATS failed): read on, retry.
                self.phase = Phase::Unregistered;
                self.retry_at = now + Duration::from_millis(200);
                None
            }
            (
                Phase::Live {
                    rev,
                    beat,
                    last_acked,
                    writing,
                    ..
                },
                Ok(new_rev),
            ) => {
                *rev = new_rev;
                *beat += 1;
                *last_acked = now;
                *writing = false;
                None
            }
            (Phase::Live { writing, .. }, Err(_)) => {
                // A failed write (timeout) is retried next beat. A refused
                // compare-and-set means the key moved: a verdict, which the
                // log delivers (`own_lease` fences then), or this node's own
                // earlier heartbeat whose ack timed out but which was stored
                // (`own_lease` takes its position). Fencing on the refusal
                // itself fenced healthy nodes whose acks were slow.
                *writing = false;
                None
            }
            _ => None,
        }
    }

    /// Stops heartbeating for good (clean stop).
    pub fn leave(&mut self) {
        self.phase = Phase::Leaving;
    }

    fn fence(&mut self, reason: FenceReason, now: Instant) -> Step {
        let incarnation = match self.phase {
            Phase::Live { incarnation, .. } | Phase::Registering { incarnation } => incarnation,
            _ => 0,
        };
        self.phase = if reason == FenceReason::NodeIdTaken {
            Phase::Blocked
        } else {
            Phase::Unregistered
        };
        self.retry_at = now + Duration::from_millis(100);
        Step::Fence {
            reason,
            incarnation,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(incarnation: u64) -> Option<LeaseValue> {
        Some(LeaseValue {
            state: LeaseState::Live,
            incarnation,
            beat: 0,
        })
    }

    /// A node registered as incarnation 7 at log position 10, and ready.
    fn registered(now: Instant) -> Membership {
        let mut m = Membership::new(now);
        assert_eq!(m.tick(now, false, || 7), None, "waits for the load");
        let step = m.tick(now, true, || 7);
        assert!(matches!(step, Some(Step::Write { expected: 0, .. })));
        assert_eq!(m.written(Ok(10), now), None);
        assert!(!m.is_ready(), "not before its record is read");
        m.read_up_to(10);
        assert!(m.is_ready());
        m
    }

    #[test]
    fn heartbeats_once_a_second_with_compare_and_set() {
        let t0 = Instant::now();
        let mut m = registered(t0);
        assert_eq!(m.tick(t0, true, || 0), None);
        let step = m.tick(t0 + HEARTBEAT, true, || 0);
        assert_eq!(
            step,
            Some(Step::Write {
                value: LeaseValue {
                    state: LeaseState::Live,
                    incarnation: 7,
                    beat: 1
                },
                expected: 10
            })
        );
        assert_eq!(
            m.tick(t0 + HEARTBEAT * 2, true, || 0),
            None,
            "one in flight"
        );
        m.written(Ok(12), t0 + HEARTBEAT * 2);
        assert!(matches!(
            m.tick(t0 + HEARTBEAT * 2, true, || 0),
            Some(Step::Write { expected: 12, .. })
        ));
    }

    #[test]
    fn fence_rules() {
        let t0 = Instant::now();
        // F1: two seconds without NATS.
        let mut m = registered(t0);
        m.connection(false, t0);
        assert_eq!(m.tick(t0 + Duration::from_millis(1900), true, || 0), None);
        assert!(matches!(
            m.tick(t0 + FENCE_DISCONNECTED, true, || 0),
            Some(Step::Fence {
                reason: FenceReason::Disconnected,
                incarnation: 7
            })
        ));
        assert_eq!(m.incarnation(), None);

        // F2: heartbeats unacknowledged for 15 s (a leader election is shorter).
        let mut m = registered(t0);
        m.tick(t0 + HEARTBEAT, true, || 0);
        m.written(Err(false), t0 + HEARTBEAT);
        let step = m.tick(t0 + Duration::from_secs(10), true, || 0);
        assert!(matches!(step, Some(Step::Write { .. })));
        m.written(Err(false), t0 + Duration::from_secs(10));
        assert!(matches!(
            m.tick(t0 + FENCE_NO_HEARTBEAT, true, || 0),
            Some(Step::Fence {
                reason: FenceReason::NoHeartbeat,
                ..
            })
        ));

        // F3: a verdict read in the log, or a refused heartbeat.
        let mut m = registered(t0);
        let dead = Some(LeaseValue {
            state: LeaseState::Dead,
            incarnation: 7,
            beat: 3,
        });
        assert!(matches!(
            m.own_lease(11, dead, t0),
            Some(Step::Fence {
                reason: FenceReason::LeaseLost,
                ..
            })
        ));
        // A refused heartbeat alone does not fence: its own earlier beat,
        // stored though its ack timed out, moved the key. It compares
        // with that beat's position once the log shows it.
        let mut m = registered(t0);
        m.tick(t0 + HEARTBEAT, true, || 0);
        assert_eq!(m.written(Err(true), t0 + HEARTBEAT), None);
        let (incarnation, _, _) = m.lease_rev().expect("still live");
        let own = Some(LeaseValue {
            state: LeaseState::Live,
            incarnation,
            beat: 1,
        });
        assert_eq!(m.own_lease(12, own, t0 + HEARTBEAT), None);
        assert!(matches!(
            m.tick(t0 + HEARTBEAT * 2, true, || 0),
            Some(Step::Write { expected: 12, .. })
        ));
        assert!(matches!(
            m.own_lease(13, dead, t0 + HEARTBEAT * 2),
            Some(Step::Fence {
                reason: FenceReason::LeaseLost,
                ..
            })
        ));
        // After a fence it registers again, with compare-and-set on what it read.
        let step = m.tick(t0 + Duration::from_secs(3), true, || 8);
        assert!(
            matches!(step, Some(Step::Write { expected: 13, value }) if value.incarnation == 8)
        );
    }

    #[test]
    fn another_process_with_the_node_id_blocks_until_it_ends() {
        let t0 = Instant::now();
        let mut m = registered(t0);
        assert!(matches!(
            m.own_lease(11, live(9), t0),
            Some(Step::Fence {
                reason: FenceReason::NodeIdTaken,
                ..
            })
        ));
        assert_eq!(m.tick(t0 + Duration::from_secs(5), true, || 1), None);
        m.own_lease(12, live(9), t0);
        assert_eq!(m.tick(t0 + Duration::from_secs(6), true, || 1), None);
        let dead = Some(LeaseValue {
            state: LeaseState::Dead,
            incarnation: 9,
            beat: 0,
        });
        m.own_lease(13, dead, t0);
        assert!(matches!(
            m.tick(t0 + Duration::from_secs(7), true, || 1),
            Some(Step::Write { expected: 13, .. })
        ));
    }
}

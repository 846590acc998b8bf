//! [`StatusChange`]: one status change of one session, and its frames.
//!
//! A change is created once, on the shard that owns the user, and shared by
//! `Arc` with every shard that has followers of that user. Its websocket
//! frame is encoded lazily, **at most once per format**, by whichever shard
//! first needs it (`OnceLock`); every follower of that format then gets a
//! clone of the same `Arc` bytes. [`encode_count`] lets tests and benches
//! verify the "at most once" claim.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::ids::UserId;
use crate::protocol::{Format, Frame, StatusPresenceEvent};

/// Process-wide count of event encodes, per format (tests and benches read it).
static ENCODES: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];

/// How many status events have been encoded in `format` since the process started.
pub fn encode_count(format: Format) -> u64 {
    ENCODES[format as usize].load(Ordering::Relaxed)
}

/// One status change of one session (see the module doc).
pub struct StatusChange {
    /// The user whose session changed; its followers receive the event.
    pub user: UserId,
    /// The wire event: the new status in `joins`, the previous one in `leaves`.
    pub event: StatusPresenceEvent,
    /// The encoded frame per format, filled on first use.
    frames: [OnceLock<Frame>; 2],
    /// When the change was made, for `herald_fanout_seconds`.
    created: Instant,
    /// Shards that still have to deliver it; the last one records the fan-out time.
    remaining: AtomicUsize,
    /// Shards that deliver it, the owner included.
    shards: usize,
}

impl StatusChange {
    /// A change that `shards` shards will deliver (the owner included).
    pub fn new(user: UserId, event: StatusPresenceEvent, shards: usize) -> StatusChange {
        StatusChange {
            user,
            event,
            frames: [OnceLock::new(), OnceLock::new()],
            created: Instant::now(),
            remaining: AtomicUsize::new(shards.max(1)),
            shards: shards.max(1),
        }
    }

    /// Called by each delivering shard when done. The last one gets the time
    /// from the change to its last follower's frame being queued.
    pub fn delivered(&self) -> Option<Duration> {
        (self.remaining.fetch_sub(1, Ordering::AcqRel) == 1).then(|| self.created.elapsed())
    }

    /// How many shards deliver it, the owner included.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The event's frame in `format`, encoded on the first call for that format.
    #[inline]
    pub fn frame(&self, format: Format) -> &Frame {
        self.frames[format as usize].get_or_init(|| {
            ENCODES[format as usize].fetch_add(1, Ordering::Relaxed);
            Frame::event(format, &self.event)
        })
    }
}

impl std::fmt::Debug for StatusChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusChange")
            .field("user", &self.user)
            .field("event", &self.event)
            .finish()
    }
}

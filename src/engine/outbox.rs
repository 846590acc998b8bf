//! [`Outbox`]: everything the engine tells one connection.
//!
//! It carries the frames waiting to be written (a crossbeam `SegQueue` of
//! shared [`Frame`]s), the count of bytes they hold, a request to close the
//! session, and the flag that says a request of this session is still being
//! answered by other shards.
//!
//! A frame pushed while nothing else is pending (the common case for an idle
//! follower) goes to a one-frame slot in the outbox itself instead of the
//! queue: the fan-out loop then touches only the outbox's first cache line,
//! and an idle connection never allocates a queue block. "Nothing pending"
//! is read from the byte count, which covers queued frames and frames the
//! writer holds until they are fully written, so the slot is only used when
//! the queue is empty and every earlier frame is out: order is kept.
//!
//! While a follow waits for other shards ([`Outbox::hold_events`]), the
//! frames pushed to the session are *held* aside, and
//! [`Outbox::answer_and_release`] queues the follow's answer first and
//! then the held frames in order: an owner shard that granted early (its
//! snapshot taken) sends the events after its snapshot at once, and the
//! follower must not see them before the snapshot they come after. Held
//! frames count toward the byte bound. Keepalive pings are never held
//! ([`Outbox::push_ping`]): a follow that waits long for a cluster fetch
//! must not make its client miss pings and be closed as dead.
//!
//! Producers are the shard threads (events, replies, pings); the single
//! consumer is the connection's writer. With thread-per-core shards both
//! normally run on the session's home shard, but nothing here depends on
//! that: every field is atomic, so any thread may push or request a close.
//!
//! The queue is bounded in **bytes** (`--outgoing-queue-bytes`). A push made
//! while the bytes already queued reach the bound is refused and closes
//! *this* session with `session outgoing queue full`; the caller counts it.
//! Below the bound any frame is taken, whatever its size, so one event or
//! snapshot larger than the bound still reaches a client that keeps up (the
//! queue holds at most the bound plus one frame). Nothing is ever dropped
//! silently: a session either receives every frame in order, or it is
//! closed with a reason.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::task::Waker;

use atomic_waker::AtomicWaker;
use crossbeam::queue::SegQueue;

use crate::protocol::{Format, Frame};

/// Why the engine asks a connection to close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseCause {
    /// The outgoing queue passed its byte bound: 1000 `session outgoing queue full`.
    SlowConsumer,
    /// No pong within the pong deadline.
    Timeout,
    /// The server is shutting down: 1001 `going away`.
    Shutdown,
    /// Closed through the backend API, with the operator's reason.
    Kicked(String),
    /// Cluster mode: the node was fenced (lost its lease): 1012, reconnect.
    Fenced,
}

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued; the writer is scheduled.
    Queued,
    /// The session is already closing; the frame was not queued.
    Closed,
    /// The byte bound was exceeded: the session is now closing with
    /// [`CloseCause::SlowConsumer`]. Reported once per session.
    Overflowed,
}

/// The per-connection outbound queue and control flags (see the module doc).
///
/// Laid out for the fan-out loop, which touches a million of these per
/// change: everything a push to an idle session reads or writes (byte
/// count, slot, waker, closing and hold flags, format) sits in the first cache line
/// (`repr(C)` keeps the order; a test checks it). The second line opens
/// with the waker's address, which the loop loads alongside the first line
/// to prefetch the writer task a batch ahead. The bound is read only when
/// something is already queued, so it may sit there with the rarely used
/// fields, and the queue, whose head and tail are cache-padded, comes last.
#[repr(C)]
pub struct Outbox {
    /// Bytes pushed and not yet written to the socket (queued or held by the writer).
    queued_bytes: AtomicUsize,
    /// The next frame to write, when it was pushed with nothing pending
    /// (see the module doc). Read before the queue.
    slot: Mutex<Option<Frame>>,
    /// The connection task's waker, woken when there is something to do.
    waker: AtomicWaker,
    /// Set once a close was requested; pushes are refused from then on.
    closing: AtomicBool,
    /// The session's wire format; decides which encoding of an event it gets.
    format: Format,
    /// True while a request of this session waits for other shards. The
    /// connection reads no further requests until the shard clears it.
    request_pending: AtomicBool,
    /// True while frames are held for a follow's answer (see the module doc).
    holding: AtomicBool,
    /// Engine clock (seconds) when the client last proved it is alive.
    last_heard: AtomicU32,
    /// The address the registered waker points at (its task), kept only so
    /// the fan-out loop can prefetch it ([`Outbox::prefetch_waker`]); never
    /// dereferenced. First field of the second cache line.
    waker_hint: AtomicPtr<()>,
    /// The byte bound.
    limit: usize,
    /// Why the session is closing, when the engine asked for it.
    cause: OnceLock<CloseCause>,
    /// Frames held while `holding`, in order, with their bytes.
    held: Mutex<(Vec<Frame>, usize)>,
    /// Frames in the order they must be written, after the slot's.
    queue: SegQueue<Frame>,
}

impl Outbox {
    /// An empty outbox for a session of `format`, bounded to `limit` bytes.
    pub fn new(format: Format, limit: usize, now: u32) -> Outbox {
        Outbox {
            queue: SegQueue::new(),
            queued_bytes: AtomicUsize::new(0),
            limit,
            format,
            waker: AtomicWaker::new(),
            closing: AtomicBool::new(false),
            cause: OnceLock::new(),
            request_pending: AtomicBool::new(false),
            holding: AtomicBool::new(false),
            held: Mutex::new((Vec::new(), 0)),
            last_heard: AtomicU32::new(now),
            waker_hint: AtomicPtr::new(std::ptr::null_mut()),
            slot: Mutex::new(None),
        }
    }

    /// The session's wire format.
    #[inline]
    pub fn format(&self) -> Format {
        self.format
    }

    /// Loads the line a [`push`](Outbox::push) to an idle session touches
    /// (flags, byte count, slot, waker) and the line holding the waker's
    /// address, so that a loop over many outboxes can start their cache
    /// misses together before it pushes to any.
    #[inline]
    pub fn prefetch(&self) {
        std::hint::black_box(self.closing.load(Ordering::Relaxed));
        std::hint::black_box(self.waker_hint.load(Ordering::Relaxed));
    }

    /// Prefetches the registered waker's task, which the wake in a push
    /// touches: after [`prefetch`](Outbox::prefetch), so the address is at
    /// hand. The fan-out loop does this a batch ahead of its pushes.
    #[inline]
    pub fn prefetch_waker(&self) {
        prefetch_read(self.waker_hint.load(Ordering::Relaxed));
    }

    /// Queues `frame` and schedules the writer, unless that would pass the
    /// byte bound (see [`Push`]). While events are held, the frame is held.
    #[inline]
    pub fn push(&self, frame: Frame) -> Push {
        if self.closing.load(Ordering::Relaxed) {
            return Push::Closed;
        }
        if self.holding.load(Ordering::Acquire) {
            let mut held = self.held();
            if self.holding.load(Ordering::Relaxed) {
                let before = held.1 + self.queued_bytes.load(Ordering::Acquire);
                if before != 0 && before >= self.limit {
                    return self.overflow();
                }
                held.1 += frame.len();
                held.0.push(frame);
                return Push::Queued;
            }
        }
        self.push_now(frame)
    }

    /// Queues a keepalive ping at once, also while events are held: a ping
    /// carries no state, and a follow that waits long for other shards must
    /// not make a live client miss its pings and look dead.
    pub fn push_ping(&self, frame: Frame) -> Push {
        if self.closing.load(Ordering::Relaxed) {
            return Push::Closed;
        }
        self.push_now(frame)
    }

    /// Counts `frame`, queues it and schedules the writer (see [`Push`]).
    #[inline]
    fn push_now(&self, frame: Frame) -> Push {
        let len = frame.len();
        let before = self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        // The bound is on what is already queued: below it a frame of any
        // size is taken (see the module doc). Nothing queued is always below
        // it, so a push to an idle session does not read the bound's line.
        if before != 0 && before >= self.limit {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            return self.overflow();
        }
        self.enqueue(frame, before);
        self.waker.wake();
        Push::Queued
    }

    /// Puts a counted frame in the slot or the queue; `before` is the byte
    /// count before it was added.
    #[inline]
    fn enqueue(&self, frame: Frame, before: usize) {
        if before == 0 {
            // Nothing pending: the slot is free (see the module doc).
            let mut slot = self.slot();
            match slot.as_ref() {
                None => *slot = Some(frame),
                // Unreachable while the byte count is honest; the queue
                // still keeps the order if it ever is not.
                Some(_) => self.queue.push(frame),
            }
        } else {
            self.queue.push(frame);
        }
    }

    /// Closes the session for passing its bound.
    fn overflow(&self) -> Push {
        if self.close(CloseCause::SlowConsumer) {
            Push::Overflowed
        } else {
            Push::Closed
        }
    }

    /// From now on frames pushed are held until [`Outbox::answer_and_release`].
    pub fn hold_events(&self) {
        self.holding.store(true, Ordering::Release);
    }

    /// Queues `reply`, then the frames held since [`Outbox::hold_events`],
    /// in order, and stops holding. Without a hold it is a plain push.
    pub fn answer_and_release(&self, reply: Frame) -> Push {
        if !self.holding.load(Ordering::Acquire) {
            return self.push(reply);
        }
        self.release(Some(reply))
    }

    /// Queues `first` (if any), then the held frames, and stops holding.
    fn release(&self, first: Option<Frame>) -> Push {
        let mut held = self.held();
        let (frames, held_bytes) = std::mem::take(&mut *held);
        if self.closing.load(Ordering::Relaxed) {
            self.holding.store(false, Ordering::Release);
            return Push::Closed;
        }
        let first_bytes = first.as_ref().map_or(0, Frame::len);
        let mut before = self
            .queued_bytes
            .fetch_add(first_bytes + held_bytes, Ordering::AcqRel);
        for frame in first.into_iter().chain(frames) {
            let len = frame.len();
            self.enqueue(frame, before);
            before += len;
        }
        self.holding.store(false, Ordering::Release);
        drop(held);
        self.waker.wake();
        Push::Queued
    }

    /// The held frames. A panic while the lock was held leaves a plain
    /// list, so a poisoned lock is used as is.
    fn held(&self) -> MutexGuard<'_, (Vec<Frame>, usize)> {
        self.held
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks the connection to close. Returns true for the first request only.
    pub fn close(&self, cause: CloseCause) -> bool {
        let first = self.cause.set(cause).is_ok();
        self.closing.store(true, Ordering::Release);
        self.waker.wake();
        first
    }

    /// Marks the session closing without a cause of the engine's (the connection
    /// itself is closing it); later pushes are refused.
    pub fn mark_closing(&self) {
        self.closing.store(true, Ordering::Release);
    }

    /// True once a close was requested or the connection is closing.
    #[inline]
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// The engine's reason for closing, if it asked.
    pub fn close_cause(&self) -> Option<&CloseCause> {
        self.cause.get()
    }

    /// Registers the connection task to be woken by pushes and requests.
    #[inline]
    pub fn register(&self, waker: &Waker) {
        self.waker.register(waker);
        self.waker_hint
            .store(waker.data().cast_mut(), Ordering::Relaxed);
    }

    /// Takes the next frame to write.
    #[inline]
    pub fn pop(&self) -> Option<Frame> {
        self.slot().take().or_else(|| self.queue.pop())
    }

    /// Takes the next frame to write, if any is pending beyond the `held`
    /// bytes the writer already took and has not written yet. When nothing
    /// is, this reads only the outbox's first cache line: no lock, and not
    /// the queue's head and tail.
    #[inline]
    pub fn pop_beyond(&self, held: usize) -> Option<Frame> {
        if self.queued_bytes.load(Ordering::Acquire) <= held {
            return None;
        }
        self.pop()
    }

    /// The one-frame slot. A panic while it was held cannot leave it
    /// half-written (it is a plain `Option`), so a poisoned lock is used as is.
    #[inline]
    fn slot(&self) -> MutexGuard<'_, Option<Frame>> {
        self.slot
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records that `bytes` of popped frames reached the socket (or were discarded at close).
    #[inline]
    pub fn written(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::Release);
    }

    /// Bytes pushed and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// Drops every queued frame (used when a slow consumer is cut off).
    pub fn discard_queued(&self) {
        *self.held() = (Vec::new(), 0);
        let mut bytes = 0;
        while let Some(frame) = self.pop() {
            bytes += frame.len();
        }
        self.written(bytes);
    }

    /// Marks a request as waiting for other shards.
    pub fn begin_request(&self) {
        self.request_pending.store(true, Ordering::Release);
    }

    /// Marks the pending request answered (its reply is already queued),
    /// queues any frames held meanwhile, and wakes the connection.
    pub fn finish_request(&self) {
        if self.holding.load(Ordering::Acquire) {
            self.release(None);
        }
        self.request_pending.store(false, Ordering::Release);
        self.waker.wake();
    }

    /// True while a request waits for other shards.
    #[inline]
    pub fn request_pending(&self) -> bool {
        self.request_pending.load(Ordering::Acquire)
    }

    /// Records that the client proved liveness at engine time `now`.
    #[inline]
    pub fn heard(&self, now: u32) {
        self.last_heard.store(now, Ordering::Relaxed);
    }

    /// Engine time when the client last proved liveness.
    pub fn last_heard(&self) -> u32 {
        self.last_heard.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox")
            .field("format", &self.format)
            .field("queued_bytes", &self.queued_bytes())
            .field("closing", &self.is_closing())
            .finish()
    }
}

/// Asks the CPU to start loading the cache line at `address` (a hint: no
/// effect on program state, nothing on other architectures).
#[inline]
fn prefetch_read(address: *const ()) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint to the cache: it never faults and
    // never reads memory into the program, whatever the address (null or
    // freed included), so no validity is required of `address`. `sse` is
    // part of the x86_64 baseline. Justified by `engine_scale fanout`: it
    // overlaps the one cache miss per follower that batching alone left (the
    // writer task's header), see PERF.md.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(address.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = address;
}

#[cfg(test)]
mod tests {
    use super::*;
    use fastwebsockets::OpCode;

    fn frame(len: usize) -> Frame {
        Frame::control(OpCode::Ping, &vec![0u8; len])
    }

    #[test]
    fn frames_come_out_in_push_order() {
        let outbox = Outbox::new(Format::Json, 1 << 20, 0);
        let frames: Vec<Frame> = (1..=5).map(frame).collect();
        for f in &frames {
            assert_eq!(outbox.push(f.clone()), Push::Queued);
        }
        for f in &frames {
            assert_eq!(outbox.pop().as_ref(), Some(f));
        }
        assert_eq!(outbox.pop(), None);
    }

    #[test]
    fn held_frames_follow_the_answer_and_count_toward_the_bound() {
        let outbox = Outbox::new(Format::Json, 100, 0);
        outbox.hold_events();
        assert_eq!(outbox.push(frame(60)), Push::Queued);
        assert_eq!(outbox.push(frame(30)), Push::Queued);
        assert_eq!(outbox.pop(), None, "held, not queued");
        assert_eq!(outbox.answer_and_release(frame(5)), Push::Queued);
        let lens: Vec<usize> = std::iter::from_fn(|| outbox.pop())
            .map(|f| f.len())
            .collect();
        assert_eq!(lens, [frame(5).len(), frame(60).len(), frame(30).len()]);
        outbox.written(lens.iter().sum());
        assert_eq!(outbox.queued_bytes(), 0);
        // Held bytes past the bound close the session, as queued ones do.
        outbox.hold_events();
        assert_eq!(outbox.push(frame(120)), Push::Queued);
        assert_eq!(outbox.push(frame(1)), Push::Overflowed);
    }

    #[test]
    fn a_ping_is_not_held_with_the_events() {
        let outbox = Outbox::new(Format::Json, 1 << 20, 0);
        outbox.hold_events();
        assert_eq!(outbox.push(frame(10)), Push::Queued);
        assert_eq!(outbox.push_ping(frame(1)), Push::Queued);
        assert_eq!(outbox.pop().map(|f| f.len()), Some(frame(1).len()));
        assert_eq!(outbox.pop(), None, "the event stays held");
        assert_eq!(outbox.answer_and_release(frame(5)), Push::Queued);
        let lens: Vec<usize> = std::iter::from_fn(|| outbox.pop())
            .map(|f| f.len())
            .collect();
        assert_eq!(lens, [frame(5).len(), frame(10).len()]);
    }

    #[test]
    fn a_push_to_an_idle_session_touches_only_the_first_cache_line() {
        use std::mem::{offset_of, size_of};
        assert_eq!(std::mem::align_of::<Outbox>() % 64, 0);
        let ends = [
            offset_of!(Outbox, queued_bytes) + size_of::<AtomicUsize>(),
            offset_of!(Outbox, slot) + size_of::<Mutex<Option<Frame>>>(),
            offset_of!(Outbox, waker) + size_of::<AtomicWaker>(),
            offset_of!(Outbox, closing) + size_of::<AtomicBool>(),
            offset_of!(Outbox, holding) + size_of::<AtomicBool>(),
            offset_of!(Outbox, format) + size_of::<Format>(),
        ];
        assert!(ends.iter().all(|end| *end <= 64), "{ends:?}");
    }

    #[test]
    fn order_holds_across_the_slot_and_the_queue() {
        let outbox = Outbox::new(Format::Json, 1 << 20, 0);
        let (a, b, c, d) = (frame(1), frame(2), frame(3), frame(4));
        outbox.push(a.clone()); // nothing pending: the slot
        outbox.push(b.clone()); // the queue
        assert_eq!(outbox.pop().as_ref(), Some(&a));
        // `a` is popped but not yet written: `c` must queue behind `b`.
        outbox.push(c.clone());
        outbox.written(a.len());
        assert_eq!(outbox.pop().as_ref(), Some(&b));
        assert_eq!(outbox.pop().as_ref(), Some(&c));
        assert_eq!(outbox.pop(), None);
        outbox.written(b.len() + c.len());
        // Everything written: the slot again.
        outbox.push(d.clone());
        assert_eq!(outbox.pop().as_ref(), Some(&d));
        assert_eq!(outbox.pop(), None);
    }

    #[test]
    fn discarding_empties_the_slot_too() {
        let outbox = Outbox::new(Format::Json, 1 << 20, 0);
        outbox.push(frame(5));
        outbox.push(frame(6));
        outbox.discard_queued();
        assert_eq!(outbox.pop(), None);
        assert_eq!(outbox.queued_bytes(), 0);
    }

    #[test]
    fn reaching_the_byte_bound_closes_the_session_once() {
        let outbox = Outbox::new(Format::Json, 100, 0);
        assert_eq!(outbox.push(frame(60)), Push::Queued);
        assert_eq!(outbox.push(frame(60)), Push::Queued);
        assert_eq!(outbox.push(frame(1)), Push::Overflowed);
        assert_eq!(outbox.push(frame(1)), Push::Closed);
        assert_eq!(outbox.close_cause(), Some(&CloseCause::SlowConsumer));
        assert_eq!(outbox.queued_bytes(), 124);
    }

    #[test]
    fn a_frame_bigger_than_the_bound_fits_below_it() {
        let outbox = Outbox::new(Format::Json, 100, 0);
        assert_eq!(outbox.push(frame(10)), Push::Queued);
        assert_eq!(outbox.push(frame(150)), Push::Queued);
        assert_eq!(outbox.push(frame(1)), Push::Overflowed);
    }

    #[test]
    fn written_bytes_free_room_in_the_bound() {
        let outbox = Outbox::new(Format::Json, 100, 0);
        let f = frame(60);
        outbox.push(f.clone());
        let popped = outbox.pop().map(|f| f.len()).unwrap_or_default();
        outbox.written(popped);
        assert_eq!(outbox.push(f), Push::Queued);
    }
}

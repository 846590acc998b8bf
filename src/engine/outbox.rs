//! [`Outbox`]: everything the engine tells one connection.
//!
//! It carries the frames waiting to be written (a crossbeam `SegQueue` of
//! shared [`Frame`]s), the count of bytes they hold, a request to close the
//! session, and the flag that says a request of this session is still being
//! answered by other shards.
//!
//! Producers are the shard threads (events, replies, pings); the single
//! consumer is the connection's writer. With thread-per-core shards both
//! normally run on the session's home shard, but nothing here depends on
//! that: every field is atomic, so any thread may push or request a close.
//!
//! The queue is bounded in **bytes** (`--outgoing-queue-bytes`). A push that
//! would exceed the bound is refused and closes *this* session with
//! `session outgoing queue full`; the caller counts it. One frame is always
//! accepted into an empty queue, whatever its size, so a large reply (a big
//! snapshot) is delivered rather than mistaken for a slow consumer. Nothing is ever
//! dropped silently: a session either receives every frame in order, or it is
//! closed with a reason.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::OnceLock;
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
pub struct Outbox {
    /// Frames in the order they must be written.
    queue: SegQueue<Frame>,
    /// Bytes pushed and not yet written to the socket (queued or held by the writer).
    queued_bytes: AtomicUsize,
    /// The byte bound.
    limit: usize,
    /// The session's wire format; decides which encoding of an event it gets.
    format: Format,
    /// The connection task's waker, woken when there is something to do.
    waker: AtomicWaker,
    /// Set once a close was requested; pushes are refused from then on.
    closing: AtomicBool,
    /// Why the session is closing, when the engine asked for it.
    cause: OnceLock<CloseCause>,
    /// True while a request of this session waits for other shards. The
    /// connection reads no further requests until the shard clears it.
    request_pending: AtomicBool,
    /// Engine clock (seconds) when the client last proved it is alive.
    last_heard: AtomicU32,
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
            last_heard: AtomicU32::new(now),
        }
    }

    /// The session's wire format.
    #[inline]
    pub fn format(&self) -> Format {
        self.format
    }

    /// Queues `frame` and schedules the writer, unless that would pass the
    /// byte bound (see [`Push`]).
    #[inline]
    pub fn push(&self, frame: Frame) -> Push {
        if self.closing.load(Ordering::Relaxed) {
            return Push::Closed;
        }
        let len = frame.len();
        let before = self.queued_bytes.fetch_add(len, Ordering::Relaxed);
        // An empty queue takes any one frame: a single reply (say, a large
        // snapshot) is never refused for its own size.
        if before > 0 && before + len > self.limit {
            self.queued_bytes.fetch_sub(len, Ordering::Relaxed);
            return if self.close(CloseCause::SlowConsumer) {
                Push::Overflowed
            } else {
                Push::Closed
            };
        }
        self.queue.push(frame);
        self.waker.wake();
        Push::Queued
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
    }

    /// Takes the next frame to write.
    #[inline]
    pub fn pop(&self) -> Option<Frame> {
        self.queue.pop()
    }

    /// Records that `bytes` of popped frames reached the socket (or were discarded at close).
    #[inline]
    pub fn written(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Bytes pushed and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }

    /// Drops every queued frame (used when a slow consumer is cut off).
    pub fn discard_queued(&self) {
        let mut bytes = 0;
        while let Some(frame) = self.queue.pop() {
            bytes += frame.len();
        }
        self.written(bytes);
    }

    /// Marks a request as waiting for other shards.
    pub fn begin_request(&self) {
        self.request_pending.store(true, Ordering::Release);
    }

    /// Marks the pending request answered (its reply is already queued) and wakes the connection.
    pub fn finish_request(&self) {
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
    fn passing_the_byte_bound_closes_the_session_once() {
        let outbox = Outbox::new(Format::Json, 100, 0);
        assert_eq!(outbox.push(frame(60)), Push::Queued);
        assert_eq!(outbox.push(frame(60)), Push::Overflowed);
        assert_eq!(outbox.push(frame(1)), Push::Closed);
        assert_eq!(outbox.close_cause(), Some(&CloseCause::SlowConsumer));
        assert_eq!(outbox.queued_bytes(), 62);
    }

    #[test]
    fn an_empty_queue_takes_one_frame_of_any_size() {
        let outbox = Outbox::new(Format::Json, 100, 0);
        assert_eq!(outbox.push(frame(120)), Push::Queued);
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

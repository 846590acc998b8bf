//! [`Connection`]: one websocket session's task on its home shard. It reads
//! client frames, runs requests against the shard, and writes whatever the
//! outbox holds.
//!
//! The task is a hand-written future so that an idle session costs little:
//! it holds its socket, its outbox and a few words of state. Reads go into a
//! per-thread buffer (see [`super::frame_reader`]); writes go straight from
//! the shared frames in the outbox, gathered into one `writev` per batch
//! ([`super::writer`]). It is woken by socket readiness and by its outbox.
//!
//! Requests are handled one at a time, in order: while one waits for other
//! shards, the task reads nothing more (Nakama reads sequentially too), so
//! replies keep request order and a client cannot pile up work.
//!
//! Closing: whoever decides to close (the client, a protocol violation, or
//! the engine through the outbox) sends a close frame; the session leaves the
//! engine at once (its followers see the leave), queued frames are flushed
//! unless the session was cut off for being slow, and the socket is dropped
//! once the client answers the close or [`CLOSE_WAIT`] passes.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use fastwebsockets::OpCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::frame_reader::{FrameReader, Violation, WsEvent};
use super::writer::WriteQueue;
use crate::engine::stats::CloseKind;
use crate::engine::{CloseCause, Outbox, Outcome, SessionKey, ShardContext};
use crate::protocol::errors::close_reason;
use crate::protocol::{Format, Frame};

/// How long to wait for the client's answer to our close frame.
pub const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Every this many data messages count as proof of liveness, as in Nakama.
const MESSAGES_PER_LIVENESS: u32 = 20;
/// Socket reads per poll before the task yields to others on the shard.
const READS_PER_POLL: usize = 8;
/// Client messages handled per poll before the task yields, so that a client
/// pipelining a burst of updates cannot keep its followers' writers from
/// draining their outboxes in between.
const MESSAGES_PER_POLL: u32 = 16;

thread_local! {
    /// The shard thread's read buffer, shared by all its connections.
    static READ_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Where the session is in its life.
enum Phase {
    Open,
    /// We sent (or are sending) a close frame and wait for the client's.
    Closing {
        deadline: Pin<Box<Sleep>>,
    },
    /// The client closed first; our answer is being flushed, then we end.
    Answering,
}

/// A session's connection task (see the module doc).
pub struct Connection<S> {
    io: S,
    ctx: Rc<ShardContext>,
    key: SessionKey,
    outbox: Arc<Outbox>,
    format: Format,
    reader: FrameReader,
    writes: WriteQueue,
    /// Data messages received, for the every-20th liveness rule.
    messages: u32,
    phase: Phase,
    /// Still registered with the engine.
    registered: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// A task for the session `key`, already registered on `ctx`'s shard.
    /// `early` holds bytes the client sent right after the handshake.
    pub fn new(
        io: S,
        ctx: Rc<ShardContext>,
        key: SessionKey,
        outbox: Arc<Outbox>,
        max_message: usize,
        early: &[u8],
    ) -> Self {
        let mut reader = FrameReader::new(max_message);
        reader.partial.extend_from_slice(early);
        Connection {
            io,
            ctx,
            key,
            format: outbox.format(),
            outbox,
            reader,
            writes: WriteQueue::default(),
            messages: 0,
            phase: Phase::Open,
            registered: true,
        }
    }

    /// Leaves the engine (once): follow edges go, followers get the leave.
    fn unregister(&mut self, kind: CloseKind) {
        if self.registered {
            self.registered = false;
            self.outbox.mark_closing();
            self.ctx.stats.closed(kind);
            self.ctx.shard.borrow_mut().disconnect(self.key);
        }
    }

    /// Starts the closing handshake from our side.
    fn begin_close(&mut self, code: u16, reason: &str, kind: CloseKind) {
        if kind == CloseKind::SlowConsumer && self.registered {
            // One line per session cut off (a notable event), never per frame.
            let ids = self.ctx.shard.borrow().session_ids(self.key);
            tracing::info!(
                session_id = %ids.map_or(String::new(), |(session, _)| session.to_string()),
                user_id = %ids.map_or(String::new(), |(_, user)| user.to_string()),
                limit_bytes = self.ctx.engine.config().outgoing_queue_bytes,
                "slow consumer disconnected: session outgoing queue full"
            );
        }
        self.unregister(kind);
        if kind == CloseKind::SlowConsumer {
            self.outbox.discard_queued();
            self.writes.discard(&self.outbox);
        }
        self.writes.close_after(Frame::close(code, reason));
        self.phase = Phase::Closing {
            deadline: Box::pin(tokio::time::sleep(CLOSE_WAIT)),
        };
    }

    /// Closes for the reason the engine gave.
    fn close_for(&mut self, cause: CloseCause) {
        match cause {
            CloseCause::SlowConsumer => self.begin_close(
                1000,
                close_reason::OUTGOING_QUEUE_FULL,
                CloseKind::SlowConsumer,
            ),
            CloseCause::Timeout => self.begin_close(1000, "ping timeout", CloseKind::Timeout),
            CloseCause::Shutdown => self.begin_close(1001, "going away", CloseKind::Shutdown),
            CloseCause::Fenced => self.begin_close(
                crate::cluster::FENCE_CLOSE_CODE,
                crate::cluster::FENCE_CLOSE_REASON,
                CloseKind::Fenced,
            ),
            CloseCause::Kicked(reason) => {
                let reason = if reason.is_empty() {
                    close_reason::SERVER_SIDE_DISCONNECT
                } else {
                    reason.as_str()
                };
                self.begin_close(1000, reason, CloseKind::Kicked)
            }
        }
    }

    /// Reads and handles frames until the socket has nothing more, a request
    /// goes pending, or the session starts closing.
    fn poll_read_frames(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ()>> {
        READ_BUFFER.with(|cell| {
            let mut buf = cell.borrow_mut();
            let needed = (self.reader.max_frame() * 2).max(64 * 1024);
            if buf.len() < needed {
                buf.resize(needed, 0);
            }
            let mut filled = self.reader.partial.len();
            buf[..filled].copy_from_slice(&self.reader.partial);
            self.reader.partial = Vec::new();
            let mut budget = MESSAGES_PER_POLL;
            let mut reads = 0;
            loop {
                let consumed = self.handle_frames(&mut buf[..filled], &mut budget);
                buf.copy_within(consumed..filled, 0);
                filled -= consumed;
                if !matches!(self.phase, Phase::Open)
                    || self.outbox.request_pending()
                    || self.outbox.is_closing()
                {
                    self.reader.partial.extend_from_slice(&buf[..filled]);
                    return Poll::Ready(Ok(()));
                }
                if budget == 0 || reads == READS_PER_POLL {
                    // Budget spent: keep the rest for the next poll and let
                    // the other tasks of this shard (followers' writers) run.
                    self.reader.partial.extend_from_slice(&buf[..filled]);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                let mut read_buf = ReadBuf::new(&mut buf[filled..]);
                match Pin::new(&mut self.io).poll_read(cx, &mut read_buf) {
                    Poll::Pending => {
                        self.reader.partial.extend_from_slice(&buf[..filled]);
                        return Poll::Pending;
                    }
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(())),
                    Poll::Ready(Ok(())) if read_buf.filled().is_empty() => {
                        return Poll::Ready(Err(()))
                    }
                    Poll::Ready(Ok(())) => filled += read_buf.filled().len(),
                }
                reads += 1;
            }
        })
    }

    /// Handles the complete frames in `buf`, at most `budget` of them;
    /// returns how many bytes they took.
    fn handle_frames(&mut self, buf: &mut [u8], budget: &mut u32) -> usize {
        let mut pos = 0;
        while *budget > 0
            && matches!(self.phase, Phase::Open)
            && !self.outbox.request_pending()
            && !self.outbox.is_closing()
        {
            let event = match self.reader.next(buf, &mut pos) {
                Ok(Some(event)) => {
                    *budget -= 1;
                    event
                }
                Ok(None) => break,
                Err(Violation { code, reason }) => {
                    self.begin_close(code, reason, CloseKind::Malformed);
                    break;
                }
            };
            match event {
                WsEvent::Message { opcode, payload } => {
                    if opcode != self.format.opcode() {
                        self.begin_close(
                            1000,
                            close_reason::UNEXPECTED_MESSAGE_TYPE,
                            CloseKind::Malformed,
                        );
                        break;
                    }
                    self.messages = self.messages.wrapping_add(1);
                    if self.messages.is_multiple_of(MESSAGES_PER_LIVENESS) {
                        self.outbox.heard(self.ctx.engine.now());
                    }
                    let request = match self.format.decode(payload) {
                        Ok(request) => request,
                        Err(_) => {
                            self.begin_close(
                                1000,
                                close_reason::MALFORMED_PAYLOAD,
                                CloseKind::Malformed,
                            );
                            break;
                        }
                    };
                    let outcome = self.ctx.shard.borrow_mut().dispatch(self.key, request);
                    if outcome == Outcome::Close {
                        self.begin_close(
                            1000,
                            close_reason::ERROR_PROCESSING,
                            CloseKind::Malformed,
                        );
                    }
                }
                WsEvent::Ping(payload) => {
                    let _ = self.outbox.push(Frame::control(OpCode::Pong, payload));
                }
                WsEvent::Pong => self.outbox.heard(self.ctx.engine.now()),
                WsEvent::Close { code } => {
                    self.unregister(CloseKind::Client);
                    let code = match code {
                        Some(1005) | None => 1000,
                        Some(code) => code,
                    };
                    self.writes.close_after(Frame::close(code, ""));
                    self.phase = Phase::Answering;
                }
            }
        }
        pos
    }

    /// While closing: discard input until the client's close frame or EOF.
    fn poll_drain_input(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        READ_BUFFER.with(|cell| {
            let mut buf = cell.borrow_mut();
            loop {
                let mut read_buf = ReadBuf::new(&mut buf[..]);
                match Pin::new(&mut self.io).poll_read(cx, &mut read_buf) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(_)) => return Poll::Ready(()),
                    Poll::Ready(Ok(())) if read_buf.filled().is_empty() => return Poll::Ready(()),
                    Poll::Ready(Ok(())) => {
                        // A close opcode anywhere in what follows is the client's answer.
                        let data = read_buf.filled();
                        if contains_close_frame(data) {
                            return Poll::Ready(());
                        }
                    }
                }
            }
        })
    }
}

/// Rough scan for a masked close frame header: good enough to stop waiting
/// early; the close wait bounds everything else.
fn contains_close_frame(data: &[u8]) -> bool {
    data.windows(2).any(|w| w[0] == 0x88 && w[1] & 0x80 != 0)
}

impl<S: AsyncRead + AsyncWrite + Unpin> Future for Connection<S> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        this.outbox.register(cx.waker());
        loop {
            match &mut this.phase {
                Phase::Open => {
                    if let Some(cause) = this.outbox.close_cause().cloned() {
                        this.close_for(cause);
                        continue;
                    }
                    if this
                        .writes
                        .poll_flush(cx, &mut this.io, &this.outbox, &this.ctx.stats)
                        .is_ready_err()
                    {
                        this.unregister(CloseKind::Client);
                        return Poll::Ready(());
                    }
                    if this.outbox.request_pending() {
                        return Poll::Pending;
                    }
                    match this.poll_read_frames(cx) {
                        Poll::Ready(Err(())) => {
                            this.unregister(CloseKind::Client);
                            return Poll::Ready(());
                        }
                        Poll::Ready(Ok(())) => continue,
                        Poll::Pending => {
                            // Replies queued by the frames just handled are written now.
                            if this
                                .writes
                                .poll_flush(cx, &mut this.io, &this.outbox, &this.ctx.stats)
                                .is_ready_err()
                            {
                                this.unregister(CloseKind::Client);
                                return Poll::Ready(());
                            }
                            return Poll::Pending;
                        }
                    }
                }
                Phase::Answering => {
                    return match this.writes.poll_flush(
                        cx,
                        &mut this.io,
                        &this.outbox,
                        &this.ctx.stats,
                    ) {
                        Poll::Pending => Poll::Pending,
                        Poll::Ready(_) => Poll::Ready(()),
                    };
                }
                Phase::Closing { deadline } => {
                    if deadline.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(());
                    }
                    match this
                        .writes
                        .poll_flush(cx, &mut this.io, &this.outbox, &this.ctx.stats)
                    {
                        Poll::Ready(Err(_)) => return Poll::Ready(()),
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(Ok(())) => {}
                    }
                    return this.poll_drain_input(cx);
                }
            }
        }
    }
}

impl<S> Drop for Connection<S> {
    fn drop(&mut self) {
        if self.registered {
            self.registered = false;
            self.outbox.mark_closing();
            self.ctx.stats.closed(CloseKind::Shutdown);
            if let Ok(mut shard) = self.ctx.shard.try_borrow_mut() {
                shard.disconnect(self.key);
            }
        }
    }
}

/// Small helper to read a flush result.
trait ReadyErr {
    fn is_ready_err(&self) -> bool;
}

impl<E> ReadyErr for Poll<Result<(), E>> {
    fn is_ready_err(&self) -> bool {
        matches!(self, Poll::Ready(Err(_)))
    }
}

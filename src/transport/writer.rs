//! [`WriteQueue`]: the per-connection writer. It drains the outbox into the
//! socket, coalescing everything queued into as few `writev` calls as
//! possible (up to [`MAX_IOVECS`] frames or [`MAX_BATCH_BYTES`] per call).
//!
//! Frames are written straight from their shared `Arc` bytes; nothing is
//! copied. Only when the socket takes part of a batch are the remaining
//! frames held here (`held`), so an idle connection holds no buffer. Bytes
//! are released from the outbox's bound as they reach the socket.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};

use smallvec::SmallVec;
use tokio::io::AsyncWrite;

use crate::engine::stats::ShardStats;
use crate::engine::Outbox;
use crate::protocol::Frame;

/// Most frames gathered into one `writev`.
pub const MAX_IOVECS: usize = 64;
/// Most bytes gathered into one `writev`.
pub const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Frames on their way to the socket (see the module doc).
#[derive(Default)]
pub struct WriteQueue {
    /// Frames taken from the outbox and not completely written yet.
    held: VecDeque<Frame>,
    /// Bytes of `held[0]` already written.
    offset: usize,
    /// A close frame to write once everything before it is written, and how much of it is written.
    close: Option<(Frame, usize)>,
}

impl WriteQueue {
    /// Writes `frame` after every frame queued so far (the first close frame wins).
    pub fn close_after(&mut self, frame: Frame) {
        if self.close.is_none() {
            self.close = Some((frame, 0));
        }
    }

    /// Drops the frames held here, releasing their bytes from the outbox
    /// bound. A frame already partly written is kept: it must be finished,
    /// or whatever follows it (the close frame) would be read as its payload.
    pub fn discard(&mut self, outbox: &Outbox) {
        let started = if self.offset > 0 { self.held.pop_front() } else { None };
        let bytes: usize = self.held.iter().map(Frame::len).sum();
        outbox.written(bytes);
        self.held = VecDeque::new();
        if let Some(frame) = started {
            self.held.push_back(frame);
        }
    }

    /// Writes until everything (outbox, then the close frame) is out or the
    /// socket would block.
    pub fn poll_flush<S: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
        outbox: &Outbox,
        stats: &ShardStats,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut batch: SmallVec<[Frame; MAX_IOVECS]> = SmallVec::new();
            let result = {
                let mut iov: SmallVec<[IoSlice<'_>; MAX_IOVECS]> = SmallVec::new();
                let mut bytes = 0;
                for (i, frame) in self.held.iter().take(MAX_IOVECS).enumerate() {
                    let skip = if i == 0 { self.offset } else { 0 };
                    iov.push(IoSlice::new(&frame.as_bytes()[skip..]));
                    bytes += frame.len() - skip;
                }
                while iov.len() + batch.len() < MAX_IOVECS && bytes < MAX_BATCH_BYTES {
                    let Some(frame) = outbox.pop() else { break };
                    bytes += frame.len();
                    batch.push(frame);
                }
                iov.extend(batch.iter().map(|f| IoSlice::new(f.as_bytes())));
                if iov.is_empty() {
                    None
                } else {
                    Some(Pin::new(&mut *io).poll_write_vectored(cx, &iov))
                }
            };
            let Some(result) = result else {
                return self.poll_write_close(cx, io, stats);
            };
            match result {
                Poll::Pending => {
                    self.held.extend(batch);
                    return Poll::Pending;
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(written)) => {
                    ShardStats::add(&stats.write_syscalls, 1);
                    ShardStats::add(&stats.bytes_written, written as u64);
                    outbox.written(written);
                    self.held.extend(batch);
                    self.consume(written);
                }
            }
        }
    }

    /// Drops the fully written frames at the front.
    fn consume(&mut self, mut written: usize) {
        while let Some(front) = self.held.front() {
            let rest = front.len() - self.offset;
            if written < rest {
                self.offset += written;
                return;
            }
            written -= rest;
            self.offset = 0;
            self.held.pop_front();
        }
        if self.held.capacity() > MAX_IOVECS {
            // Give back what a burst grew, so idle connections stay small.
            self.held = VecDeque::new();
        }
    }

    fn poll_write_close<S: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut S,
        stats: &ShardStats,
    ) -> Poll<io::Result<()>> {
        let Some((frame, offset)) = self.close.as_mut() else { return Poll::Ready(Ok(())) };
        while *offset < frame.len() {
            match Pin::new(&mut *io).poll_write(cx, &frame.as_bytes()[*offset..]) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => {
                    ShardStats::add(&stats.write_syscalls, 1);
                    ShardStats::add(&stats.bytes_written, n as u64);
                    *offset += n;
                }
            }
        }
        match Pin::new(&mut *io).poll_flush(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            other => other,
        }
    }
}

//! [`WriteQueue`]: the per-connection writer. It drains the outbox into the
//! socket, coalescing everything queued into as few `writev` calls as
//! possible (up to [`MAX_IOVECS`] frames or [`MAX_BATCH_BYTES`] per call; a
//! lone frame goes out with a plain `send`).
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
    /// bound, except a frame already partly written: its rest must still go
    /// out, or the next frame (the close frame) would land inside its payload
    /// and the client would read garbage instead of the close.
    pub fn discard(&mut self, outbox: &Outbox) {
        let started = if self.offset > 0 {
            self.held.pop_front()
        } else {
            None
        };
        let bytes: usize = self.held.iter().map(Frame::len).sum();
        outbox.written(bytes);
        self.held = VecDeque::new();
        match started {
            Some(frame) => self.held.push_back(frame),
            None => self.offset = 0,
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
            let (result, bytes) = {
                let mut iov: SmallVec<[IoSlice<'_>; MAX_IOVECS]> = SmallVec::new();
                let mut bytes = 0;
                for (i, frame) in self.held.iter().take(MAX_IOVECS).enumerate() {
                    let skip = if i == 0 { self.offset } else { 0 };
                    iov.push(IoSlice::new(&frame.as_bytes()[skip..]));
                    bytes += frame.len() - skip;
                }
                while iov.len() + batch.len() < MAX_IOVECS && bytes < MAX_BATCH_BYTES {
                    // `bytes` is what this writer holds unwritten: only
                    // more than that means another frame is pending.
                    let Some(frame) = outbox.pop_beyond(bytes) else {
                        break;
                    };
                    bytes += frame.len();
                    batch.push(frame);
                }
                iov.extend(batch.iter().map(|f| IoSlice::new(f.as_bytes())));
                let result = match iov.as_slice() {
                    [] => None,
                    // One frame (every fan-out delivery to a follower that
                    // keeps up): `send`, which skips the VFS layer `writev`
                    // goes through: up to ≈0.5 µs less per write at 2,000
                    // sockets, within run-to-run noise (`send_floor`, PERF.md).
                    [one] => Some(Pin::new(&mut *io).poll_write(cx, one)),
                    many => Some(Pin::new(&mut *io).poll_write_vectored(cx, many)),
                };
                (result, bytes)
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
                    // With nothing held, `bytes` is the batch's size.
                    if !(self.held.is_empty() && written == bytes) {
                        // Something is left to write: keep it, in order.
                        self.held.extend(batch);
                        self.consume(written);
                    }
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
        let Some((frame, offset)) = self.close.as_mut() else {
            // Free for TCP; a TLS stream sends the records it still buffers.
            return Pin::new(&mut *io).poll_flush(cx);
        };
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

#[cfg(test)]
mod tests {
    use std::task::Waker;

    use fastwebsockets::OpCode;

    use super::*;
    use crate::protocol::Format;

    /// A socket that takes at most `room` more bytes, then would block.
    struct Socket {
        out: Vec<u8>,
        room: usize,
    }

    impl AsyncWrite for Socket {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.room);
            if n == 0 {
                return Poll::Pending;
            }
            self.room -= n;
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn a_close_after_a_discard_follows_the_frame_already_started() {
        let outbox = Outbox::new(Format::Json, 1 << 20, 0);
        let frames: Vec<Frame> = (1..=3u8)
            .map(|i| Frame::control(OpCode::Ping, &[i; 100]))
            .collect();
        for frame in &frames {
            outbox.push(frame.clone());
        }
        let stats = ShardStats::default();
        let mut cx = Context::from_waker(Waker::noop());
        let mut socket = Socket {
            out: Vec::new(),
            room: 150,
        };
        let mut writes = WriteQueue::default();
        assert!(writes
            .poll_flush(&mut cx, &mut socket, &outbox, &stats)
            .is_pending());

        // The session is cut off in the middle of the second frame.
        outbox.discard_queued();
        writes.discard(&outbox);
        let close = Frame::close(1000, "session outgoing queue full");
        writes.close_after(close.clone());
        socket.room = usize::MAX;
        assert!(matches!(
            writes.poll_flush(&mut cx, &mut socket, &outbox, &stats),
            Poll::Ready(Ok(()))
        ));

        let mut expected = frames[0].as_bytes().to_vec();
        expected.extend_from_slice(frames[1].as_bytes());
        expected.extend_from_slice(close.as_bytes());
        assert_eq!(socket.out, expected);
        assert_eq!(outbox.queued_bytes(), 0);
    }

    #[test]
    fn a_discard_between_frames_drops_them_all() {
        let outbox = Outbox::new(Format::Json, 1 << 20, 0);
        let frames: Vec<Frame> = (1..=3u8)
            .map(|i| Frame::control(OpCode::Ping, &[i; 100]))
            .collect();
        for frame in &frames {
            outbox.push(frame.clone());
        }
        let stats = ShardStats::default();
        let mut cx = Context::from_waker(Waker::noop());
        let mut socket = Socket {
            out: Vec::new(),
            room: frames[0].len(),
        };
        let mut writes = WriteQueue::default();
        assert!(writes
            .poll_flush(&mut cx, &mut socket, &outbox, &stats)
            .is_pending());
        outbox.discard_queued();
        writes.discard(&outbox);
        let close = Frame::close(1000, "");
        writes.close_after(close.clone());
        socket.room = usize::MAX;
        assert!(matches!(
            writes.poll_flush(&mut cx, &mut socket, &outbox, &stats),
            Poll::Ready(Ok(()))
        ));
        let mut expected = frames[0].as_bytes().to_vec();
        expected.extend_from_slice(close.as_bytes());
        assert_eq!(socket.out, expected);
        assert_eq!(outbox.queued_bytes(), 0);
    }
}

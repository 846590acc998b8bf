//! [`Frame`]: one complete server → client websocket frame, header included.
//!
//! Server frames are unmasked (RFC 6455 §5.1), so the bytes of an event frame
//! are identical for every follower of the same format. The engine builds a
//! frame once and hands clones of the `Arc` to every follower's outbox; the
//! writer copies nothing and writes these bytes as they are.

use std::cell::RefCell;
use std::sync::Arc;

use fastwebsockets::{OpCode, Payload};

use super::{Format, Reply, StatusPresenceEvent};

/// Room kept in front of the payload for the largest unmasked header.
const MAX_HEAD: usize = 10;

thread_local! {
    /// Per-thread encode buffer, so building a frame allocates only the frame itself.
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(Vec::with_capacity(4096));
}

/// A complete websocket frame, shared by reference count.
#[derive(Clone, PartialEq, Eq)]
pub struct Frame(Arc<[u8]>);

impl Frame {
    /// The reply to one request, in the session's format.
    pub fn reply(format: Format, reply: &Reply<'_>) -> Frame {
        Frame::build(format.opcode(), |out| format.encode_reply(reply, out))
    }

    /// A status event in `format`. The engine calls this at most once per event and format.
    pub fn event(format: Format, event: &StatusPresenceEvent) -> Frame {
        Frame::build(format.opcode(), |out| format.encode_event(event, out))
    }

    /// A close frame with `code` and a UTF-8 `reason` (truncated to fit 125 bytes).
    pub fn close(code: u16, reason: &str) -> Frame {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Frame::build(OpCode::Close, |out| {
            out.extend_from_slice(&code.to_be_bytes());
            out.extend_from_slice(&reason.as_bytes()[..end]);
        })
    }

    /// A control frame (ping or pong) carrying `payload` (at most 125 bytes).
    pub fn control(opcode: OpCode, payload: &[u8]) -> Frame {
        let payload = &payload[..payload.len().min(125)];
        Frame::build(opcode, |out| out.extend_from_slice(payload))
    }

    /// Encodes a payload with `encode`, then prefixes the frame header.
    fn build(opcode: OpCode, encode: impl FnOnce(&mut Vec<u8>)) -> Frame {
        SCRATCH.with(|scratch| {
            let mut buf = scratch.borrow_mut();
            buf.clear();
            buf.resize(MAX_HEAD, 0);
            encode(&mut buf);
            let (head_room, payload) = buf.split_at_mut(MAX_HEAD);
            let mut head = [0u8; MAX_HEAD];
            let head_len =
                fastwebsockets::Frame::new(true, opcode, None, Payload::Borrowed(payload))
                    .fmt_head(&mut head);
            let start = MAX_HEAD - head_len;
            head_room[start..].copy_from_slice(&head[..head_len]);
            let frame = Frame(Arc::from(&buf[start..]));
            if buf.capacity() > 1 << 20 {
                // Do not let one huge snapshot pin a megabyte per thread forever.
                *buf = Vec::with_capacity(4096);
            }
            frame
        })
    }

    /// A copy of these bytes in a new allocation with its own reference
    /// count (a shard's local copy of another shard's event; see `engine::shard`).
    pub fn copied(&self) -> Frame {
        Frame(Arc::from(&self.0[..]))
    }

    /// The frame's bytes, ready to write.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes, header included.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The payload, without the header (for tests and tools).
    pub fn payload(&self) -> &[u8] {
        let bytes = &self.0;
        let offset = match bytes.get(1).map(|b| b & 0x7f) {
            Some(126) => 4,
            Some(127) => 10,
            _ => 2,
        };
        bytes.get(offset..).unwrap_or_default()
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Frame({} bytes: {:?})",
            self.0.len(),
            String::from_utf8_lossy(self.payload())
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_frame_has_code_and_reason() {
        let frame = Frame::close(1000, "received malformed payload");
        assert_eq!(frame.as_bytes()[0], 0x88);
        assert_eq!(&frame.payload()[..2], &1000u16.to_be_bytes());
        assert_eq!(&frame.payload()[2..], b"received malformed payload");
    }

    #[test]
    fn headers_cover_all_three_length_forms() {
        for len in [0usize, 125, 126, 65535, 65536] {
            let payload = vec![b'x'; len];
            let frame = Frame::build(OpCode::Binary, |out| out.extend_from_slice(&payload));
            assert_eq!(frame.as_bytes()[0], 0x82);
            assert_eq!(frame.payload().len(), len);
        }
    }
}

//! [`FrameReader`]: incremental parsing of client → server websocket frames
//! (RFC 6455 §5) out of a caller-provided buffer.
//!
//! The connection reads into a **per-thread** buffer and hands it here, so an
//! idle connection holds no read buffer at all: only the bytes of an
//! incomplete frame are carried in `partial` (allocated only then), and a
//! fragmented message being assembled in `fragments`. fastwebsockets'
//! `WebSocket` keeps an 8 KiB buffer per connection and awaits inside the
//! stream, which would cost 8 KiB per idle session; this module uses its
//! frame primitives (`OpCode`, `unmask`, `CloseCode`) over our buffers instead.
//!
//! Every violation maps to the close code RFC 6455 prescribes:
//! * 1002 (protocol error): reserved bits, reserved opcodes, unmasked frames,
//!   fragmented or over-long control frames, continuation without a start,
//!   a new data frame inside a fragmented message, a bad close payload;
//! * 1007: a text message, or a close reason, that is not UTF-8;
//! * 1009: a message longer than `--max-message-bytes`, detected from the
//!   header before its payload is read.
//!
//! The UTF-8 check is a deliberate difference from Nakama, whose websocket
//! library (gorilla) does not check text frames, so there such a message
//! reaches the JSON decoder and closes with 1000 `received malformed payload`.

use fastwebsockets::{CloseCode, OpCode};

/// A parsed frame or message.
#[derive(Debug, PartialEq, Eq)]
pub enum WsEvent<'a> {
    /// A complete data message (fragments reassembled), unmasked.
    Message {
        opcode: OpCode,
        payload: &'a mut [u8],
    },
    /// A ping; answer with a pong carrying the same payload.
    Ping(&'a [u8]),
    /// A pong (solicited or not): proof of liveness.
    Pong,
    /// The peer starts (or answers) the closing handshake.
    Close { code: Option<u16> },
}

/// A violation of the websocket protocol; the session closes with `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Violation {
    pub code: u16,
    pub reason: &'static str,
}

const fn protocol_error(reason: &'static str) -> Violation {
    Violation { code: 1002, reason }
}

/// A message longer than the limit.
pub const TOO_BIG: Violation = Violation {
    code: 1009,
    reason: "",
};
/// A text message or close reason that is not UTF-8.
pub const NOT_UTF8: Violation = Violation {
    code: 1007,
    reason: "invalid UTF-8",
};

/// A fragmented data message being reassembled.
struct Fragments {
    opcode: OpCode,
    data: Vec<u8>,
}

/// Parser state carried between reads (see the module doc).
pub struct FrameReader {
    max_message: usize,
    /// Bytes of an incomplete frame (or of frames not processed yet) carried to the next read.
    pub partial: Vec<u8>,
    fragments: Option<Fragments>,
    /// The last reassembled message, borrowed by the event that returned it.
    completed: Option<Fragments>,
}

impl FrameReader {
    pub fn new(max_message: usize) -> FrameReader {
        FrameReader {
            max_message,
            partial: Vec::new(),
            fragments: None,
            completed: None,
        }
    }

    /// The largest frame this reader accepts, header included: what a read
    /// buffer must be able to hold.
    pub fn max_frame(&self) -> usize {
        self.max_message + 14
    }

    /// Parses the next event from `buf[*pos..]`, advancing `*pos` past it.
    /// `Ok(None)` means the rest of the buffer is an incomplete frame.
    pub fn next<'a>(
        &'a mut self,
        buf: &'a mut [u8],
        pos: &mut usize,
    ) -> Result<Option<WsEvent<'a>>, Violation> {
        self.completed = None;
        // Frames that only add to a fragmented message are absorbed here;
        // the loop ends at the first frame that yields an event.
        let (header, start) = loop {
            let Some(header) = parse_header(&buf[*pos..])? else {
                return Ok(None);
            };
            let control = matches!(header.opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
            if control {
                if !header.fin {
                    return Err(protocol_error("fragmented control frame"));
                }
                if header.len > 125 {
                    return Err(protocol_error("control frame too long"));
                }
            } else {
                let assembled = self.fragments.as_ref().map_or(0, |f| f.data.len());
                if header.len > self.max_message.saturating_sub(assembled) as u64 {
                    return Err(TOO_BIG);
                }
            }
            let len = header.len as usize;
            if buf.len() - *pos < header.size + len {
                return Ok(None);
            }
            let start = *pos + header.size;
            *pos = start + len;
            let payload = &mut buf[start..start + len];
            fastwebsockets::unmask(payload, header.mask);
            match header.opcode {
                OpCode::Continuation => {
                    let Some(fragments) = self.fragments.as_mut() else {
                        return Err(protocol_error("continuation frame without a message"));
                    };
                    fragments.data.extend_from_slice(payload);
                }
                OpCode::Text | OpCode::Binary => {
                    if self.fragments.is_some() {
                        return Err(protocol_error("new message inside a fragmented message"));
                    }
                    if !header.fin {
                        self.fragments = Some(Fragments {
                            opcode: header.opcode,
                            data: payload.to_vec(),
                        });
                    }
                }
                _ => {}
            }
            let absorbed = !header.fin && header.opcode != OpCode::Close;
            if !absorbed {
                break (header, start);
            }
        };
        let payload = &mut buf[start..start + header.len as usize];
        match header.opcode {
            OpCode::Ping => Ok(Some(WsEvent::Ping(payload))),
            OpCode::Pong => Ok(Some(WsEvent::Pong)),
            OpCode::Close => parse_close(payload).map(Some),
            OpCode::Continuation => {
                // The assembled message is handed out from `completed`, which
                // lives until the next call.
                let Some(done) = self.fragments.take() else {
                    return Ok(None);
                };
                let completed = self.completed.insert(done);
                data_message(completed.opcode, &mut completed.data).map(Some)
            }
            OpCode::Text | OpCode::Binary => data_message(header.opcode, payload).map(Some),
        }
    }
}

/// A complete data message, UTF-8 checked when it is text.
fn data_message(opcode: OpCode, payload: &mut [u8]) -> Result<WsEvent<'_>, Violation> {
    if opcode == OpCode::Text && std::str::from_utf8(payload).is_err() {
        return Err(NOT_UTF8);
    }
    Ok(WsEvent::Message { opcode, payload })
}

fn parse_close(payload: &[u8]) -> Result<WsEvent<'static>, Violation> {
    match payload.len() {
        0 => Ok(WsEvent::Close { code: None }),
        1 => Err(protocol_error("close frame with a one-byte payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !CloseCode::from(code).is_allowed() {
                return Err(protocol_error("invalid close code"));
            }
            if std::str::from_utf8(&payload[2..]).is_err() {
                return Err(NOT_UTF8);
            }
            Ok(WsEvent::Close { code: Some(code) })
        }
    }
}

struct Header {
    fin: bool,
    opcode: OpCode,
    mask: [u8; 4],
    len: u64,
    /// Header length in bytes (2 + extended length + 4 mask bytes).
    size: usize,
}

/// Parses a frame header; `Ok(None)` if `bytes` does not hold all of it yet.
fn parse_header(bytes: &[u8]) -> Result<Option<Header>, Violation> {
    let [b0, b1, ..] = *bytes else {
        return Ok(None);
    };
    if b0 & 0x70 != 0 {
        return Err(protocol_error("reserved bits set"));
    }
    let opcode = match b0 & 0x0f {
        0 => OpCode::Continuation,
        1 => OpCode::Text,
        2 => OpCode::Binary,
        8 => OpCode::Close,
        9 => OpCode::Ping,
        10 => OpCode::Pong,
        _ => return Err(protocol_error("reserved opcode")),
    };
    if b1 & 0x80 == 0 {
        return Err(protocol_error("unmasked client frame"));
    }
    let (len, ext) = match b1 & 0x7f {
        126 => match bytes.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 2),
            None => return Ok(None),
        },
        127 => match bytes.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => {
                let len = u64::from_be_bytes(b);
                if len >> 63 != 0 {
                    return Err(protocol_error("payload length with the high bit set"));
                }
                (len, 8)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 0),
    };
    let Some(mask) = bytes
        .get(2 + ext..6 + ext)
        .and_then(|b| <[u8; 4]>::try_from(b).ok())
    else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin: b0 & 0x80 != 0,
        opcode,
        mask,
        len,
        size: 6 + ext,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            len @ 0..=125 => out.push(0x80 | len as u8),
            len => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn first_event(
        reader: &mut FrameReader,
        mut bytes: Vec<u8>,
    ) -> Result<Option<String>, Violation> {
        let mut pos = 0;
        reader.next(&mut bytes, &mut pos).map(|event| {
            event.map(|event| match event {
                WsEvent::Message { opcode, payload } => {
                    format!("{opcode:?}:{}", String::from_utf8_lossy(payload))
                }
                other => format!("{other:?}"),
            })
        })
    }

    #[test]
    fn text_that_is_not_utf8_closes_with_1007() {
        // Herald checks UTF-8 as RFC 6455 requires (issue 5); Nakama's
        // gorilla does not, and closes later with `received malformed payload`.
        let mut reader = FrameReader::new(4096);
        assert_eq!(
            first_event(&mut reader, frame(true, 0x1, b"{\"cid\":\"\xff\"}")),
            Err(NOT_UTF8)
        );
        // Also when the bytes are split across fragments, and fine when they join up.
        let mut bytes = frame(false, 0x1, b"\xe2\x82");
        bytes.extend(frame(true, 0x0, b"\xac"));
        assert_eq!(
            first_event(&mut reader, bytes),
            Ok(Some("Text:\u{20ac}".to_owned()))
        );
        let mut bytes = frame(false, 0x1, b"\xe2\x82");
        bytes.extend(frame(true, 0x0, b"\xff"));
        assert_eq!(
            first_event(&mut FrameReader::new(4096), bytes),
            Err(NOT_UTF8)
        );
    }

    #[test]
    fn a_close_reason_that_is_not_utf8_closes_with_1007() {
        let mut reader = FrameReader::new(4096);
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.push(0xff);
        assert_eq!(
            first_event(&mut reader, frame(true, 0x8, &payload)),
            Err(NOT_UTF8)
        );
        let mut payload = 1000u16.to_be_bytes().to_vec();
        payload.extend_from_slice("bye é".as_bytes());
        assert_eq!(
            first_event(&mut reader, frame(true, 0x8, &payload)),
            Ok(Some("Close { code: Some(1000) }".to_owned()))
        );
    }

    #[test]
    fn messages_over_the_limit_are_refused_from_the_header() {
        let mut reader = FrameReader::new(16);
        assert_eq!(
            first_event(&mut reader, frame(true, 0x1, &[b'a'; 16])),
            Ok(Some(format!("Text:{}", "a".repeat(16))))
        );
        assert_eq!(
            first_event(&mut reader, frame(true, 0x1, &[b'a'; 17])),
            Err(TOO_BIG)
        );
        // The limit is on the whole message, not on each fragment.
        let mut bytes = frame(false, 0x1, &[b'a'; 10]);
        bytes.extend(frame(true, 0x0, &[b'a'; 7]));
        assert_eq!(first_event(&mut reader, bytes), Err(TOO_BIG));
    }
}

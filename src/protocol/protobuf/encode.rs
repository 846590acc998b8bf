//! Encoding: server replies and events (the hot path), and client requests
//! (for tools and tests).
//!
//! Replies and events are written straight into `out` by a small hand-written
//! encoder, from the borrowed model types: going through the prost structs
//! would copy every id, username and status into fresh `String`s once per
//! snapshot or event. The output is what Go's `proto.Marshal` emits (fields in
//! number order, proto3 defaults omitted, set submessages always emitted), and
//! the tests check it against both the reference bytes and prost's encoding
//! of the [`schema`](super::schema) structs.
//!
//! Requests are rare and only built by tools, so they simply go through the
//! prost structs.

use prost::Message as _;

use super::schema::{self, Body, Envelope};
use crate::protocol::{Presence, Reply, ReplyBody, Request, RequestBody, StatusPresenceEvent};

/// Envelope field numbers of the members Herald sends.
mod field {
    pub const CID: u32 = 1;
    pub const ERROR: u32 = 11;
    pub const NOTIFICATIONS: u32 = 23;
    pub const STATUS: u32 = 25;
    pub const STATUS_PRESENCE_EVENT: u32 = 27;
    pub const PONG: u32 = 33;
}

/// Wire type of varint fields (`int32`).
const VARINT: u32 = 0;
/// Wire type of strings and submessages.
const LEN: u32 = 2;

/// The canonical text form of a UUID is always this long.
const UUID_TEXT_LEN: usize = 36;

/// Appends the encoding of `reply`: the echoed cid, then the member.
pub fn encode_reply(reply: &Reply<'_>, out: &mut Vec<u8>) {
    put_string(field::CID, reply.cid, out);
    match reply.body {
        ReplyBody::Ack => {}
        ReplyBody::Pong => put_header(field::PONG, 0, out),
        ReplyBody::Status(presences) => {
            // Status { repeated UserPresence presences = 1; }
            let len = presences
                .iter()
                .map(|p| message_len(1, presence_len(p)))
                .sum();
            out.reserve(message_len(field::STATUS, len));
            put_header(field::STATUS, len, out);
            for presence in presences {
                put_presence(1, presence, out);
            }
        }
        ReplyBody::Error { code, message } => {
            // Error { int32 code = 1; string message = 2; } (context never set)
            let code = code as i32;
            put_header(
                field::ERROR,
                int32_len(1, code) + string_len(2, message),
                out,
            );
            put_int32(1, code, out);
            put_string(2, message, out);
        }
        ReplyBody::Notification(notification) => {
            // Notifications { repeated Notification notifications = 1; }
            // Notification { id = 1; subject = 2; content = 3; int32 code = 4;
            //   Timestamp create_time = 6 { int64 seconds = 1; } }
            let seconds = notification.create_time as u64;
            let time_len = if seconds == 0 {
                0
            } else {
                1 + varint_len(seconds)
            };
            let len = string_len(1, &notification.id)
                + string_len(2, notification.subject)
                + string_len(3, notification.content)
                + int32_len(4, notification.code)
                + message_len(6, time_len);
            put_header(field::NOTIFICATIONS, message_len(1, len), out);
            put_header(1, len, out);
            put_string(1, &notification.id, out);
            put_string(2, notification.subject, out);
            put_string(3, notification.content, out);
            put_int32(4, notification.code, out);
            put_header(6, time_len, out);
            if seconds != 0 {
                put_varint(u64::from(1u32 << 3 | VARINT), out);
                put_varint(seconds, out);
            }
        }
    }
}

/// Appends the encoding of `event`: an envelope without cid carrying
/// `StatusPresenceEvent { repeated joins = 2; repeated leaves = 3; }`.
pub fn encode_event(event: &StatusPresenceEvent, out: &mut Vec<u8>) {
    let joins = event.joins.as_ref();
    let leaves = event.leaves.as_ref();
    let len = joins.map_or(0, |p| message_len(2, presence_len(p)))
        + leaves.map_or(0, |p| message_len(3, presence_len(p)));
    out.reserve(message_len(field::STATUS_PRESENCE_EVENT, len));
    put_header(field::STATUS_PRESENCE_EVENT, len, out);
    if let Some(presence) = joins {
        put_presence(2, presence, out);
    }
    if let Some(presence) = leaves {
        put_presence(3, presence, out);
    }
}

/// Appends the encoding of `request`, as a client would send it.
///
/// [`RequestBody::Unrecognized`] is sent as an empty `channel_join` (any
/// member Herald does not serve would do); [`RequestBody::Missing`] as an
/// envelope with no member.
pub fn encode_request(request: &Request, out: &mut Vec<u8>) {
    let message = match &request.body {
        RequestBody::StatusFollow {
            user_ids,
            usernames,
        } => Some(Body::StatusFollow(schema::StatusFollow {
            user_ids: user_ids.clone(),
            usernames: usernames.clone(),
        })),
        RequestBody::StatusUnfollow { user_ids } => {
            Some(Body::StatusUnfollow(schema::StatusUnfollow {
                user_ids: user_ids.clone(),
            }))
        }
        RequestBody::StatusUpdate { status } => Some(Body::StatusUpdate(schema::StatusUpdate {
            status: status.as_ref().map(|value| schema::StringValue {
                value: value.clone(),
            }),
        })),
        RequestBody::Ping => Some(Body::Ping(schema::Ping {})),
        RequestBody::Pong => Some(Body::Pong(schema::Pong {})),
        RequestBody::Unrecognized => Some(Body::ChannelJoin(schema::Unserved {})),
        RequestBody::Missing => None,
    };
    let envelope = Envelope {
        cid: request.cid.clone(),
        message,
    };
    // `encode` only fails when the buffer cannot grow; a Vec always can.
    let encoded = envelope.encode(out);
    debug_assert!(encoded.is_ok());
}

/// Writes `presence` as the submessage field `number`:
/// `UserPresence { user_id = 1; session_id = 2; username = 3; status = 5; }`.
/// `persistence` (4) is always false for status presences, so like any
/// proto3 default it is not written. The status wrapper is always written,
/// also for `""` (`2a 00`).
fn put_presence(number: u32, presence: &Presence, out: &mut Vec<u8>) {
    put_header(number, presence_len(presence), out);
    let mut id = [0u8; UUID_TEXT_LEN];
    put_string(1, presence.user_id.encode(&mut id), out);
    put_string(2, presence.session_id.encode(&mut id), out);
    put_string(3, &presence.username, out);
    put_header(5, string_len(1, &presence.status), out);
    put_string(1, &presence.status, out);
}

/// The body length of `presence` as [`put_presence`] writes it.
fn presence_len(presence: &Presence) -> usize {
    2 * message_len(1, UUID_TEXT_LEN)
        + string_len(3, &presence.username)
        + message_len(5, string_len(1, &presence.status))
}

/// Writes a string field, or nothing for `""` (the proto3 default).
fn put_string(number: u32, value: &str, out: &mut Vec<u8>) {
    if !value.is_empty() {
        put_header(number, value.len(), out);
        out.extend_from_slice(value.as_bytes());
    }
}

fn string_len(number: u32, value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        message_len(number, value.len())
    }
}

/// Writes an `int32` field, or nothing for 0. Negative values take ten
/// bytes (sign-extended to 64 bits), as in every protobuf implementation.
fn put_int32(number: u32, value: i32, out: &mut Vec<u8>) {
    if value != 0 {
        put_varint(u64::from(number << 3 | VARINT), out);
        put_varint(i64::from(value) as u64, out);
    }
}

fn int32_len(number: u32, value: i32) -> usize {
    if value == 0 {
        0
    } else {
        varint_len(u64::from(number << 3 | VARINT)) + varint_len(i64::from(value) as u64)
    }
}

/// Writes the key and length of a length-delimited field whose body is `len`
/// bytes; the caller writes the body. Always written, even for `len == 0`:
/// that is how a set-but-empty submessage is encoded.
fn put_header(number: u32, len: usize, out: &mut Vec<u8>) {
    put_varint(u64::from(number << 3 | LEN), out);
    put_varint(len as u64, out);
}

/// Total length of a length-delimited field with a `len`-byte body.
fn message_len(number: u32, len: usize) -> usize {
    varint_len(u64::from(number << 3 | LEN)) + varint_len(len as u64) + len
}

fn put_varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn varint_len(value: u64) -> usize {
    // One byte per started group of 7 bits; 0 still takes one byte.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ids::{SessionId, UserId};
    use crate::protocol::ErrorCode;

    fn reply_bytes(cid: &str, body: ReplyBody<'_>) -> Vec<u8> {
        let mut out = Vec::new();
        encode_reply(&Reply { cid, body }, &mut out);
        out
    }

    fn presence(status: &str) -> Presence {
        Presence {
            user_id: UserId::parse("4c2ae592-b2a7-4b5f-9d1b-0a1b2c3d4e5f").expect("uuid"),
            session_id: SessionId::parse("a3d1b2c0-0000-4000-8000-000000000001").expect("uuid"),
            username: Arc::from("alice"),
            status: Arc::from(status),
        }
    }

    /// `UserPresence` bytes for [`presence`], spelled out by hand.
    fn presence_bytes(status: &[u8]) -> Vec<u8> {
        let mut out = vec![0x0a, 36];
        out.extend_from_slice(b"4c2ae592-b2a7-4b5f-9d1b-0a1b2c3d4e5f");
        out.extend([0x12, 36]);
        out.extend_from_slice(b"a3d1b2c0-0000-4000-8000-000000000001");
        out.extend([0x1a, 5]);
        out.extend_from_slice(b"alice");
        out.extend(status);
        out
    }

    #[test]
    fn an_ack_is_only_the_cid() {
        assert_eq!(reply_bytes("3", ReplyBody::Ack), [0x0a, 0x01, b'3']);
    }

    #[test]
    fn an_ack_without_cid_is_empty() {
        assert_eq!(reply_bytes("", ReplyBody::Ack), [0u8; 0]);
    }

    #[test]
    fn an_empty_status_snapshot_is_still_emitted() {
        assert_eq!(
            reply_bytes("1", ReplyBody::Status(&[])),
            [0x0a, 0x01, b'1', 0xca, 0x01, 0x00]
        );
    }

    #[test]
    fn pong_is_an_empty_message() {
        assert_eq!(
            reply_bytes("7", ReplyBody::Pong),
            [0x0a, 0x01, b'7', 0x8a, 0x02, 0x00]
        );
    }

    #[test]
    fn bad_input_error_carries_code_and_message() {
        let mut expected = vec![0x0a, 0x01, b'4', 0x5a, 0x1b, 0x08, 0x03, 0x12, 0x17];
        expected.extend_from_slice(b"Invalid user identifier");
        let body = ReplyBody::Error {
            code: ErrorCode::BadInput,
            message: "Invalid user identifier",
        };
        assert_eq!(reply_bytes("4", body), expected);
    }

    #[test]
    fn runtime_exception_error_omits_code_zero() {
        let mut expected = vec![0x0a, 0x01, b'5', 0x5a, 0x17, 0x12, 0x15];
        expected.extend_from_slice(b"Could not check users");
        let body = ReplyBody::Error {
            code: ErrorCode::RuntimeException,
            message: "Could not check users",
        };
        assert_eq!(reply_bytes("5", body), expected);
    }

    #[test]
    fn a_status_snapshot_lists_each_presence_as_field_one() {
        let list = [presence("hi")];
        let inner = presence_bytes(&[0x2a, 0x04, 0x0a, 0x02, b'h', b'i']);
        let mut expected = vec![0x0a, 0x01, b'1', 0xca, 0x01, inner.len() as u8 + 2];
        expected.extend([0x0a, inner.len() as u8]);
        expected.extend(inner);
        assert_eq!(reply_bytes("1", ReplyBody::Status(&list)), expected);
    }

    #[test]
    fn an_update_event_has_a_join_and_a_leave_and_no_cid() {
        let event = StatusPresenceEvent {
            joins: Some(presence("hi")),
            leaves: Some(presence("")),
        };
        let join = presence_bytes(&[0x2a, 0x04, 0x0a, 0x02, b'h', b'i']);
        let leave = presence_bytes(&[0x2a, 0x00]);
        let body_len = join.len() + 2 + leave.len() + 2;
        // 0xda 0x01: field 27; the body is over 127 bytes, so a 2-byte length.
        let mut expected = vec![
            0xda,
            0x01,
            (body_len as u8 & 0x7f) | 0x80,
            (body_len >> 7) as u8,
        ];
        expected.extend([0x12, join.len() as u8]);
        expected.extend(join);
        expected.extend([0x1a, leave.len() as u8]);
        expected.extend(leave);
        let mut out = Vec::new();
        encode_event(&event, &mut out);
        assert_eq!(out, expected);
    }

    #[test]
    fn a_join_only_event_has_no_leaves_field() {
        let event = StatusPresenceEvent {
            joins: Some(presence("")),
            leaves: None,
        };
        let join = presence_bytes(&[0x2a, 0x00]);
        let mut expected = vec![0xda, 0x01, join.len() as u8 + 2, 0x12, join.len() as u8];
        expected.extend(join);
        let mut out = Vec::new();
        encode_event(&event, &mut out);
        assert_eq!(out, expected);
    }

    #[test]
    fn an_empty_status_is_an_empty_wrapper_not_an_absent_one() {
        let mut out = Vec::new();
        put_presence(1, &presence(""), &mut out);
        assert!(out.ends_with(b"alice\x2a\x00"), "{out:02x?}");
    }

    #[test]
    fn an_empty_username_is_omitted() {
        let mut nameless = presence("x");
        nameless.username = Arc::from("");
        let mut out = Vec::new();
        put_presence(1, &nameless, &mut out);
        assert_eq!(out.len(), message_len(1, presence_len(&nameless)));
        assert!(!out.windows(2).any(|w| w == [0x1a, 0x00]));
    }

    #[test]
    fn encoding_appends_to_what_is_already_in_the_buffer() {
        let mut out = vec![0xee];
        encode_reply(
            &Reply {
                cid: "3",
                body: ReplyBody::Ack,
            },
            &mut out,
        );
        assert_eq!(out, [0xee, 0x0a, 0x01, b'3']);
    }

    #[test]
    fn requests_encode_like_clients_send_them() {
        let mut out = Vec::new();
        let update = |status: Option<&str>| Request {
            cid: "3".into(),
            body: RequestBody::StatusUpdate {
                status: status.map(str::to_owned),
            },
        };
        encode_request(&update(Some("")), &mut out);
        assert_eq!(out, [0x0a, 0x01, b'3', 0xea, 0x01, 0x02, 0x0a, 0x00]);
        out.clear();
        encode_request(&update(None), &mut out);
        assert_eq!(out, [0x0a, 0x01, b'3', 0xea, 0x01, 0x00]);
        out.clear();
        let ping = Request {
            cid: String::new(),
            body: RequestBody::Ping,
        };
        encode_request(&ping, &mut out);
        assert_eq!(out, [0x82, 0x02, 0x00]);
    }

    #[test]
    fn varint_lengths_match_the_encoder() {
        for value in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let mut out = Vec::new();
            put_varint(value, &mut out);
            assert_eq!(varint_len(value), out.len(), "value {value}");
        }
        let mut out = Vec::new();
        put_int32(1, -1, &mut out);
        assert_eq!(out.len(), 11);
        assert_eq!(int32_len(1, -1), 11);
    }
}

//! Decoding: client requests (what the server reads) and, for tools and
//! tests, server messages.
//!
//! prost does the wire work; this file maps the schema onto the protocol
//! model. Runtime validation (ids, lengths) happens later and is the same as
//! for JSON; here only "is this a well-formed envelope, and which member does
//! it carry" is decided.

use std::sync::Arc;

use prost::Message as _;

use super::schema::{Body, Envelope, UserPresence};
use crate::ids::{SessionId, UserId};
use crate::protocol::message::{Presence, ServerBody, ServerMessage};
use crate::protocol::{Malformed, Request, RequestBody};

/// Decodes one client envelope.
///
/// Follows proto3 as Go's `proto.Unmarshal` does: unknown field numbers are
/// skipped, and if several oneof members are present the last one wins
/// (JSON rejects that; the binary format has no way to). An empty payload is
/// a valid envelope with no message: [`RequestBody::Missing`].
///
/// One difference from Go: a known field with the wrong wire type is an error
/// here (prost), where Go skips it as unknown. No client sends such bytes.
pub fn decode(payload: &mut [u8]) -> Result<Request, Malformed> {
    let envelope = parse(payload)?;
    let body = match envelope.message {
        None => RequestBody::Missing,
        Some(Body::StatusFollow(follow)) => RequestBody::StatusFollow {
            user_ids: follow.user_ids,
            usernames: follow.usernames,
        },
        Some(Body::StatusUnfollow(unfollow)) => RequestBody::StatusUnfollow {
            user_ids: unfollow.user_ids,
        },
        Some(Body::StatusUpdate(update)) => RequestBody::StatusUpdate {
            status: update.status.map(|wrapper| wrapper.value),
        },
        Some(Body::Ping(_)) => RequestBody::Ping,
        Some(Body::Pong(_)) => RequestBody::Pong,
        // Server → client members (status, error, ...) and everything Herald
        // does not serve: Nakama answers both with UNRECOGNIZED_PAYLOAD.
        Some(_) => RequestBody::Unrecognized,
    };
    Ok(Request {
        cid: envelope.cid,
        body,
    })
}

/// Decodes one server envelope (for tools and tests; the server never does).
///
/// Strict about what Herald promises: only the members Herald sends are
/// accepted, presences must carry UUID ids and a status wrapper. The
/// `persistence` flag (always false from Herald) is not modelled and is
/// ignored.
pub fn decode_server_message(payload: &mut [u8]) -> Result<ServerMessage, Malformed> {
    let envelope = parse(payload)?;
    let body = match envelope.message {
        None => ServerBody::Ack,
        Some(Body::Pong(_)) => ServerBody::Pong,
        Some(Body::Status(status)) => ServerBody::Status(presences(status.presences)?),
        Some(Body::Error(error)) => ServerBody::Error {
            code: error.code,
            message: error.message,
        },
        Some(Body::StatusPresenceEvent(event)) => ServerBody::Event {
            joins: presences(event.joins)?,
            leaves: presences(event.leaves)?,
        },
        Some(_) => return Err(Malformed("not a message the server sends")),
    };
    Ok(ServerMessage {
        cid: envelope.cid,
        body,
    })
}

fn parse(payload: &[u8]) -> Result<Envelope, Malformed> {
    Envelope::decode(payload).map_err(|_| Malformed("undecodable protobuf envelope"))
}

fn presences(list: Vec<UserPresence>) -> Result<Vec<Presence>, Malformed> {
    list.into_iter().map(presence).collect()
}

fn presence(wire: UserPresence) -> Result<Presence, Malformed> {
    let status = wire
        .status
        .ok_or(Malformed("presence without a status wrapper"))?;
    Ok(Presence {
        user_id: UserId::parse(&wire.user_id).ok_or(Malformed("presence user_id is not a UUID"))?,
        session_id: SessionId::parse(&wire.session_id)
            .ok_or(Malformed("presence session_id is not a UUID"))?,
        username: Arc::from(wire.username),
        status: Arc::from(status.value),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: &str = "4c2ae592-b2a7-4b5f-9d1b-0a1b2c3d4e5f";

    /// Builds a length-delimited field: key varint, length, payload. Keys and
    /// lengths here stay below 2^14, so two varint bytes at most.
    fn field(number: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        varint(u64::from(number << 3 | 2), &mut out);
        varint(payload.len() as u64, &mut out);
        out.extend_from_slice(payload);
        out
    }

    fn varint(mut value: u64, out: &mut Vec<u8>) {
        while value >= 0x80 {
            out.push(value as u8 | 0x80);
            value >>= 7;
        }
        out.push(value as u8);
    }

    fn envelope(cid: &str, member: Option<(u32, &[u8])>) -> Vec<u8> {
        let mut out = if cid.is_empty() {
            Vec::new()
        } else {
            field(1, cid.as_bytes())
        };
        if let Some((number, payload)) = member {
            out.extend(field(number, payload));
        }
        out
    }

    fn request(mut bytes: Vec<u8>) -> Request {
        decode(&mut bytes).expect("decodes")
    }

    #[test]
    fn status_follow_keeps_ids_and_usernames_as_sent() {
        let mut inner = field(1, ALICE.as_bytes());
        inner.extend(field(1, b"not-a-uuid"));
        inner.extend(field(2, b"bob"));
        let decoded = request(envelope("2", Some((26, &inner))));
        assert_eq!(
            decoded,
            Request {
                cid: "2".into(),
                body: RequestBody::StatusFollow {
                    user_ids: vec![ALICE.into(), "not-a-uuid".into()],
                    usernames: vec!["bob".into()],
                },
            }
        );
    }

    #[test]
    fn status_unfollow_keeps_ids_as_sent() {
        let inner = field(1, ALICE.as_bytes());
        let decoded = request(envelope("6", Some((28, &inner))));
        assert_eq!(
            decoded.body,
            RequestBody::StatusUnfollow {
                user_ids: vec![ALICE.into()]
            }
        );
    }

    #[test]
    fn status_update_with_a_value_is_that_status() {
        let inner = field(1, &field(1, b"online"));
        let decoded = request(envelope("3", Some((29, &inner))));
        assert_eq!(
            decoded.body,
            RequestBody::StatusUpdate {
                status: Some("online".into())
            }
        );
    }

    #[test]
    fn status_update_with_an_empty_wrapper_is_an_empty_status() {
        // ea 01 02 0a 00: status_update { status: StringValue {} }
        let decoded = request(vec![0xea, 0x01, 0x02, 0x0a, 0x00]);
        assert_eq!(
            decoded.body,
            RequestBody::StatusUpdate {
                status: Some(String::new())
            }
        );
    }

    #[test]
    fn status_update_without_a_wrapper_is_no_status() {
        let decoded = request(envelope("4", Some((29, &[]))));
        assert_eq!(decoded.body, RequestBody::StatusUpdate { status: None });
    }

    #[test]
    fn ping_and_pong_are_recognised() {
        assert_eq!(
            request(envelope("1", Some((32, &[])))),
            Request {
                cid: "1".into(),
                body: RequestBody::Ping
            }
        );
        assert_eq!(
            request(envelope("", Some((33, &[])))).body,
            RequestBody::Pong
        );
    }

    #[test]
    fn members_herald_does_not_serve_are_unrecognized() {
        // channel_join, error, rpc, status, status_presence_event, party_update.
        for number in [3, 11, 24, 25, 27, 51] {
            let decoded = request(envelope("9", Some((number, &[]))));
            assert_eq!(decoded.body, RequestBody::Unrecognized, "field {number}");
            assert_eq!(decoded.cid, "9");
        }
    }

    #[test]
    fn every_unserved_member_is_unrecognized_not_missing() {
        for number in (2..=51).filter(|n| ![26, 28, 29, 32, 33].contains(n)) {
            let decoded = request(envelope("", Some((number, &[]))));
            assert_eq!(decoded.body, RequestBody::Unrecognized, "field {number}");
        }
    }

    #[test]
    fn an_unserved_member_with_real_content_is_still_unrecognized() {
        // channel_join { target: "room", type: 1 }
        let mut inner = field(1, b"room");
        inner.extend([0x10, 0x01]);
        let decoded = request(envelope("5", Some((3, &inner))));
        assert_eq!(decoded.body, RequestBody::Unrecognized);
    }

    #[test]
    fn an_envelope_without_a_member_is_missing() {
        assert_eq!(request(Vec::new()).body, RequestBody::Missing);
        assert_eq!(
            request(envelope("1", None)),
            Request {
                cid: "1".into(),
                body: RequestBody::Missing
            }
        );
    }

    #[test]
    fn an_empty_cid_on_the_wire_is_no_cid() {
        // 0a 00: cid "" sent explicitly.
        let mut bytes = vec![0x0a, 0x00];
        bytes.extend(field(32, &[]));
        assert_eq!(
            request(bytes),
            Request {
                cid: String::new(),
                body: RequestBody::Ping
            }
        );
    }

    #[test]
    fn unknown_fields_are_skipped() {
        // Field 60 (varint), field 52 (bytes), field 15 inside ping (fixed32).
        let mut bytes = vec![0xe0, 0x03, 0x07];
        bytes.extend(field(52, b"future"));
        bytes.extend(field(32, &[0x7d, 1, 2, 3, 4]));
        bytes.extend(field(1, b"8"));
        assert_eq!(
            request(bytes),
            Request {
                cid: "8".into(),
                body: RequestBody::Ping
            }
        );
        // An unknown number alone leaves the envelope without a member.
        assert_eq!(request(field(52, &[])).body, RequestBody::Missing);
    }

    #[test]
    fn the_last_oneof_member_wins_as_in_go() {
        let mut bytes = field(32, &[]);
        bytes.extend(field(29, &[]));
        assert_eq!(
            request(bytes).body,
            RequestBody::StatusUpdate { status: None }
        );
    }

    #[test]
    fn undecodable_bytes_are_malformed() {
        let cases: &[(&str, Vec<u8>)] = &[
            ("unterminated varint key", vec![0xff]),
            ("field number zero", vec![0x00, 0x00]),
            ("wire type 7", vec![0x0f]),
            ("length past the end", vec![0x0a, 0x05, b'1']),
            ("cid not UTF-8", vec![0x0a, 0x01, 0xff]),
            ("cid as a varint", vec![0x08, 0x01]),
            ("status_follow as a varint", vec![0xd0, 0x01, 0x01]),
            ("user id not UTF-8", field(26, &field(1, &[0xc3, 0x28]))),
            ("truncated submessage", field(29, &[0x0a, 0x04, b'a'])),
            ("garbage inside an unserved member", field(3, &[0xff, 0xff])),
            ("unterminated group", vec![0xe3, 0x03]),
        ];
        for (what, bytes) in cases {
            let mut bytes = bytes.clone();
            assert!(decode(&mut bytes).is_err(), "{what}");
        }
    }

    #[test]
    fn server_messages_outside_the_herald_set_are_rejected_by_the_tool_decoder() {
        let mut ping = envelope("1", Some((32, &[])));
        assert!(decode_server_message(&mut ping).is_err());
        let mut follow = envelope("1", Some((26, &[])));
        assert!(decode_server_message(&mut follow).is_err());
    }

    #[test]
    fn a_presence_without_status_is_rejected_by_the_tool_decoder() {
        let mut presence = field(1, ALICE.as_bytes());
        presence.extend(field(2, ALICE.as_bytes()));
        let mut bytes = field(25, &field(1, &presence));
        assert!(decode_server_message(&mut bytes).is_err());
        presence.extend(field(5, &[]));
        let mut bytes = field(25, &field(1, &presence));
        let decoded = decode_server_message(&mut bytes).expect("decodes");
        let ServerBody::Status(list) = decoded.body else {
            panic!("not a status: {decoded:?}");
        };
        assert_eq!(&*list[0].status, "");
        assert_eq!(&*list[0].username, "");
    }
}

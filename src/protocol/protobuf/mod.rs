//! The protobuf codec (`format=protobuf`): one `nakama.realtime.Envelope`
//! per binary websocket frame, no framing of its own (reference §4.3, §11).
//!
//! * `schema`: the prost structs, with Nakama's field numbers.
//! * `decode`: envelope → [`Request`] (and → [`ServerMessage`] for tools).
//! * `encode`: [`Reply`] and [`StatusPresenceEvent`] → bytes, byte for byte
//!   what Go's `proto.Marshal` emits; [`Request`] → bytes for tools.
//!
//! [`Request`]: crate::protocol::Request
//! [`Reply`]: crate::protocol::Reply
//! [`StatusPresenceEvent`]: crate::protocol::StatusPresenceEvent
//! [`ServerMessage`]: crate::protocol::message::ServerMessage

mod decode;
mod encode;
mod schema;

pub use decode::{decode, decode_server_message};
pub use encode::{encode_event, encode_reply, encode_request};

#[cfg(test)]
mod tests {
    //! Property tests across the whole codec: round trips through the public
    //! API, and the hand-written encoder against prost's encoding of the
    //! schema structs.

    use std::sync::Arc;

    use proptest::prelude::*;
    use prost::Message as _;
    use uuid::Uuid;

    use super::schema::{self, Body, Envelope};
    use super::*;
    use crate::ids::{SessionId, UserId};
    use crate::protocol::message::{ServerBody, ServerMessage};
    use crate::protocol::{
        ErrorCode, Presence, Reply, ReplyBody, Request, RequestBody, StatusPresenceEvent,
    };

    fn any_text() -> impl Strategy<Value = String> {
        // Mostly short, sometimes empty, any Unicode.
        prop_oneof![Just(String::new()), ".{0,12}", ".{100,300}"]
    }

    fn any_presence() -> impl Strategy<Value = Presence> {
        (any::<u128>(), any::<u128>(), any_text(), any_text()).prop_map(
            |(user, session, username, status)| Presence {
                user_id: UserId(Uuid::from_u128(user)),
                session_id: SessionId(Uuid::from_u128(session)),
                username: Arc::from(username),
                status: Arc::from(status),
            },
        )
    }

    fn any_request() -> impl Strategy<Value = Request> {
        let texts = || prop::collection::vec(any_text(), 0..4);
        let body = prop_oneof![
            (texts(), texts()).prop_map(|(user_ids, usernames)| RequestBody::StatusFollow {
                user_ids,
                usernames
            }),
            texts().prop_map(|user_ids| RequestBody::StatusUnfollow { user_ids }),
            prop::option::of(any_text()).prop_map(|status| RequestBody::StatusUpdate { status }),
            Just(RequestBody::Ping),
            Just(RequestBody::Pong),
            Just(RequestBody::Unrecognized),
            Just(RequestBody::Missing),
        ];
        (any_text(), body).prop_map(|(cid, body)| Request { cid, body })
    }

    fn any_error_code() -> impl Strategy<Value = ErrorCode> {
        prop_oneof![
            Just(ErrorCode::RuntimeException),
            Just(ErrorCode::UnrecognizedPayload),
            Just(ErrorCode::MissingPayload),
            Just(ErrorCode::BadInput),
        ]
    }

    /// The owned parts of a [`Reply`], which borrows.
    #[derive(Debug, Clone)]
    enum OwnedReply {
        Ack,
        Pong,
        Status(Vec<Presence>),
        Error(ErrorCode, String),
    }

    fn any_reply() -> impl Strategy<Value = (String, OwnedReply)> {
        let body = prop_oneof![
            Just(OwnedReply::Ack),
            Just(OwnedReply::Pong),
            prop::collection::vec(any_presence(), 0..4).prop_map(OwnedReply::Status),
            (any_error_code(), any_text()).prop_map(|(code, text)| OwnedReply::Error(code, text)),
        ];
        (any_text(), body)
    }

    fn any_event() -> impl Strategy<Value = StatusPresenceEvent> {
        (
            prop::option::of(any_presence()),
            prop::option::of(any_presence()),
        )
            .prop_map(|(joins, leaves)| StatusPresenceEvent { joins, leaves })
    }

    fn borrow<'a>(cid: &'a str, body: &'a OwnedReply) -> Reply<'a> {
        let body = match body {
            OwnedReply::Ack => ReplyBody::Ack,
            OwnedReply::Pong => ReplyBody::Pong,
            OwnedReply::Status(list) => ReplyBody::Status(list),
            OwnedReply::Error(code, message) => ReplyBody::Error {
                code: *code,
                message,
            },
        };
        Reply { cid, body }
    }

    fn wire_presence(presence: &Presence) -> schema::UserPresence {
        schema::UserPresence {
            user_id: presence.user_id.to_string(),
            session_id: presence.session_id.to_string(),
            username: presence.username.to_string(),
            persistence: false,
            status: Some(schema::StringValue {
                value: presence.status.to_string(),
            }),
        }
    }

    /// The same reply as a prost envelope, the reference for the encoder.
    fn reply_envelope(reply: &Reply<'_>) -> Envelope {
        let message = match reply.body {
            ReplyBody::Ack => None,
            ReplyBody::Pong => Some(Body::Pong(schema::Pong {})),
            ReplyBody::Status(list) => Some(Body::Status(schema::Status {
                presences: list.iter().map(wire_presence).collect(),
            })),
            ReplyBody::Error { code, message } => Some(Body::Error(schema::Error {
                code: code as i32,
                message: message.to_owned(),
                context: Default::default(),
            })),
            ReplyBody::Notification(_) => {
                unreachable!("the property tests generate no notifications")
            }
        };
        Envelope {
            cid: reply.cid.to_owned(),
            message,
        }
    }

    fn event_envelope(event: &StatusPresenceEvent) -> Envelope {
        Envelope {
            cid: String::new(),
            message: Some(Body::StatusPresenceEvent(schema::StatusPresenceEvent {
                joins: event.joins.iter().map(wire_presence).collect(),
                leaves: event.leaves.iter().map(wire_presence).collect(),
            })),
        }
    }

    /// Test-only prost mirror of `Notifications` (the schema treats it as unserved).
    #[derive(Clone, PartialEq, prost::Message)]
    struct WireNotifications {
        #[prost(message, repeated, tag = "1")]
        notifications: Vec<WireNotification>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct WireNotification {
        #[prost(string, tag = "1")]
        id: String,
        #[prost(string, tag = "2")]
        subject: String,
        #[prost(string, tag = "3")]
        content: String,
        #[prost(int32, tag = "4")]
        code: i32,
        #[prost(message, optional, tag = "6")]
        create_time: Option<WireTimestamp>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct WireTimestamp {
        #[prost(int64, tag = "1")]
        seconds: i64,
    }

    #[test]
    fn the_single_socket_notification_is_envelope_field_23() {
        use prost::Message as _;
        let notice = crate::protocol::Notification::single_socket(1_795_655_523);
        let mut bytes = Vec::new();
        encode_reply(
            &Reply {
                cid: "",
                body: ReplyBody::Notification(&notice),
            },
            &mut bytes,
        );
        assert_eq!(&bytes[..2], &[0xba, 0x01], "field 23, length-delimited");
        let mut body = &bytes[2..];
        let len = prost::encoding::decode_varint(&mut body).expect("length");
        assert_eq!(len as usize, body.len());
        let decoded = WireNotifications::decode(body).expect("decodes");
        assert_eq!(
            decoded.notifications,
            vec![WireNotification {
                id: notice.id.clone(),
                subject: "single_socket".into(),
                content: "{}".into(),
                code: -7,
                create_time: Some(WireTimestamp {
                    seconds: 1_795_655_523
                }),
            }]
        );
    }

    proptest! {
        #[test]
        fn requests_survive_a_round_trip(request in any_request()) {
            let mut bytes = Vec::new();
            encode_request(&request, &mut bytes);
            prop_assert_eq!(decode(&mut bytes), Ok(request));
        }

        #[test]
        fn replies_survive_a_round_trip((cid, body) in any_reply()) {
            let reply = borrow(&cid, &body);
            let mut bytes = Vec::new();
            encode_reply(&reply, &mut bytes);
            let expected = match body {
                OwnedReply::Ack => ServerBody::Ack,
                OwnedReply::Pong => ServerBody::Pong,
                OwnedReply::Status(list) => ServerBody::Status(list),
                OwnedReply::Error(code, message) => ServerBody::Error {
                    code: code as i32,
                    message,
                },
            };
            prop_assert_eq!(
                decode_server_message(&mut bytes),
                Ok(ServerMessage { cid, body: expected })
            );
        }

        #[test]
        fn events_survive_a_round_trip(event in any_event()) {
            let mut bytes = Vec::new();
            encode_event(&event, &mut bytes);
            let expected = ServerMessage {
                cid: String::new(),
                body: ServerBody::Event {
                    joins: event.joins.into_iter().collect(),
                    leaves: event.leaves.into_iter().collect(),
                },
            };
            prop_assert_eq!(decode_server_message(&mut bytes), Ok(expected));
        }

        #[test]
        fn reply_bytes_equal_prost_encoding((cid, body) in any_reply()) {
            let reply = borrow(&cid, &body);
            let mut bytes = Vec::new();
            encode_reply(&reply, &mut bytes);
            prop_assert_eq!(bytes, reply_envelope(&reply).encode_to_vec());
        }

        #[test]
        fn event_bytes_equal_prost_encoding(event in any_event()) {
            let mut bytes = Vec::new();
            encode_event(&event, &mut bytes);
            prop_assert_eq!(bytes, event_envelope(&event).encode_to_vec());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&mut bytes.clone());
            let _ = decode_server_message(&mut bytes.clone());
        }

        #[test]
        fn truncated_or_corrupted_requests_never_panic(
            request in any_request(),
            cut in any::<prop::sample::Index>(),
            flip in any::<(prop::sample::Index, u8)>(),
        ) {
            let mut bytes = Vec::new();
            encode_request(&request, &mut bytes);
            if !bytes.is_empty() {
                let (at, mask) = flip;
                let at = at.index(bytes.len());
                bytes[at] ^= mask;
                bytes.truncate(cut.index(bytes.len() + 1));
            }
            let _ = decode(&mut bytes);
        }
    }
}

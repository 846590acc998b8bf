//! The JSON codec: Nakama's realtime envelopes in text frames, byte-compatible
//! with Go protojson as Nakama configures it (reference §3).
//!
//! * [`decode`]: client → server, strict like protojson `Unmarshal`
//!   (unknown or duplicate fields, wrong types and two oneof members are
//!   [`Malformed`](crate::protocol::Malformed)); parsed in place with simd-json.
//! * [`encode_reply`], [`encode_event`]: server → client, compact protojson
//!   `Marshal` output with proto names and unpopulated fields omitted.
//! * [`encode_request`], [`decode_server_message`]: the other direction, for
//!   tools (the loadgen's `--strict` mode) and tests.
//!
//! Files: `schema.rs` (field names and numbers), `tape.rs` (the simd-json
//! tape and protojson's field and scalar rules), `decode.rs`, `encode.rs`,
//! `escape.rs` (Go's string escaping).

mod decode;
mod encode;
mod escape;
mod schema;
mod tape;

pub use decode::{decode, decode_server_message};
pub use encode::{encode_event, encode_reply, encode_request};

#[cfg(test)]
mod tests {
    //! Round trips through both directions of the codec.

    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::ids::{SessionId, UserId};
    use crate::protocol::message::{ServerBody, ServerMessage};
    use crate::protocol::{ErrorCode, Presence, Reply, ReplyBody, Request, RequestBody};
    use crate::protocol::{Malformed, StatusPresenceEvent};

    /// Arbitrary text, biased towards what needs escaping.
    fn text() -> impl Strategy<Value = String> {
        let tricky = prop_oneof![
            Just('"'),
            Just('\\'),
            Just('/'),
            Just('\n'),
            Just('\u{0}'),
            Just('\u{1f}'),
            Just('\u{7f}'),
            Just('<'),
            Just('&'),
            Just('\u{2028}'),
            Just('é'),
            Just('😀'),
        ];
        let ch = prop_oneof![3 => any::<char>(), 2 => tricky, 2 => proptest::char::range('a', 'z')];
        proptest::collection::vec(ch, 0..24).prop_map(|chars| chars.into_iter().collect())
    }

    fn texts() -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec(text(), 0..6)
    }

    fn request_body() -> impl Strategy<Value = RequestBody> {
        prop_oneof![
            (texts(), texts()).prop_map(|(user_ids, usernames)| RequestBody::StatusFollow {
                user_ids,
                usernames
            }),
            texts().prop_map(|user_ids| RequestBody::StatusUnfollow { user_ids }),
            proptest::option::of(text()).prop_map(|status| RequestBody::StatusUpdate { status }),
            Just(RequestBody::Ping),
            Just(RequestBody::Pong),
            Just(RequestBody::Unrecognized),
            Just(RequestBody::Missing),
        ]
    }

    fn presence() -> impl Strategy<Value = Presence> {
        (any::<u128>(), any::<u128>(), text(), text()).prop_map(|(user, session, name, status)| {
            Presence {
                user_id: UserId(uuid::Uuid::from_u128(user)),
                session_id: SessionId(uuid::Uuid::from_u128(session)),
                username: Arc::from(name),
                status: Arc::from(status),
            }
        })
    }

    fn error_code() -> impl Strategy<Value = ErrorCode> {
        prop_oneof![
            Just(ErrorCode::RuntimeException),
            Just(ErrorCode::UnrecognizedPayload),
            Just(ErrorCode::MissingPayload),
            Just(ErrorCode::BadInput),
        ]
    }

    /// An owned stand-in for [`ReplyBody`], which borrows.
    #[derive(Debug, Clone)]
    enum OwnedReply {
        Ack,
        Pong,
        Status(Vec<Presence>),
        Error(ErrorCode, String),
    }

    fn owned_reply() -> impl Strategy<Value = OwnedReply> {
        prop_oneof![
            Just(OwnedReply::Ack),
            Just(OwnedReply::Pong),
            proptest::collection::vec(presence(), 0..4).prop_map(OwnedReply::Status),
            (error_code(), text()).prop_map(|(code, message)| OwnedReply::Error(code, message)),
        ]
    }

    fn decoded(bytes: &[u8]) -> Result<ServerMessage, Malformed> {
        decode_server_message(&mut bytes.to_vec())
    }

    proptest! {
        #[test]
        fn requests_survive_encode_then_decode(cid in text(), body in request_body()) {
            let request = Request { cid, body };
            let mut out = Vec::new();
            encode_request(&request, &mut out);
            let back = decode(&mut out.clone());
            prop_assert_eq!(back, Ok(request), "{}", String::from_utf8_lossy(&out));
        }

        #[test]
        fn replies_survive_encode_then_decode(cid in text(), reply in owned_reply()) {
            let (body, expected) = match &reply {
                OwnedReply::Ack => (ReplyBody::Ack, ServerBody::Ack),
                OwnedReply::Pong => (ReplyBody::Pong, ServerBody::Pong),
                OwnedReply::Status(list) => (ReplyBody::Status(list), ServerBody::Status(list.clone())),
                OwnedReply::Error(code, message) => (
                    ReplyBody::Error { code: *code, message },
                    ServerBody::Error { code: *code as i32, message: message.clone() },
                ),
            };
            let mut out = Vec::new();
            encode_reply(&Reply { cid: &cid, body }, &mut out);
            let expected = ServerMessage { cid, body: expected };
            prop_assert_eq!(decoded(&out), Ok(expected), "{}", String::from_utf8_lossy(&out));
        }

        #[test]
        fn events_survive_encode_then_decode(
            joins in proptest::option::of(presence()),
            leaves in proptest::option::of(presence()),
        ) {
            let event = StatusPresenceEvent { joins, leaves };
            let mut out = Vec::new();
            encode_event(&event, &mut out);
            let expected = ServerMessage {
                cid: String::new(),
                body: ServerBody::Event {
                    joins: event.joins.clone().into_iter().collect(),
                    leaves: event.leaves.clone().into_iter().collect(),
                },
            };
            prop_assert_eq!(decoded(&out), Ok(expected), "{}", String::from_utf8_lossy(&out));
        }

        #[test]
        fn server_output_is_json_that_serde_agrees_with(cid in text(), list in proptest::collection::vec(presence(), 0..3)) {
            let mut out = Vec::new();
            encode_reply(&Reply { cid: &cid, body: ReplyBody::Status(&list) }, &mut out);
            let value: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
            // Always a list, even an empty one (see `encode`).
            let presences = value["status"]["presences"].as_array().cloned().expect("presences is a list");
            prop_assert_eq!(presences.len(), list.len());
            for (json, presence) in presences.iter().zip(&list) {
                prop_assert_eq!(json["status"].as_str(), Some(&*presence.status));
                let user_id = presence.user_id.to_string();
                prop_assert_eq!(json["user_id"].as_str(), Some(user_id.as_str()));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&mut bytes.clone());
            let _ = decode_server_message(&mut bytes.clone());
        }

        #[test]
        fn json_shaped_noise_never_panics(text in r#"[{}\[\]":,\\ a-z0-9.eE+-]{0,48}"#) {
            let _ = decode(&mut text.clone().into_bytes());
            let _ = decode_server_message(&mut text.into_bytes());
        }

        #[test]
        fn near_miss_envelopes_never_panic(
            member in r#"(ping|pong|status|status_update|statusFollow|error|channel_join|cid)"#,
            value in r#"(null|\{\}|\[\]|"x"|1|1\.5|true|\{"status":"x"\}|\{"user_ids":\["a",null\]\}|\{"code":"1e2"\})"#,
            twice in any::<bool>(),
        ) {
            let text = if twice {
                format!(r#"{{"{member}":{value},"{member}":{value}}}"#)
            } else {
                format!(r#"{{"{member}":{value}}}"#)
            };
            let _ = decode(&mut text.clone().into_bytes());
            let _ = decode_server_message(&mut text.into_bytes());
        }
    }
}

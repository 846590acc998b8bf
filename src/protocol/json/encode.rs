//! Encoding: server → client replies and events, and client requests.
//!
//! Server output matches Go protojson `MarshalOptions{UseProtoNames: true,
//! EmitUnpopulated: false, UseEnumNumbers: true}` as Nakama runs it
//! (reference §3.1), minus Go's random spaces: snake_case keys in field
//! number order, empty strings, zero numbers and empty lists omitted, a set
//! `StringValue` written as a bare string even when empty, and a set but
//! empty oneof member written as `{}`.
//!
//! One deliberate exception: a status snapshot always carries its
//! `presences` list, `{"status":{"presences":[]}}` when nobody is online.
//! The official Godot clients (3 and 4) declare `presences` a required
//! property of `Status`, so Go's `{"status":{}}` makes their
//! `follow_users_async` return an exception instead of an empty list; the
//! other official clients accept either form. No other list or object that
//! Go omits is required by a client (README, "Differences from Nakama").
//!
//! The request encoder writes what nakama-js sends: snake_case keys, the
//! member first and `cid` last.

use super::escape::push_string;
use crate::protocol::{Presence, Reply, ReplyBody, Request, RequestBody, StatusPresenceEvent};

/// Appends the JSON of `reply` to `out`.
pub fn encode_reply(reply: &Reply<'_>, out: &mut Vec<u8>) {
    out.push(b'{');
    let mut object = Object::new(out);
    if !reply.cid.is_empty() {
        object.key(b"cid");
        push_string(reply.cid, object.out);
    }
    match reply.body {
        ReplyBody::Ack => {}
        ReplyBody::Pong => {
            object.key(b"pong");
            object.out.extend_from_slice(b"{}");
        }
        ReplyBody::Status(presences) => {
            // The list is written even when empty, unlike Go: see the module docs.
            object.key(b"status");
            object.out.extend_from_slice(b"{\"presences\":");
            push_presence_list(presences, object.out);
            object.out.push(b'}');
        }
        ReplyBody::Error { code, message } => {
            object.key(b"error");
            object.out.push(b'{');
            let mut error = Object::new(object.out);
            let code = code as i32;
            if code != 0 {
                error.key(b"code");
                push_i32(code, error.out);
            }
            if !message.is_empty() {
                error.key(b"message");
                push_string(message, error.out);
            }
            object.out.push(b'}');
        }
        ReplyBody::Notification(notification) => {
            // {"notifications":{"notifications":[{id, subject, content, code, create_time}]}}
            object.key(b"notifications");
            object.out.extend_from_slice(b"{\"notifications\":[{");
            let mut fields = Object::new(object.out);
            fields.key(b"id");
            push_string(&notification.id, fields.out);
            fields.key(b"subject");
            push_string(notification.subject, fields.out);
            fields.key(b"content");
            push_string(notification.content, fields.out);
            fields.key(b"code");
            push_i32(notification.code, fields.out);
            fields.key(b"create_time");
            push_string(
                &super::super::time::rfc3339(notification.create_time),
                fields.out,
            );
            object.out.extend_from_slice(b"}]}");
        }
    }
    out.push(b'}');
}

/// Appends the JSON of `event` to `out`. Events never carry a cid.
pub fn encode_event(event: &StatusPresenceEvent, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"status_presence_event\":{");
    let mut object = Object::new(out);
    if let Some(join) = &event.joins {
        object.key(b"joins");
        push_presence_list(std::slice::from_ref(join), object.out);
    }
    if let Some(leave) = &event.leaves {
        object.key(b"leaves");
        push_presence_list(std::slice::from_ref(leave), object.out);
    }
    out.extend_from_slice(b"}}");
}

/// Appends the JSON a client would send for `request` (nakama-js style).
///
/// `usernames` is written only when non-empty, as nakama-js never sends it;
/// `Unrecognized` becomes `{"status":{}}` and `Missing` an envelope with
/// only its cid.
pub fn encode_request(request: &Request, out: &mut Vec<u8>) {
    out.push(b'{');
    let mut object = Object::new(out);
    match &request.body {
        RequestBody::StatusFollow {
            user_ids,
            usernames,
        } => {
            object.key(b"status_follow");
            object.out.push(b'{');
            let mut follow = Object::new(object.out);
            follow.key(b"user_ids");
            push_string_list(user_ids, follow.out);
            if !usernames.is_empty() {
                follow.key(b"usernames");
                push_string_list(usernames, follow.out);
            }
            object.out.push(b'}');
        }
        RequestBody::StatusUnfollow { user_ids } => {
            object.key(b"status_unfollow");
            object.out.extend_from_slice(b"{\"user_ids\":");
            push_string_list(user_ids, object.out);
            object.out.push(b'}');
        }
        RequestBody::StatusUpdate { status } => {
            object.key(b"status_update");
            object.out.push(b'{');
            if let Some(status) = status {
                object.out.extend_from_slice(b"\"status\":");
                push_string(status, object.out);
            }
            object.out.push(b'}');
        }
        RequestBody::Ping => {
            object.key(b"ping");
            object.out.extend_from_slice(b"{}");
        }
        RequestBody::Pong => {
            object.key(b"pong");
            object.out.extend_from_slice(b"{}");
        }
        RequestBody::Unrecognized => {
            object.key(b"status");
            object.out.extend_from_slice(b"{}");
        }
        RequestBody::Missing => {}
    }
    if !request.cid.is_empty() {
        object.key(b"cid");
        push_string(&request.cid, object.out);
    }
    out.push(b'}');
}

/// Writes the keys of one JSON object, with a comma before all but the
/// first. The caller writes the braces.
struct Object<'o> {
    out: &'o mut Vec<u8>,
    empty: bool,
}

impl<'o> Object<'o> {
    fn new(out: &'o mut Vec<u8>) -> Object<'o> {
        Object { out, empty: true }
    }

    /// Writes `"key":` (keys are ours: plain ASCII, nothing to escape).
    fn key(&mut self, key: &[u8]) {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key);
        self.out.extend_from_slice(b"\":");
    }
}

fn push_presence_list(presences: &[Presence], out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, presence) in presences.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_presence(presence, out);
    }
    out.push(b']');
}

/// A `UserPresence`: ids as canonical lowercase UUIDs, `persistence`
/// (always false) omitted, `status` always present.
fn push_presence(presence: &Presence, out: &mut Vec<u8>) {
    let mut buf = [0u8; 36];
    out.extend_from_slice(b"{\"user_id\":\"");
    out.extend_from_slice(presence.user_id.encode(&mut buf).as_bytes());
    out.extend_from_slice(b"\",\"session_id\":\"");
    out.extend_from_slice(presence.session_id.encode(&mut buf).as_bytes());
    out.push(b'"');
    // Go omits an empty string field; Herald's usernames are never empty,
    // but the encoder should not be the place that assumes so.
    if !presence.username.is_empty() {
        out.extend_from_slice(b",\"username\":");
        push_string(&presence.username, out);
    }
    out.extend_from_slice(b",\"status\":");
    push_string(&presence.status, out);
    out.push(b'}');
}

fn push_string_list(items: &[String], out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        push_string(item, out);
    }
    out.push(b']');
}

fn push_i32(value: i32, out: &mut Vec<u8>) {
    if value < 0 {
        out.push(b'-');
    }
    let mut magnitude = value.unsigned_abs();
    let mut digits = [0u8; 10];
    let mut start = digits.len();
    loop {
        start -= 1;
        if let Some(slot) = digits.get_mut(start) {
            // `magnitude % 10` is a single digit.
            *slot = b'0' + (magnitude % 10) as u8;
        }
        magnitude /= 10;
        if magnitude == 0 || start == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(start..).unwrap_or_default());
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::ids::{SessionId, UserId};
    use crate::protocol::errors;
    use crate::protocol::ErrorCode;

    const ALICE: &str = "4c2ae592-b2a7-4b5f-9d1b-0a1b2c3d4e5f";
    const SESSION: &str = "a3d1b2c0-0000-4000-8000-000000000001";

    fn presence(username: &str, status: &str) -> Presence {
        Presence {
            user_id: UserId::parse(&ALICE.to_uppercase()).expect("user id"),
            session_id: SessionId::parse(SESSION).expect("session id"),
            username: Arc::from(username),
            status: Arc::from(status),
        }
    }

    fn json(p: &Presence) -> String {
        let mut out = Vec::new();
        push_presence(p, &mut out);
        String::from_utf8(out).expect("utf-8")
    }

    fn reply(cid: &str, body: ReplyBody<'_>) -> String {
        let mut out = Vec::new();
        encode_reply(&Reply { cid, body }, &mut out);
        String::from_utf8(out).expect("utf-8")
    }

    fn event(joins: Option<Presence>, leaves: Option<Presence>) -> String {
        let mut out = Vec::new();
        encode_event(&StatusPresenceEvent { joins, leaves }, &mut out);
        String::from_utf8(out).expect("utf-8")
    }

    fn request(cid: &str, body: RequestBody) -> String {
        let mut out = Vec::new();
        encode_request(
            &Request {
                cid: cid.to_owned(),
                body,
            },
            &mut out,
        );
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn the_single_socket_notification_matches_nakama() {
        let mut notice = crate::protocol::Notification::single_socket(1_795_655_523);
        notice.id = "6f1d2c3b-4a59-4e7f-8a9b-0c1d2e3f4a5b".into();
        assert_eq!(
            reply("", ReplyBody::Notification(&notice)),
            r#"{"notifications":{"notifications":[{"id":"6f1d2c3b-4a59-4e7f-8a9b-0c1d2e3f4a5b","subject":"single_socket","content":"{}","code":-7,"create_time":"2026-11-26T01:12:03Z"}]}}"#
        );
    }

    #[test]
    fn acks_are_an_envelope_with_only_the_cid() {
        assert_eq!(reply("3", ReplyBody::Ack), r#"{"cid":"3"}"#);
        assert_eq!(reply("", ReplyBody::Ack), "{}");
    }

    #[test]
    fn pong_echoes_the_cid() {
        assert_eq!(reply("7", ReplyBody::Pong), r#"{"cid":"7","pong":{}}"#);
        assert_eq!(reply("", ReplyBody::Pong), r#"{"pong":{}}"#);
    }

    #[test]
    fn an_empty_snapshot_still_carries_an_empty_presence_list() {
        assert_eq!(
            reply("1", ReplyBody::Status(&[])),
            r#"{"cid":"1","status":{"presences":[]}}"#
        );
        assert_eq!(
            reply("", ReplyBody::Status(&[])),
            r#"{"status":{"presences":[]}}"#
        );
    }

    #[test]
    fn a_snapshot_lists_presences_in_field_order_with_lowercase_ids() {
        let presences = [presence("alice", ""), presence("bob", "hi")];
        assert_eq!(
            reply("1", ReplyBody::Status(&presences)),
            format!(
                r#"{{"cid":"1","status":{{"presences":[{{"user_id":"{ALICE}","session_id":"{SESSION}","username":"alice","status":""}},{{"user_id":"{ALICE}","session_id":"{SESSION}","username":"bob","status":"hi"}}]}}}}"#
            )
        );
    }

    #[test]
    fn error_code_zero_is_omitted() {
        let e = errors::COULD_NOT_CHECK_USERS;
        assert_eq!(
            reply(
                "5",
                ReplyBody::Error {
                    code: e.code,
                    message: e.message
                }
            ),
            r#"{"cid":"5","error":{"message":"Could not check users"}}"#
        );
    }

    #[test]
    fn nonzero_error_codes_are_numbers() {
        let e = errors::INVALID_USER_ID;
        assert_eq!(
            reply(
                "4",
                ReplyBody::Error {
                    code: e.code,
                    message: e.message
                }
            ),
            r#"{"cid":"4","error":{"code":3,"message":"Invalid user identifier"}}"#
        );
        let e = errors::MISSING_MESSAGE;
        assert_eq!(
            reply(
                "",
                ReplyBody::Error {
                    code: e.code,
                    message: e.message
                }
            ),
            r#"{"error":{"code":2,"message":"Missing message."}}"#
        );
        let e = errors::UNRECOGNIZED_MESSAGE;
        assert_eq!(
            reply(
                "9",
                ReplyBody::Error {
                    code: e.code,
                    message: e.message
                }
            ),
            r#"{"cid":"9","error":{"code":1,"message":"Unrecognized message."}}"#
        );
        assert_eq!(
            reply(
                "9",
                ReplyBody::Error {
                    code: ErrorCode::BadInput,
                    message: errors::STATUS_TOO_LONG.message
                }
            ),
            r#"{"cid":"9","error":{"code":3,"message":"Status must be 2048 characters or less"}}"#
        );
    }

    #[test]
    fn an_error_without_code_or_message_is_an_empty_object() {
        assert_eq!(
            reply(
                "1",
                ReplyBody::Error {
                    code: ErrorCode::RuntimeException,
                    message: ""
                }
            ),
            r#"{"cid":"1","error":{}}"#
        );
        assert_eq!(
            reply(
                "1",
                ReplyBody::Error {
                    code: ErrorCode::BadInput,
                    message: ""
                }
            ),
            r#"{"cid":"1","error":{"code":3}}"#
        );
    }

    #[test]
    fn a_join_only_event_has_no_leaves_key() {
        assert_eq!(
            event(Some(presence("alice", "hi")), None),
            format!(
                r#"{{"status_presence_event":{{"joins":[{{"user_id":"{ALICE}","session_id":"{SESSION}","username":"alice","status":"hi"}}]}}}}"#
            )
        );
    }

    #[test]
    fn an_update_event_has_joins_then_leaves() {
        let new = presence("alice", "new");
        let old = presence("alice", "old");
        assert_eq!(
            event(Some(new.clone()), Some(old.clone())),
            format!(
                r#"{{"status_presence_event":{{"joins":[{}],"leaves":[{}]}}}}"#,
                json(&new),
                json(&old)
            )
        );
    }

    #[test]
    fn a_leave_only_event_has_no_joins_key() {
        assert_eq!(
            event(None, Some(presence("alice", "last status"))),
            format!(
                r#"{{"status_presence_event":{{"leaves":[{{"user_id":"{ALICE}","session_id":"{SESSION}","username":"alice","status":"last status"}}]}}}}"#
            )
        );
        assert_eq!(event(None, None), r#"{"status_presence_event":{}}"#);
    }

    #[test]
    fn an_empty_status_is_still_written() {
        assert!(json(&presence("alice", "")).ends_with(r#""username":"alice","status":""}"#));
    }

    #[test]
    fn an_empty_username_is_omitted_like_go_does() {
        assert_eq!(
            json(&presence("", "x")),
            format!(r#"{{"user_id":"{ALICE}","session_id":"{SESSION}","status":"x"}}"#)
        );
    }

    #[test]
    fn strings_are_escaped_like_go() {
        let p = presence("a\"b\\c", "<b>&amp;</b>\n\t\u{1}\u{2028}é😀");
        assert_eq!(
            json(&p),
            format!(
                "{{\"user_id\":\"{ALICE}\",\"session_id\":\"{SESSION}\",\"username\":\"a\\\"b\\\\c\",\"status\":\"<b>&amp;</b>\\n\\t\\u0001\u{2028}é😀\"}}"
            )
        );
        assert_eq!(reply("\"\u{0}", ReplyBody::Ack), r#"{"cid":"\"\u0000"}"#);
        assert_eq!(
            reply(
                "1",
                ReplyBody::Error {
                    code: ErrorCode::BadInput,
                    message: "bad \"x\""
                }
            ),
            r#"{"cid":"1","error":{"code":3,"message":"bad \"x\""}}"#
        );
    }

    #[test]
    fn output_is_appended_after_existing_bytes() {
        let mut out = b"xyz".to_vec();
        encode_reply(
            &Reply {
                cid: "1",
                body: ReplyBody::Ack,
            },
            &mut out,
        );
        assert_eq!(out, br#"xyz{"cid":"1"}"#);
    }

    #[test]
    fn requests_are_written_like_nakama_js() {
        assert_eq!(
            request(
                "2",
                RequestBody::StatusFollow {
                    user_ids: vec![ALICE.into()],
                    usernames: vec![]
                }
            ),
            format!(r#"{{"status_follow":{{"user_ids":["{ALICE}"]}},"cid":"2"}}"#)
        );
        assert_eq!(
            request(
                "2",
                RequestBody::StatusFollow {
                    user_ids: vec![],
                    usernames: vec!["bob".into(), "c\"d".into()]
                }
            ),
            r#"{"status_follow":{"user_ids":[],"usernames":["bob","c\"d"]},"cid":"2"}"#
        );
        assert_eq!(
            request(
                "6",
                RequestBody::StatusUnfollow {
                    user_ids: vec!["a".into(), "b".into()]
                }
            ),
            r#"{"status_unfollow":{"user_ids":["a","b"]},"cid":"6"}"#
        );
        assert_eq!(
            request(
                "3",
                RequestBody::StatusUpdate {
                    status: Some("online".into())
                }
            ),
            r#"{"status_update":{"status":"online"},"cid":"3"}"#
        );
        assert_eq!(
            request("4", RequestBody::StatusUpdate { status: None }),
            r#"{"status_update":{},"cid":"4"}"#
        );
        assert_eq!(
            request(
                "5",
                RequestBody::StatusUpdate {
                    status: Some(String::new())
                }
            ),
            r#"{"status_update":{"status":""},"cid":"5"}"#
        );
        assert_eq!(request("1", RequestBody::Ping), r#"{"ping":{},"cid":"1"}"#);
        assert_eq!(request("", RequestBody::Pong), r#"{"pong":{}}"#);
        assert_eq!(
            request("8", RequestBody::Unrecognized),
            r#"{"status":{},"cid":"8"}"#
        );
        assert_eq!(request("9", RequestBody::Missing), r#"{"cid":"9"}"#);
        assert_eq!(request("", RequestBody::Missing), "{}");
    }

    #[test]
    fn integers_are_written_in_decimal() {
        for value in [0, 1, 9, 10, 42, 1000, -1, -10, i32::MAX, i32::MIN] {
            let mut out = Vec::new();
            push_i32(value, &mut out);
            assert_eq!(out, value.to_string().into_bytes());
        }
    }
}

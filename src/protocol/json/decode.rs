//! Decoding: client → server requests (the server's hot path) and
//! server → client messages (for tools and tests).
//!
//! Both follow Go protojson `UnmarshalOptions{DiscardUnknown: false}` as
//! Nakama runs it (reference §3.2): unknown or duplicate fields, wrong types
//! and two oneof members are [`Malformed`], and `null` means "not set". The
//! field-level rules live in [`super::tape`]; this file knows the messages.

use std::sync::Arc;

use super::schema;
use super::tape::{self, message_list, string_list, string_map, visit_message, Value};
use crate::ids::{SessionId, UserId};
use crate::protocol::message::{Presence, ServerBody, ServerMessage};
use crate::protocol::{Malformed, Request, RequestBody};

const TWO_MEMBERS: Malformed = Malformed("more than one member of the envelope oneof is set");
const CID_NOT_A_STRING: Malformed = Malformed("cid is not a JSON string");
const NOT_AN_OBJECT: Malformed = Malformed("expected a JSON object for a message");

/// Decodes one client envelope. See the module doc for the rules.
pub fn decode(payload: &mut [u8]) -> Result<Request, Malformed> {
    tape::with_document(payload, request)
}

fn request(root: Value<'_, '_>) -> Result<Request, Malformed> {
    let mut cid = String::new();
    let mut body = None;
    visit_message(root, schema::envelope_field, |number, value| {
        if number == schema::CID {
            cid = value.string().map_err(|_| CID_NOT_A_STRING)?.to_owned();
        } else if body.is_some() {
            return Err(TWO_MEMBERS);
        } else {
            body = Some(request_body(number, value)?);
        }
        Ok(())
    })?;
    Ok(Request {
        cid,
        body: body.unwrap_or(RequestBody::Missing),
    })
}

/// The (non-null) envelope member `member`, as a request.
fn request_body(member: u8, value: Value<'_, '_>) -> Result<RequestBody, Malformed> {
    let body = match member {
        schema::STATUS_FOLLOW => {
            let mut user_ids = Vec::new();
            let mut usernames = Vec::new();
            visit_message(value, schema::status_follow_field, |number, value| {
                if number == 1 {
                    string_list(value, &mut user_ids)
                } else {
                    string_list(value, &mut usernames)
                }
            })?;
            RequestBody::StatusFollow {
                user_ids,
                usernames,
            }
        }
        schema::STATUS_UNFOLLOW => {
            let mut user_ids = Vec::new();
            visit_message(value, schema::status_unfollow_field, |_, value| {
                string_list(value, &mut user_ids)
            })?;
            RequestBody::StatusUnfollow { user_ids }
        }
        schema::STATUS_UPDATE => {
            // A StringValue is a bare JSON string; `null` (skipped) or absent is `None`.
            let mut status = None;
            visit_message(value, schema::status_update_field, |_, value| {
                status = Some(value.string()?.to_owned());
                Ok(())
            })?;
            RequestBody::StatusUpdate { status }
        }
        schema::PING => {
            visit_message(value, schema::no_field, |_, _| Ok(()))?;
            RequestBody::Ping
        }
        schema::PONG => {
            visit_message(value, schema::no_field, |_, _| Ok(()))?;
            RequestBody::Pong
        }
        // Server → client messages whose schema the reference gives: Go
        // would check their content, so a bad one is malformed rather than
        // unrecognized.
        schema::STATUS => {
            status(value, |_| Ok(()))?;
            RequestBody::Unrecognized
        }
        schema::STATUS_PRESENCE_EVENT => {
            status_presence_event(value, |_, _| Ok(()))?;
            RequestBody::Unrecognized
        }
        schema::ERROR => {
            error(value)?;
            RequestBody::Unrecognized
        }
        // Every other member: any object (its schema is not modelled here).
        _ => {
            value.object().ok_or(NOT_AN_OBJECT)?;
            RequestBody::Unrecognized
        }
    };
    Ok(body)
}

/// Decodes one server envelope: an ack (cid and no member), `pong`,
/// `status`, `error` or `status_presence_event`. Any other member, a
/// presence without a status, with `persistence: true` or with an id that is
/// not a canonical lowercase UUID is [`Malformed`]: Herald never sends those,
/// and [`ServerMessage`] cannot represent them.
pub fn decode_server_message(payload: &mut [u8]) -> Result<ServerMessage, Malformed> {
    tape::with_document(payload, server_message)
}

fn server_message(root: Value<'_, '_>) -> Result<ServerMessage, Malformed> {
    let mut cid = String::new();
    let mut body = None;
    visit_message(root, schema::envelope_field, |number, value| {
        if number == schema::CID {
            cid = value.string().map_err(|_| CID_NOT_A_STRING)?.to_owned();
        } else if body.is_some() {
            return Err(TWO_MEMBERS);
        } else {
            body = Some(server_body(number, value)?);
        }
        Ok(())
    })?;
    Ok(ServerMessage {
        cid,
        body: body.unwrap_or(ServerBody::Ack),
    })
}

fn server_body(member: u8, value: Value<'_, '_>) -> Result<ServerBody, Malformed> {
    let body = match member {
        schema::PONG => {
            visit_message(value, schema::no_field, |_, _| Ok(()))?;
            ServerBody::Pong
        }
        schema::STATUS => {
            let mut presences = Vec::new();
            status(value, |presence| {
                presences.push(presence.to_presence()?);
                Ok(())
            })?;
            ServerBody::Status(presences)
        }
        schema::STATUS_PRESENCE_EVENT => {
            let mut joins = Vec::new();
            let mut leaves = Vec::new();
            status_presence_event(value, |list, presence| {
                let presence = presence.to_presence()?;
                match list {
                    EventList::Joins => joins.push(presence),
                    EventList::Leaves => leaves.push(presence),
                }
                Ok(())
            })?;
            ServerBody::Event { joins, leaves }
        }
        schema::ERROR => {
            let (code, message) = error(value)?;
            ServerBody::Error {
                code,
                message: message.to_owned(),
            }
        }
        _ => return Err(Malformed("not a message the status server sends")),
    };
    Ok(body)
}

/// A `UserPresence` as it is on the wire, borrowed from the tape. Absent
/// strings are `""`, as in protobuf.
#[derive(Default)]
struct WirePresence<'i> {
    user_id: &'i str,
    session_id: &'i str,
    username: &'i str,
    persistence: bool,
    status: Option<&'i str>,
}

impl WirePresence<'_> {
    /// The presence in Herald's model, which has room only for what a
    /// status presence can be (see [`decode_server_message`]).
    fn to_presence(&self) -> Result<Presence, Malformed> {
        if self.persistence {
            return Err(Malformed("a status presence has persistence set"));
        }
        let user_id = canonical_uuid(self.user_id)
            .map(UserId)
            .ok_or(Malformed("user_id is not a canonical UUID"))?;
        let session_id = canonical_uuid(self.session_id)
            .map(SessionId)
            .ok_or(Malformed("session_id is not a canonical UUID"))?;
        let status = self
            .status
            .ok_or(Malformed("a status presence has no status"))?;
        Ok(Presence {
            user_id,
            session_id,
            username: Arc::from(self.username),
            status: Arc::from(status),
        })
    }
}

/// Parses a UUID only in the form servers emit: 36 characters, lowercase.
fn canonical_uuid(text: &str) -> Option<uuid::Uuid> {
    let id = crate::ids::parse_uuid(text)?;
    let mut buf = [0u8; 36];
    (id.hyphenated().encode_lower(&mut buf) == text).then_some(id)
}

fn user_presence<'i>(value: Value<'_, 'i>) -> Result<WirePresence<'i>, Malformed> {
    let mut presence = WirePresence::default();
    visit_message(value, schema::user_presence_field, |number, value| {
        match number {
            1 => presence.user_id = value.string()?,
            2 => presence.session_id = value.string()?,
            3 => presence.username = value.string()?,
            4 => presence.persistence = value.bool()?,
            _ => presence.status = Some(value.string()?),
        }
        Ok(())
    })?;
    Ok(presence)
}

/// `Status`: hands each presence to `each`.
fn status<'i>(
    value: Value<'_, 'i>,
    mut each: impl FnMut(WirePresence<'i>) -> Result<(), Malformed>,
) -> Result<(), Malformed> {
    visit_message(value, schema::status_field, |_, list| {
        message_list(list, |element| each(user_presence(element)?))
    })
}

/// Which list of a [`StatusPresenceEvent`](crate::protocol::StatusPresenceEvent) a presence is in.
#[derive(Clone, Copy)]
enum EventList {
    Joins,
    Leaves,
}

/// `StatusPresenceEvent`: hands each presence to `each`, with its list.
fn status_presence_event<'i>(
    value: Value<'_, 'i>,
    mut each: impl FnMut(EventList, WirePresence<'i>) -> Result<(), Malformed>,
) -> Result<(), Malformed> {
    visit_message(
        value,
        schema::status_presence_event_field,
        |number, list| {
            let which = if number == 2 {
                EventList::Joins
            } else {
                EventList::Leaves
            };
            message_list(list, |element| each(which, user_presence(element)?))
        },
    )
}

/// `Error`: its code (absent = 0) and message (absent = `""`); the context
/// map is checked and dropped.
fn error<'i>(value: Value<'_, 'i>) -> Result<(i32, &'i str), Malformed> {
    let mut code = 0;
    let mut message = "";
    visit_message(value, schema::error_field, |number, value| {
        match number {
            1 => code = value.int32()?,
            2 => message = value.string()?,
            _ => string_map(value)?,
        }
        Ok(())
    })?;
    Ok((code, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::json::schema::ENVELOPE_MEMBERS;

    fn decode_str(text: &str) -> Result<Request, Malformed> {
        decode(&mut text.as_bytes().to_vec())
    }

    fn request(cid: &str, body: RequestBody) -> Result<Request, Malformed> {
        Ok(Request {
            cid: cid.to_owned(),
            body,
        })
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    fn assert_malformed(text: &str) {
        let result = decode_str(text);
        assert!(result.is_err(), "{text:?} decoded as {result:?}");
    }

    const ALICE: &str = "4c2ae592-b2a7-4b5f-9d1b-0a1b2c3d4e5f";

    #[test]
    fn what_nakama_js_sends_decodes() {
        let follow = format!(r#"{{"status_follow":{{"user_ids":["{ALICE}"]}},"cid":"2"}}"#);
        assert_eq!(
            decode_str(&follow),
            request(
                "2",
                RequestBody::StatusFollow {
                    user_ids: strings(&[ALICE]),
                    usernames: vec![]
                }
            )
        );
        let unfollow = format!(r#"{{"status_unfollow":{{"user_ids":["{ALICE}"]}},"cid":"6"}}"#);
        assert_eq!(
            decode_str(&unfollow),
            request(
                "6",
                RequestBody::StatusUnfollow {
                    user_ids: strings(&[ALICE])
                }
            )
        );
        assert_eq!(
            decode_str(r#"{"status_update":{"status":"online"},"cid":"3"}"#),
            request(
                "3",
                RequestBody::StatusUpdate {
                    status: Some("online".into())
                }
            )
        );
        assert_eq!(
            decode_str(r#"{"status_update":{},"cid":"4"}"#),
            request("4", RequestBody::StatusUpdate { status: None })
        );
        assert_eq!(
            decode_str(r#"{"status_update":{"status":""},"cid":"5"}"#),
            request(
                "5",
                RequestBody::StatusUpdate {
                    status: Some(String::new())
                }
            )
        );
        assert_eq!(
            decode_str(r#"{"ping":{},"cid":"1"}"#),
            request("1", RequestBody::Ping)
        );
        assert_eq!(
            decode_str(r#"{"pong":{},"cid":"9"}"#),
            request("9", RequestBody::Pong)
        );
    }

    #[test]
    fn what_dotnet_sends_decodes() {
        assert_eq!(
            decode_str(r#"{"cid":"1","status_follow":{"user_ids":["a"],"usernames":[]}}"#),
            request(
                "1",
                RequestBody::StatusFollow {
                    user_ids: strings(&["a"]),
                    usernames: vec![]
                }
            )
        );
    }

    #[test]
    fn camel_case_names_are_accepted_at_every_level() {
        assert_eq!(
            decode_str(r#"{"cid":"1","statusUpdate":{"status":"x"}}"#),
            request(
                "1",
                RequestBody::StatusUpdate {
                    status: Some("x".into())
                }
            )
        );
        assert_eq!(
            decode_str(r#"{"statusFollow":{"userIds":["a","b"],"usernames":["c"]}}"#),
            request(
                "",
                RequestBody::StatusFollow {
                    user_ids: strings(&["a", "b"]),
                    usernames: strings(&["c"])
                }
            )
        );
        assert_eq!(
            decode_str(r#"{"statusUnfollow":{"userIds":["a"]}}"#),
            request(
                "",
                RequestBody::StatusUnfollow {
                    user_ids: strings(&["a"])
                }
            )
        );
        assert_eq!(
            decode_str(r#"{"status_follow":{"userIds":["a"]},"cid":"7"}"#),
            request(
                "7",
                RequestBody::StatusFollow {
                    user_ids: strings(&["a"]),
                    usernames: vec![]
                }
            )
        );
    }

    #[test]
    fn a_field_given_twice_in_either_spelling_is_a_duplicate() {
        for text in [
            r#"{"cid":"1","cid":"2","ping":{}}"#,
            r#"{"cid":null,"cid":"1","ping":{}}"#,
            r#"{"cid":"1","ping":{},"cid":null}"#,
            r#"{"ping":{},"ping":{}}"#,
            r#"{"ping":null,"ping":{}}"#,
            r#"{"status_update":{},"statusUpdate":{}}"#,
            r#"{"statusUpdate":null,"status_update":{"status":"x"}}"#,
            r#"{"status_update":{"status":"a","status":"b"}}"#,
            r#"{"status_update":{"status":null,"status":"b"}}"#,
            r#"{"status_follow":{"user_ids":[],"user_ids":[]}}"#,
            r#"{"status_follow":{"user_ids":["a"],"userIds":["b"]}}"#,
            r#"{"status_follow":{"userIds":null,"user_ids":["b"]}}"#,
            r#"{"status_follow":{"usernames":[],"usernames":null}}"#,
            r#"{"status_unfollow":{"userIds":[],"user_ids":[]}}"#,
            r#"{"status":{"presences":[{"user_id":"a","userId":"a"}]}}"#,
            r#"{"error":{"code":1,"code":1}}"#,
        ] {
            assert_eq!(
                decode_str(text),
                Err(Malformed("duplicate field")),
                "{text}"
            );
        }
    }

    #[test]
    fn unknown_keys_anywhere_are_malformed() {
        for text in [
            r#"{"foo":{}}"#,
            r#"{"foo":null,"ping":{}}"#,
            r#"{"Cid":"1","ping":{}}"#,
            r#"{"status-update":{}}"#,
            r#"{"ping":{"x":1}}"#,
            r#"{"ping":{"cid":"1"}}"#,
            r#"{"pong":{"x":null}}"#,
            r#"{"status_update":{"value":"x"}}"#,
            r#"{"status_update":{"Status":"x"}}"#,
            r#"{"status_follow":{"user_ids":[],"x":null}}"#,
            r#"{"status_follow":{"user_id":["a"]}}"#,
            r#"{"status_unfollow":{"usernames":[]}}"#,
            r#"{"status":{"presences":[],"extra":1}}"#,
            r#"{"status":{"presences":[{"node":"n"}]}}"#,
            r#"{"status_presence_event":{"stream":{}}}"#,
            r#"{"error":{"details":"x"}}"#,
        ] {
            assert_eq!(decode_str(text), Err(Malformed("unknown field")), "{text}");
        }
    }

    #[test]
    fn cid_must_be_a_string_or_null() {
        for text in [
            r#"{"cid":1,"ping":{}}"#,
            r#"{"cid":1.5}"#,
            r#"{"cid":true,"ping":{}}"#,
            r#"{"cid":["1"],"ping":{}}"#,
            r#"{"cid":{},"ping":{}}"#,
        ] {
            assert_eq!(decode_str(text), Err(CID_NOT_A_STRING), "{text}");
        }
        assert_eq!(
            decode_str(r#"{"cid":null,"ping":{}}"#),
            request("", RequestBody::Ping)
        );
        assert_eq!(
            decode_str(r#"{"cid":"","ping":{}}"#),
            request("", RequestBody::Ping)
        );
    }

    #[test]
    fn cid_is_returned_verbatim_with_escapes_decoded() {
        assert_eq!(
            decode_str(r#"{"cid":"a \"q\" \\ \u0000 \ud83d\ude00 é\n","ping":{}}"#),
            request("a \"q\" \\ \0 😀 é\n", RequestBody::Ping)
        );
    }

    #[test]
    fn null_members_are_skipped_before_the_oneof_check() {
        assert_eq!(
            decode_str(r#"{"ping":{},"pong":null}"#),
            request("", RequestBody::Ping)
        );
        assert_eq!(
            decode_str(r#"{"status_follow":null,"cid":"2","ping":{}}"#),
            request("2", RequestBody::Ping)
        );
        assert_eq!(
            decode_str(r#"{"status_update":null}"#),
            request("", RequestBody::Missing)
        );
        assert_eq!(
            decode_str(r#"{"cid":"1"}"#),
            request("1", RequestBody::Missing)
        );
        assert_eq!(decode_str("{}"), request("", RequestBody::Missing));
        assert_eq!(
            decode_str(r#"{"cid":"1","ping":null,"pong":null,"channel_join":null}"#),
            request("1", RequestBody::Missing)
        );
    }

    #[test]
    fn null_fields_inside_messages_mean_not_set() {
        assert_eq!(
            decode_str(r#"{"status_update":{"status":null}}"#),
            request("", RequestBody::StatusUpdate { status: None })
        );
        assert_eq!(
            decode_str(r#"{"status_follow":{"user_ids":null,"usernames":null}}"#),
            request(
                "",
                RequestBody::StatusFollow {
                    user_ids: vec![],
                    usernames: vec![]
                }
            )
        );
        assert_eq!(
            decode_str(r#"{"status_unfollow":{"user_ids":null}}"#),
            request("", RequestBody::StatusUnfollow { user_ids: vec![] })
        );
    }

    #[test]
    fn two_non_null_members_are_malformed() {
        for text in [
            r#"{"ping":{},"pong":{}}"#,
            r#"{"status_update":{},"status_follow":{}}"#,
            r#"{"ping":{},"channel_join":{}}"#,
            r#"{"channel_join":{},"ping":{}}"#,
            r#"{"status":{},"error":{}}"#,
        ] {
            assert_eq!(decode_str(text), Err(TWO_MEMBERS), "{text}");
        }
    }

    #[test]
    fn the_top_level_must_be_one_json_object() {
        for text in [
            "",
            " ",
            "[]",
            "[{}]",
            r#""ping""#,
            "null",
            "1",
            "true",
            r#"{"ping":{}} x"#,
            r#"{"ping":{}}{}"#,
            r#"{"ping":{}"#,
            r#"{"ping":{}},"#,
            "\u{feff}{\"ping\":{}}",
            "{'ping':{}}",
            r#"{ping:{}}"#,
            r#"{"ping":{},}"#,
        ] {
            assert_malformed(text);
        }
        assert_eq!(
            decode_str(" \t\r\n{ \"ping\" : { } , \"cid\" : \"1\" }\n"),
            request("1", RequestBody::Ping)
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_are_malformed() {
        for bytes in [
            &b"{\"cid\":\"\xff\",\"ping\":{}}"[..],
            b"{\"cid\":\"\xc3\",\"ping\":{}}",
            b"\xff",
        ] {
            assert!(decode(&mut bytes.to_vec()).is_err());
        }
    }

    #[test]
    fn raw_control_characters_in_strings_are_malformed() {
        assert_malformed("{\"cid\":\"a\nb\",\"ping\":{}}");
        assert_malformed("{\"cid\":\"a\tb\",\"ping\":{}}");
        assert_malformed("{\"cid\":\"a\u{1}b\",\"ping\":{}}");
    }

    #[test]
    fn lone_surrogates_and_bad_escapes_are_malformed() {
        for text in [
            r#"{"cid":"\ud800","ping":{}}"#,
            r#"{"cid":"\udc00","ping":{}}"#,
            r#"{"cid":"\ud83d\u0041","ping":{}}"#,
            r#"{"cid":"\x41","ping":{}}"#,
            r#"{"cid":"\u12","ping":{}}"#,
        ] {
            assert_malformed(text);
        }
    }

    #[test]
    fn escaped_keys_are_matched_after_unescaping() {
        assert_eq!(
            decode_str(r#"{"c\u0069d":"1","\u0070ing":{}}"#),
            request("1", RequestBody::Ping)
        );
        assert_eq!(
            decode_str(r#"{"cid":"1","c\u0069d":"2"}"#),
            Err(Malformed("duplicate field"))
        );
    }

    #[test]
    fn id_lists_must_be_arrays_of_strings() {
        for list in [
            r#""a""#,
            "{}",
            "1",
            "true",
            "[null]",
            "[1]",
            r#"["a",null]"#,
            r#"[["a"]]"#,
            "[{}]",
            "[true]",
        ] {
            assert_malformed(&format!(r#"{{"status_follow":{{"user_ids":{list}}}}}"#));
            assert_malformed(&format!(r#"{{"status_follow":{{"usernames":{list}}}}}"#));
            assert_malformed(&format!(r#"{{"status_unfollow":{{"user_ids":{list}}}}}"#));
        }
    }

    #[test]
    fn ids_are_returned_exactly_as_sent() {
        let sent = [
            "not-a-uuid",
            "",
            " x ",
            "4C2AE592-B2A7-4B5F-9D1B-0A1B2C3D4E5F",
            "é",
        ];
        let text = format!(
            r#"{{"status_unfollow":{{"user_ids":{}}}}}"#,
            serde_json::to_string(&sent).expect("serialize")
        );
        assert_eq!(
            decode_str(&text),
            request(
                "",
                RequestBody::StatusUnfollow {
                    user_ids: strings(&sent)
                }
            )
        );
    }

    #[test]
    fn status_must_be_a_bare_string() {
        for status in ["5", r#"{"value":"x"}"#, "true", "[]", r#"["x"]"#, "{}"] {
            assert_malformed(&format!(r#"{{"status_update":{{"status":{status}}}}}"#));
        }
        assert_eq!(
            decode_str(r#"{"status_update":{"status":"a\"b\\c\/\u00e9\ud83d\ude00"}}"#),
            request(
                "",
                RequestBody::StatusUpdate {
                    status: Some("a\"b\\c/é😀".into())
                }
            )
        );
    }

    #[test]
    fn served_members_must_be_objects() {
        for member in [
            "status_follow",
            "status_unfollow",
            "status_update",
            "ping",
            "pong",
        ] {
            for value in ["5", r#""x""#, "[]", "true", "[{}]"] {
                assert_malformed(&format!(r#"{{"{member}":{value}}}"#));
            }
        }
    }

    #[test]
    fn every_other_member_given_an_object_is_unrecognized() {
        let served = [26, 28, 29, 32, 33];
        for &(number, proto, json) in ENVELOPE_MEMBERS {
            if served.contains(&number) {
                continue;
            }
            for name in [proto, json] {
                assert_eq!(
                    decode_str(&format!(r#"{{"cid":"1","{name}":{{}}}}"#)),
                    request("1", RequestBody::Unrecognized),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn every_member_given_a_non_object_is_malformed_and_given_null_is_missing() {
        for &(_, proto, json) in ENVELOPE_MEMBERS {
            for name in [proto, json] {
                for value in ["5", "-1.5", r#""x""#, "[]", "[{}]", "true", "false"] {
                    assert_malformed(&format!(r#"{{"{name}":{value}}}"#));
                }
                assert_eq!(
                    decode_str(&format!(r#"{{"{name}":null,"cid":"3"}}"#)),
                    request("3", RequestBody::Missing),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn members_without_a_modelled_schema_accept_any_object_content() {
        assert_eq!(
            decode_str(r#"{"channel_join":{"target":"x","type":1,"deep":[{"a":[null,true]}]}}"#),
            request("", RequestBody::Unrecognized)
        );
    }

    #[test]
    fn server_messages_sent_by_a_client_are_checked_then_unrecognized() {
        let presence = format!(
            r#"{{"user_id":"{ALICE}","session_id":"s","username":"u","persistence":false,"status":"x"}}"#
        );
        for text in [
            r#"{"status":{}}"#.to_owned(),
            r#"{"status":{"presences":[]}}"#.to_owned(),
            r#"{"status":{"presences":null}}"#.to_owned(),
            format!(r#"{{"status":{{"presences":[{presence},{{}}]}}}}"#),
            r#"{"status":{"presences":[{"userId":"a","sessionId":"b","status":null}]}}"#.to_owned(),
            r#"{"status_presence_event":{}}"#.to_owned(),
            format!(r#"{{"statusPresenceEvent":{{"joins":[{presence}],"leaves":[{{}}]}}}}"#),
            r#"{"error":{}}"#.to_owned(),
            r#"{"error":{"code":3,"message":"m","context":{"a":"b","c":""}}}"#.to_owned(),
            r#"{"error":{"code":"3","context":null}}"#.to_owned(),
            r#"{"error":{"code":-7.0}}"#.to_owned(),
        ] {
            assert_eq!(
                decode_str(&text),
                request("", RequestBody::Unrecognized),
                "{text}"
            );
        }
    }

    #[test]
    fn server_messages_sent_by_a_client_with_bad_content_are_malformed() {
        for text in [
            r#"{"status":{"presences":{}}}"#,
            r#"{"status":{"presences":[null]}}"#,
            r#"{"status":{"presences":[1]}}"#,
            r#"{"status":{"presences":[{"user_id":1}]}}"#,
            r#"{"status":{"presences":[{"persistence":"false"}]}}"#,
            r#"{"status":{"presences":[{"persistence":0}]}}"#,
            r#"{"status":{"presences":[{"status":{"value":"x"}}]}}"#,
            r#"{"status":{"presences":[{"status":5}]}}"#,
            r#"{"status_presence_event":{"joins":{}}}"#,
            r#"{"status_presence_event":{"leaves":[[]]}}"#,
            r#"{"error":{"code":1.5}}"#,
            r#"{"error":{"code":"x"}}"#,
            r#"{"error":{"code":true}}"#,
            r#"{"error":{"code":2147483648}}"#,
            r#"{"error":{"message":3}}"#,
            r#"{"error":{"context":[]}}"#,
            r#"{"error":{"context":{"a":1}}}"#,
            r#"{"error":{"context":{"a":null}}}"#,
            r#"{"error":{"context":{"a":"1","a":"2"}}}"#,
        ] {
            assert_malformed(text);
        }
    }

    #[test]
    fn deep_nesting_is_malformed_without_panicking() {
        for depth in [2_000usize, 100_000] {
            let text = format!(r#"{{"channel_join":{}"#, "[".repeat(depth));
            assert_malformed(&text);
            let closed = format!(
                r#"{{"channel_join":{{"a":{}{}}}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            );
            assert_malformed(&closed);
            let objects = format!(r#"{{"ping":{}"#, r#"{"a":"#.repeat(depth));
            assert_malformed(&objects);
        }
    }

    #[test]
    fn huge_arrays_decode() {
        let ids: Vec<String> = (0..100_000).map(|i| i.to_string()).collect();
        let text = format!(
            r#"{{"cid":"1","status_follow":{{"user_ids":{}}}}}"#,
            serde_json::to_string(&ids).expect("serialize")
        );
        assert_eq!(
            decode_str(&text),
            request(
                "1",
                RequestBody::StatusFollow {
                    user_ids: ids,
                    usernames: vec![]
                }
            )
        );
        let mut bad = text.into_bytes();
        bad.truncate(bad.len() - 5);
        assert!(decode(&mut bad).is_err());
    }

    #[test]
    fn decoding_works_again_after_an_error() {
        assert_malformed(r#"{"ping":{"#);
        assert_eq!(
            decode_str(r#"{"ping":{},"cid":"1"}"#),
            request("1", RequestBody::Ping)
        );
    }

    fn server_str(text: &str) -> Result<ServerMessage, Malformed> {
        decode_server_message(&mut text.as_bytes().to_vec())
    }

    fn presence(user: &str, session: &str, username: &str, status: &str) -> Presence {
        Presence {
            user_id: UserId::parse(user).expect("user id"),
            session_id: SessionId::parse(session).expect("session id"),
            username: Arc::from(username),
            status: Arc::from(status),
        }
    }

    const SESSION: &str = "a3d1b2c0-0000-4000-8000-000000000001";

    #[test]
    fn real_nakama_output_with_spaces_decodes() {
        let text = format!(
            r#"{{"cid":"1", "status":{{"presences":[{{"user_id":"{ALICE}", "session_id":"{SESSION}", "username":"alice", "status":""}}]}}}}"#
        );
        assert_eq!(
            server_str(&text),
            Ok(ServerMessage {
                cid: "1".into(),
                body: ServerBody::Status(vec![presence(ALICE, SESSION, "alice", "")])
            })
        );
    }

    #[test]
    fn server_acks_pongs_and_errors_decode() {
        let message = |cid: &str, body| {
            Ok(ServerMessage {
                cid: cid.to_owned(),
                body,
            })
        };
        assert_eq!(server_str(r#"{"cid":"3"}"#), message("3", ServerBody::Ack));
        assert_eq!(server_str("{}"), message("", ServerBody::Ack));
        assert_eq!(
            server_str(r#"{"cid":"7", "pong":{}}"#),
            message("7", ServerBody::Pong)
        );
        assert_eq!(
            server_str(r#"{"cid":"1","status":{}}"#),
            message("1", ServerBody::Status(vec![]))
        );
        assert_eq!(
            server_str(r#"{"cid":"5","error":{"message":"Could not check users"}}"#),
            message(
                "5",
                ServerBody::Error {
                    code: 0,
                    message: "Could not check users".into()
                }
            )
        );
        assert_eq!(
            server_str(r#"{"cid":"4", "error":{"code":3, "message":"Invalid user identifier"}}"#),
            message(
                "4",
                ServerBody::Error {
                    code: 3,
                    message: "Invalid user identifier".into()
                }
            )
        );
    }

    #[test]
    fn server_events_with_several_presences_decode() {
        let other = "a3d1b2c0-0000-4000-8000-000000000002";
        let p = |session: &str, status: &str| {
            format!(
                r#"{{"user_id":"{ALICE}","session_id":"{session}","username":"alice","status":"{status}"}}"#
            )
        };
        let text = format!(
            r#"{{"status_presence_event":{{"joins":[{}, {}],"leaves":[{}]}}}}"#,
            p(SESSION, "new"),
            p(other, "x"),
            p(SESSION, "old")
        );
        assert_eq!(
            server_str(&text),
            Ok(ServerMessage {
                cid: String::new(),
                body: ServerBody::Event {
                    joins: vec![
                        presence(ALICE, SESSION, "alice", "new"),
                        presence(ALICE, other, "alice", "x")
                    ],
                    leaves: vec![presence(ALICE, SESSION, "alice", "old")],
                }
            })
        );
        assert_eq!(
            server_str(r#"{"status_presence_event":{}}"#),
            Ok(ServerMessage {
                cid: String::new(),
                body: ServerBody::Event {
                    joins: vec![],
                    leaves: vec![]
                }
            })
        );
    }

    #[test]
    fn server_messages_herald_never_sends_are_malformed() {
        let good = |extra: &str| {
            format!(
                r#"{{"status":{{"presences":[{{"user_id":"{ALICE}","session_id":"{SESSION}"{extra}}}]}}}}"#
            )
        };
        assert!(server_str(&good(r#","status":"x""#)).is_ok());
        for text in [
            good(""),
            good(r#","status":null"#),
            good(r#","status":"x","persistence":true"#),
            format!(
                r#"{{"status":{{"presences":[{{"user_id":"{}","session_id":"{SESSION}","status":""}}]}}}}"#,
                ALICE.to_uppercase()
            ),
            format!(
                r#"{{"status":{{"presences":[{{"user_id":"{{{ALICE}}}","session_id":"{SESSION}","status":""}}]}}}}"#
            ),
            format!(r#"{{"status":{{"presences":[{{"session_id":"{SESSION}","status":""}}]}}}}"#),
            r#"{"ping":{}}"#.to_owned(),
            r#"{"channel_join":{}}"#.to_owned(),
            r#"{"status_update":{}}"#.to_owned(),
            r#"{"cid":"1","pong":{},"status":{}}"#.to_owned(),
            r#"{"cid":1}"#.to_owned(),
            r#"{"pong":{"x":1}}"#.to_owned(),
            "[]".to_owned(),
        ] {
            assert!(server_str(&text).is_err(), "{text}");
        }
    }
}

//! `format=protobuf` sessions (reference §4.3, §11): one `Envelope` per binary
//! frame. Messages are built and read with this file's own prost structs
//! (Nakama's field numbers, written from the reference), and the fixed
//! replies are compared byte for byte with Go's `proto.Marshal` output.

use prost::Message as _;
use serde_json::json;

use crate::common::*;

// ---------------------------------------------------------------------------
// The schema, from nakama-common's realtime.proto (status messages only)
// ---------------------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
struct Envelope {
    #[prost(string, tag = "1")]
    cid: String,
    #[prost(oneof = "Body", tags = "11, 25, 26, 27, 28, 29, 32, 33")]
    message: Option<Body>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Body {
    #[prost(message, tag = "11")]
    Error(Error),
    #[prost(message, tag = "25")]
    Status(Status),
    #[prost(message, tag = "26")]
    StatusFollow(StatusFollow),
    #[prost(message, tag = "27")]
    StatusPresenceEvent(StatusPresenceEvent),
    #[prost(message, tag = "28")]
    StatusUnfollow(StatusUnfollow),
    #[prost(message, tag = "29")]
    StatusUpdate(StatusUpdate),
    #[prost(message, tag = "32")]
    Ping(Empty),
    #[prost(message, tag = "33")]
    Pong(Empty),
}

#[derive(Clone, PartialEq, prost::Message)]
struct Empty {}

#[derive(Clone, PartialEq, prost::Message)]
struct Error {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StringValue {
    #[prost(string, tag = "1")]
    value: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct UserPresence {
    #[prost(string, tag = "1")]
    user_id: String,
    #[prost(string, tag = "2")]
    session_id: String,
    #[prost(string, tag = "3")]
    username: String,
    #[prost(bool, tag = "4")]
    persistence: bool,
    #[prost(message, optional, tag = "5")]
    status: Option<StringValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Status {
    #[prost(message, repeated, tag = "1")]
    presences: Vec<UserPresence>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StatusFollow {
    #[prost(string, repeated, tag = "1")]
    user_ids: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    usernames: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StatusPresenceEvent {
    #[prost(message, repeated, tag = "2")]
    joins: Vec<UserPresence>,
    #[prost(message, repeated, tag = "3")]
    leaves: Vec<UserPresence>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StatusUnfollow {
    #[prost(string, repeated, tag = "1")]
    user_ids: Vec<String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StatusUpdate {
    #[prost(message, optional, tag = "1")]
    status: Option<StringValue>,
}

fn envelope(cid: &str, body: Body) -> Vec<u8> {
    Envelope {
        cid: cid.into(),
        message: Some(body),
    }
    .encode_to_vec()
}

fn update(cid: &str, status: Option<&str>) -> Vec<u8> {
    let status = status.map(|s| StringValue { value: s.into() });
    envelope(cid, Body::StatusUpdate(StatusUpdate { status }))
}

fn follow(cid: &str, user_ids: &[&str], usernames: &[&str]) -> Vec<u8> {
    let to_vec = |list: &[&str]| list.iter().map(|s| s.to_string()).collect();
    envelope(
        cid,
        Body::StatusFollow(StatusFollow {
            user_ids: to_vec(user_ids),
            usernames: to_vec(usernames),
        }),
    )
}

/// A presence as it must come: all ids set, persistence false, status present.
fn presence(user: &User, session: &str, status: &str) -> UserPresence {
    UserPresence {
        user_id: user.id.clone(),
        session_id: session.into(),
        username: user.username.clone(),
        persistence: false,
        status: Some(StringValue {
            value: status.into(),
        }),
    }
}

async fn protobuf_session(server: &TestServer, user: &User, status: bool) -> RawClient {
    server.raw(user, status, "&format=protobuf").await
}

/// The next binary frame, decoded.
async fn recv(client: &mut RawClient) -> Envelope {
    let frame = client.next_data().await;
    assert_eq!(
        frame.opcode, OP_BINARY,
        "protobuf travels in binary frames: {frame:?}"
    );
    Envelope::decode(frame.payload.as_slice()).expect("an Envelope")
}

async fn recv_bytes(client: &mut RawClient) -> Vec<u8> {
    let frame = client.next_data().await;
    assert_eq!(frame.opcode, OP_BINARY, "{frame:?}");
    frame.payload
}

/// The next message, which must be a status event without a cid.
async fn recv_event(client: &mut RawClient) -> StatusPresenceEvent {
    match recv(client).await {
        Envelope {
            cid,
            message: Some(Body::StatusPresenceEvent(event)),
        } if cid.is_empty() => event,
        other => panic!("expected an event, got {other:?}"),
    }
}

#[tokio::test]
async fn fixed_replies_are_byte_for_byte_what_go_marshals() {
    let server = TestServer::start();
    let alice = server.user("alice").await;
    let mut client = protobuf_session(&server, &alice, false).await;

    client
        .send(OP_BINARY, &envelope("7", Body::Ping(Empty {})))
        .await;
    assert_eq!(recv_bytes(&mut client).await, b"\x0a\x017\x8a\x02\x00");

    client.send(OP_BINARY, &follow("1", &[], &[])).await;
    assert_eq!(recv_bytes(&mut client).await, b"\x0a\x011\xca\x01\x00");

    client.send(OP_BINARY, &follow("4", &["nope"], &[])).await;
    assert_eq!(
        recv_bytes(&mut client).await,
        b"\x0a\x014\x5a\x1b\x08\x03\x12\x17Invalid user identifier"
    );

    client
        .send(
            OP_BINARY,
            &envelope(
                "6",
                Body::StatusUnfollow(StatusUnfollow { user_ids: vec![] }),
            ),
        )
        .await;
    assert_eq!(recv_bytes(&mut client).await, b"\x0a\x016");

    client.send(OP_BINARY, &update("3", Some(""))).await;
    assert_eq!(recv_bytes(&mut client).await, b"\x0a\x013");
    recv_event(&mut client).await;

    // Without a cid: the ack is an empty envelope, the pong has no cid.
    client.send(OP_BINARY, &update("", None)).await;
    assert_eq!(recv_bytes(&mut client).await, b"");
    recv_event(&mut client).await;
    client
        .send(OP_BINARY, &envelope("", Body::Ping(Empty {})))
        .await;
    assert_eq!(recv_bytes(&mut client).await, b"\x8a\x02\x00");

    let long = "x".repeat(2049);
    client.send(OP_BINARY, &update("5", Some(&long))).await;
    let reply = recv(&mut client).await;
    let expected = Error {
        code: 3,
        message: "Status must be 2048 characters or less".into(),
    };
    assert_eq!(
        reply,
        Envelope {
            cid: "5".into(),
            message: Some(Body::Error(expected))
        }
    );
}

/// The protobuf side of issue #18: a follow of users who are all offline is
/// a set `Status` with no presences, the same bytes as before and as Go.
#[tokio::test]
async fn a_follow_of_offline_users_is_an_empty_status_message() {
    let server = TestServer::start();
    let (never, hidden, follower) = (
        server.user("never").await,
        server.user("hidden").await,
        server.user("follower").await,
    );
    let _hidden = protobuf_session(&server, &hidden, false).await;
    let mut client = protobuf_session(&server, &follower, false).await;
    client
        .send(OP_BINARY, &follow("1", &[&never.id, &hidden.id], &[]))
        .await;
    assert_eq!(recv_bytes(&mut client).await, b"\x0a\x011\xca\x01\x00");
}

#[tokio::test]
async fn events_carry_the_status_wrapper_even_when_empty() {
    let server = TestServer::start();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut writer = protobuf_session(&server, &alice, true).await;
    let event = recv_event(&mut writer).await;
    assert_eq!(event.leaves, []);
    assert_eq!(event.joins.len(), 1);
    let session = event.joins[0].session_id.clone();
    assert_eq!(event.joins[0], presence(&alice, &session, ""));

    let mut follower = protobuf_session(&server, &bob, false).await;
    follower
        .send(OP_BINARY, &follow("1", &[&alice.id], &[]))
        .await;
    let snapshot = recv(&mut follower).await;
    let expected = Status {
        presences: vec![presence(&alice, &session, "")],
    };
    assert_eq!(
        snapshot,
        Envelope {
            cid: "1".into(),
            message: Some(Body::Status(expected))
        }
    );

    // The raw event holds the present-but-empty wrapper: field 5, length 0.
    writer.send(OP_BINARY, &update("2", Some("hi"))).await;
    recv(&mut writer).await;
    recv_event(&mut writer).await;
    let bytes = recv_bytes(&mut follower).await;
    assert!(
        bytes.starts_with(b"\xda\x01"),
        "field 27 first, no cid: {bytes:?}"
    );
    assert!(
        bytes.windows(6).any(|w| w == b"\x2a\x04\x0a\x02hi"),
        "{bytes:?}"
    );
    assert!(
        bytes.ends_with(b"\x2a\x00"),
        "the leave's empty status is encoded: {bytes:?}"
    );
    let event = Envelope::decode(bytes.as_slice()).expect("an Envelope");
    let expected = StatusPresenceEvent {
        joins: vec![presence(&alice, &session, "hi")],
        leaves: vec![presence(&alice, &session, "")],
    };
    assert_eq!(event.message, Some(Body::StatusPresenceEvent(expected)));

    // Going offline: a leave only.
    writer.send(OP_BINARY, &update("3", None)).await;
    recv(&mut writer).await;
    recv_event(&mut writer).await;
    let event = recv_event(&mut follower).await;
    assert_eq!(
        event,
        StatusPresenceEvent {
            joins: vec![],
            leaves: vec![presence(&alice, &session, "hi")]
        }
    );
}

#[tokio::test]
async fn json_and_protobuf_sessions_follow_each_other() {
    let server = TestServer::start();
    let (alice, bob, carol) = (
        server.user("alice").await,
        server.user("bob").await,
        server.user("carol").await,
    );
    let mut pb_writer = protobuf_session(&server, &alice, false).await;
    let mut json_follower = server.connect(&bob, false).await;
    let mut pb_follower = protobuf_session(&server, &carol, false).await;
    json_follower.follow("1", &[&alice.id]).await;
    pb_follower
        .send(OP_BINARY, &follow("1", &[], &["alice", "bob"]))
        .await;
    recv(&mut pb_follower).await;

    pb_writer
        .send(OP_BINARY, &update("1", Some("from protobuf")))
        .await;
    recv(&mut pb_writer).await;
    let own = recv_event(&mut pb_writer).await;
    let session = own.joins[0].session_id.clone();
    assert_eq!(
        assert_join(&json_follower.recv_event().await, &alice, "from protobuf"),
        session
    );
    assert_eq!(
        recv_event(&mut pb_follower).await.joins,
        [presence(&alice, &session, "from protobuf")]
    );

    // And a JSON writer seen from protobuf (followed by username above).
    json_follower.set_status("2", "from json").await;
    let event = recv_event(&mut pb_follower).await;
    assert_eq!(event.joins.len(), 1);
    assert_eq!(event.joins[0].username, "bob");
    assert_eq!(
        event.joins[0].status,
        Some(StringValue {
            value: "from json".into()
        })
    );
}

#[tokio::test]
async fn unknown_fields_are_skipped_like_go_proto_unmarshal() {
    let server = TestServer::start();
    let alice = server.user("alice").await;
    let mut client = protobuf_session(&server, &alice, false).await;
    // cid "1", an unknown length-delimited field 100, an unknown varint field 99, then ping.
    client
        .send(
            OP_BINARY,
            b"\x0a\x011\xa2\x06\x03abc\x98\x06\x05\x82\x02\x00",
        )
        .await;
    assert_eq!(recv_bytes(&mut client).await, b"\x0a\x011\x8a\x02\x00");
}

#[tokio::test]
async fn an_envelope_without_a_request_gets_an_error_then_the_socket_closes() {
    let server = TestServer::start();
    let alice = server.user("alice").await;
    let cases: [(&[u8], i32, &str); 3] = [
        (b"\x0a\x011", 2, "Missing message."),
        (b"\x0a\x011\xca\x01\x00", 1, "Unrecognized message."),
        (b"\x0a\x011\xda\x01\x00", 1, "Unrecognized message."),
    ];
    for (request, code, message) in cases {
        let mut client = protobuf_session(&server, &alice, false).await;
        client.send(OP_BINARY, request).await;
        let reply = recv(&mut client).await;
        let expected = Error {
            code,
            message: message.into(),
        };
        assert_eq!(
            reply,
            Envelope {
                cid: "1".into(),
                message: Some(Body::Error(expected))
            }
        );
        assert_eq!(
            client.expect_close().await,
            (1000, "error processing message".to_string())
        );
    }
}

#[tokio::test]
async fn undecodable_frames_close_the_session_without_an_envelope() {
    let server = TestServer::start();
    let alice = server.user("alice").await;
    let cases: [&[u8]; 6] = [
        b"\xff\xff\xff",
        b"\x0a\x05ab",                   // cid longer than the frame
        b"\x08\x01\x82\x02\x00",         // cid as a varint
        b"\x0a\x02\xff\xfe\x82\x02\x00", // cid not UTF-8
        b"\x82\x02\x05\x00",             // ping longer than the frame
        b"\x8a",                         // a truncated tag
    ];
    for request in cases {
        let mut client = protobuf_session(&server, &alice, false).await;
        client.send(OP_BINARY, request).await;
        assert_eq!(
            client.expect_close().await,
            (1000, "received malformed payload".to_string()),
            "{request:?}"
        );
    }
}

#[tokio::test]
async fn a_text_frame_on_a_protobuf_session_closes_it() {
    let server = TestServer::start();
    let alice = server.user("alice").await;
    let mut client = protobuf_session(&server, &alice, false).await;
    client
        .send_text(&json!({"ping": {}, "cid": "1"}).to_string())
        .await;
    assert_eq!(
        client.expect_close().await,
        (
            1000,
            "received unexpected WebSocket message type".to_string()
        )
    );
}

#[tokio::test]
async fn the_format_name_is_case_sensitive() {
    let server = TestServer::start();
    let alice = server.user("alice").await;
    for format in ["PROTOBUF", "Protobuf", "proto", "protobuf3"] {
        let target = format!("/ws?format={format}&token={}", alice.token);
        let reply = match RawClient::connect(server.addr, &target, &[]).await {
            Ok(_) => panic!("{format} was accepted"),
            Err(reply) => reply,
        };
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (400, "Invalid format parameter")
        );
    }
}

#[tokio::test]
async fn repeated_fields_and_oneof_members_merge_like_go_proto_unmarshal() {
    let server = TestServer::start();
    let alice = server.user("alice").await;
    let mut client = protobuf_session(&server, &alice, false).await;
    // The last cid wins; of two oneof members the last wins (pong: no reply).
    client
        .send(OP_BINARY, b"\x0a\x011\x0a\x012\x82\x02\x00\x8a\x02\x00")
        .await;
    client.expect_silence().await;
    client
        .send(OP_BINARY, b"\x0a\x011\x0a\x012\x8a\x02\x00\x82\x02\x00")
        .await;
    assert_eq!(recv_bytes(&mut client).await, b"\x0a\x012\x8a\x02\x00");

    // A present-but-empty StringValue is an empty status; an absent one is offline.
    client
        .send(OP_BINARY, b"\x0a\x013\xea\x01\x02\x0a\x00")
        .await;
    assert_eq!(recv_bytes(&mut client).await, b"\x0a\x013");
    let event = recv_event(&mut client).await;
    assert_eq!(event.joins.len(), 1);
    assert_eq!(
        event.joins[0].status,
        Some(StringValue {
            value: String::new()
        })
    );
    client.send(OP_BINARY, b"\x0a\x014\xea\x01\x00").await;
    assert_eq!(recv_bytes(&mut client).await, b"\x0a\x014");
    let event = recv_event(&mut client).await;
    assert_eq!((event.joins.len(), event.leaves.len()), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_follower_on_every_shard_gets_every_change_in_order_in_its_format() {
    const CHANGES: u32 = 300;
    let server = TestServer::start_with(|c| c.shards = 4);
    let writer = server.user("writer").await;
    let mut writer_session = server.connect(&writer, false).await;
    writer_session.set_status("0", "0").await;

    let mut readers = Vec::new();
    for i in 0..16 {
        let user = server.user(&format!("f{i}")).await;
        if i % 2 == 0 {
            let mut client = server.connect(&user, false).await;
            assert_eq!(client.follow("1", &[&writer.id]).await.len(), 1);
            readers.push(tokio::spawn(async move {
                for n in 1..=CHANGES {
                    let event = client.recv_event().await;
                    assert_eq!(event["leaves"][0]["status"], (n - 1).to_string(), "{event}");
                    assert_eq!(event["joins"][0]["status"], n.to_string(), "{event}");
                }
                client.expect_silence().await;
            }));
        } else {
            let mut client = protobuf_session(&server, &user, false).await;
            client
                .send(OP_BINARY, &follow("1", &[&writer.id], &[]))
                .await;
            recv(&mut client).await;
            readers.push(tokio::spawn(async move {
                for n in 1..=CHANGES {
                    let event = recv_event(&mut client).await;
                    let status = |list: &[UserPresence]| list[0].status.clone().map(|s| s.value);
                    assert_eq!(status(&event.leaves), Some((n - 1).to_string()));
                    assert_eq!(status(&event.joins), Some(n.to_string()));
                }
                client.expect_silence().await;
            }));
        }
    }
    for n in 1..=CHANGES {
        writer_session.set_status("w", &n.to_string()).await;
    }
    for reader in readers {
        reader.await.expect("a follower saw every change in order");
    }
}

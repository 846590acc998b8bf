//! What arrives on the socket that is not a well-formed request (reference
//! §3.2, §5, §8.3, RFC 6455): malformed payloads, envelopes without a
//! request, wrong frame types, oversize messages, fragmentation, control
//! frames and websocket protocol violations. Driven with hand-built frames.

use std::time::Duration;

use herald::engine::stats::CloseKind;
use serde_json::json;

use crate::common::*;

const MALFORMED: (u16, &str) = (1000, "received malformed payload");
const ERROR_PROCESSING: (u16, &str) = (1000, "error processing message");

async fn session(server: &TestServer) -> RawClient {
    let user = server
        .user(&format!("u{}", uuid::Uuid::new_v4().simple()))
        .await;
    server.raw(&user, false, "").await
}

fn expected(close: (u16, &str)) -> (u16, String) {
    (close.0, close.1.to_string())
}

#[tokio::test]
async fn malformed_payloads_close_the_session_without_an_envelope() {
    let server = TestServer::start();
    let payloads = [
        "not json",
        "",
        " ",
        "[]",
        "\"ping\"",
        "42",
        r#"{"cid":"1","ping":{}"#,
        r#"{"ping":{}} trailing"#,
        r#"{"ping":{}}{"ping":{}}"#,
        r#"{'ping':{}}"#,
        r#"{"cid":"1","bogus":{}}"#,
        r#"{"status_update":{"status":"x","extra":1}}"#,
        r#"{"status_follow":{"user_ids":[],"bogus":[]}}"#,
        r#"{"cid":1,"ping":{}}"#,
        r#"{"cid":["1"],"ping":{}}"#,
        r#"{"ping":{},"pong":{}}"#,
        r#"{"status_update":{"status":"a"},"status_follow":{}}"#,
        r#"{"status_update":{},"statusUpdate":{}}"#,
        r#"{"status_follow":{"user_ids":[],"userIds":[]}}"#,
        r#"{"cid":"1","cid":"2","ping":{}}"#,
        r#"{"ping":{},"ping":{}}"#,
        r#"{"status_update":{"status":"a","status":"b"}}"#,
        r#"{"status_follow":{"usernames":["a"],"usernames":["b"]}}"#,
        r#"{"status_update":{"status":5}}"#,
        r#"{"status_update":{"status":true}}"#,
        r#"{"status_update":{"status":{"value":"x"}}}"#,
        r#"{"status_update":"x"}"#,
        r#"{"status_follow":{"user_ids":"abc"}}"#,
        r#"{"status_follow":{"user_ids":[1]}}"#,
        r#"{"status_follow":{"user_ids":[null]}}"#,
        r#"{"ping":[]}"#,
        r#"{"ping":{"x":1}}"#,
        r#"{"STATUS_UPDATE":{}}"#,
        r#"{"cid":"1","cid":null,"ping":{}}"#,
        r#"{"status_update":null,"statusUpdate":{}}"#,
        r#"{"bogus":null,"ping":{}}"#,
        "\u{feff}{\"ping\":{}}",
        "{\"ping\":{}}\u{0}",
        r#"{"status_follow":{"usernames":[1]}}"#,
        r#"{"status_follow":{"usernames":"alice"}}"#,
    ];
    for (i, payload) in payloads.iter().enumerate() {
        let mut client = session(&server).await;
        client.send_text(payload).await;
        assert_eq!(
            client.expect_close().await,
            expected(MALFORMED),
            "{payload:?}"
        );
        server.wait_closed(CloseKind::Malformed, i as u64 + 1).await;
    }
}

#[tokio::test]
async fn odd_but_valid_json_is_accepted() {
    let server = TestServer::start();
    let mut client = session(&server).await;
    let accepted = [
        (r#"{"cid":null,"ping":{}}"#, r#"{"pong":{}}"#),
        (
            " \t\r\n{ \"ping\" : { } , \"cid\" : \"1\" }\n ",
            r#"{"cid":"1","pong":{}}"#,
        ),
        (
            r#"{"p\u0069ng":{},"\u0063id":"2"}"#,
            r#"{"cid":"2","pong":{}}"#,
        ),
        (r#"{"cid":"\u0033","ping":{}}"#, r#"{"cid":"3","pong":{}}"#),
        (
            r#"{"status_follow":{"user_ids":null,"usernames":null},"cid":"4"}"#,
            r#"{"cid":"4","status":{"presences":[]}}"#,
        ),
        (r#"{"status_unfollow":{},"cid":"5"}"#, r#"{"cid":"5"}"#),
        // A null member is not set, so it does not compete for the oneof.
        (
            r#"{"ping":{},"pong":null,"cid":"6"}"#,
            r#"{"cid":"6","pong":{}}"#,
        ),
        (
            r#"{"status_update":null,"ping":{},"cid":"7"}"#,
            r#"{"cid":"7","pong":{}}"#,
        ),
    ];
    for (request, reply) in accepted {
        client.send_text(request).await;
        assert_eq!(client.next_data().await.text(), reply, "{request}");
    }
    // An escaped surrogate pair is one character.
    client
        .send_text(r#"{"status_update":{"status":"\ud83d\ude00"},"cid":"6"}"#)
        .await;
    assert_eq!(client.next_data().await.text(), r#"{"cid":"6"}"#);
    let event = client.recv_json().await;
    assert_eq!(event["status_presence_event"]["joins"][0]["status"], "😀");
}

#[tokio::test]
async fn an_envelope_without_a_message_gets_code_2_then_the_socket_closes() {
    let server = TestServer::start();
    let cases = [
        (
            r#"{"cid":"1"}"#,
            json!({"cid": "1", "error": {"code": 2, "message": "Missing message."}}),
        ),
        (
            r#"{"status_update":null,"cid":"2"}"#,
            json!({"cid": "2", "error": {"code": 2, "message": "Missing message."}}),
        ),
        (
            "{}",
            json!({"error": {"code": 2, "message": "Missing message."}}),
        ),
    ];
    for (request, reply) in cases {
        let mut client = session(&server).await;
        client.send_text(request).await;
        assert_eq!(client.recv_json().await, reply, "{request}");
        assert_eq!(
            client.expect_close().await,
            expected(ERROR_PROCESSING),
            "{request}"
        );
    }
    // The exact bytes of the first case.
    let mut client = session(&server).await;
    client.send_text(r#"{"cid":"1"}"#).await;
    assert_eq!(
        client.next_data().await.text(),
        r#"{"cid":"1","error":{"code":2,"message":"Missing message."}}"#
    );
}

#[tokio::test]
async fn a_message_that_is_not_a_request_gets_code_1_then_the_socket_closes() {
    let server = TestServer::start();
    for (cid, member) in [
        ("1", "status"),
        ("2", "status_presence_event"),
        ("3", "error"),
        ("4", "channel_join"),
        ("5", "statusPresenceEvent"),
    ] {
        let mut client = session(&server).await;
        client
            .send_text(&format!(r#"{{"cid":"{cid}","{member}":{{}}}}"#))
            .await;
        let reply = client.recv_json().await;
        assert_eq!(
            reply,
            json!({"cid": cid, "error": {"code": 1, "message": "Unrecognized message."}}),
            "{member}"
        );
        assert_eq!(
            client.expect_close().await,
            expected(ERROR_PROCESSING),
            "{member}"
        );
    }
}

#[tokio::test]
async fn a_binary_frame_on_a_json_session_closes_it() {
    let server = TestServer::start();
    let mut client = session(&server).await;
    client.send(OP_BINARY, br#"{"ping":{},"cid":"1"}"#).await;
    assert_eq!(
        client.expect_close().await,
        expected((1000, "received unexpected WebSocket message type"))
    );
}

#[tokio::test]
async fn a_session_closed_for_a_bad_message_leaves_its_followers() {
    let server = TestServer::start();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut follower = server.connect(&bob, false).await;
    follower.follow("1", &[&alice.id]).await;
    let mut client = server.raw(&alice, true, "").await;
    client.recv_json().await;
    let session = assert_join(&follower.recv_event().await, &alice, "");
    client.send_text("garbage").await;
    client.expect_close().await;
    assert_eq!(
        assert_leave(&follower.recv_event().await, &alice, ""),
        session
    );
}

#[tokio::test]
async fn messages_over_max_message_bytes_close_with_1009() {
    let server = TestServer::start();
    assert_eq!(server.config.max_message_bytes, 4096);
    // Exactly at the limit is fine.
    let mut client = session(&server).await;
    let request = r#"{"ping":{},"cid":"1"}"#;
    let padded = format!("{request}{}", " ".repeat(4096 - request.len()));
    client.send_text(&padded).await;
    assert_eq!(client.next_data().await.text(), r#"{"cid":"1","pong":{}}"#);

    // One byte more is not, whole or in fragments.
    let over = format!("{padded} ");
    client.send_text(&over).await;
    assert_eq!(client.expect_close().await.0, 1009);

    let mut client = session(&server).await;
    let (head, tail) = over.split_at(2000);
    client
        .send_raw(&client_frame(OP_TEXT, head.as_bytes(), true))
        .await;
    client
        .send_raw(&client_frame(0x80 | OP_CONTINUATION, tail.as_bytes(), true))
        .await;
    assert_eq!(client.expect_close().await.0, 1009);

    // A huge declared length is refused from the header alone.
    let mut client = session(&server).await;
    client
        .send_raw(&[0x81, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4])
        .await;
    assert_eq!(client.expect_close().await.0, 1009);

    // The limit is configurable.
    let small = TestServer::start_with(|c| c.max_message_bytes = 64);
    let mut client = session(&small).await;
    client
        .send_text(&format!("{request}{}", " ".repeat(64 - request.len())))
        .await;
    assert_eq!(client.next_data().await.text(), r#"{"cid":"1","pong":{}}"#);
    client
        .send_text(&format!("{request}{}", " ".repeat(65 - request.len())))
        .await;
    assert_eq!(client.expect_close().await.0, 1009);
}

#[tokio::test]
async fn fragmented_messages_are_reassembled_around_control_frames() {
    let server = TestServer::start();
    let mut client = session(&server).await;
    client
        .send_raw(&client_frame(OP_TEXT, br#"{"cid":"7","#, true))
        .await;
    client
        .send_raw(&client_frame(OP_CONTINUATION, br#""pi"#, true))
        .await;
    client
        .send_raw(&client_frame(0x80 | OP_PING, b"between", true))
        .await;
    client
        .send_raw(&client_frame(OP_CONTINUATION, br#"ng""#, true))
        .await;
    client
        .send_raw(&client_frame(0x80 | OP_CONTINUATION, b":{}}", true))
        .await;
    let pong = client.next_data().await;
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (OP_PONG, &b"between"[..])
    );
    assert_eq!(client.next_data().await.text(), r#"{"cid":"7","pong":{}}"#);

    // A character split across fragments is still one character.
    let request = r#"{"status_update":{"status":"é😀"},"cid":"8"}"#.as_bytes();
    let split = request.iter().position(|&b| b == 0xf0).expect("the emoji") + 2;
    client
        .send_raw(&client_frame(OP_TEXT, &request[..split], true))
        .await;
    client
        .send_raw(&client_frame(
            0x80 | OP_CONTINUATION,
            &request[split..],
            true,
        ))
        .await;
    assert_eq!(client.next_data().await.text(), r#"{"cid":"8"}"#);
    assert_eq!(
        client.recv_json().await["status_presence_event"]["joins"][0]["status"],
        "é😀"
    );

    // A fragment of nothing at all, then the message.
    client.send_raw(&client_frame(OP_TEXT, b"", true)).await;
    client
        .send_raw(&client_frame(
            0x80 | OP_CONTINUATION,
            br#"{"ping":{},"cid":"9"}"#,
            true,
        ))
        .await;
    assert_eq!(client.next_data().await.text(), r#"{"cid":"9","pong":{}}"#);
}

#[tokio::test]
async fn frames_split_across_reads_and_batched_in_one_write_are_handled() {
    let server = TestServer::start();
    let mut client = session(&server).await;
    // One byte per write.
    let frame = client_frame(0x80 | OP_TEXT, br#"{"ping":{},"cid":"1"}"#, true);
    for byte in frame {
        client.send_raw(&[byte]).await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(client.next_data().await.text(), r#"{"cid":"1","pong":{}}"#);
    // Many requests in one write come back in order.
    let mut batch = Vec::new();
    for i in 0..50 {
        batch.extend(client_frame(
            0x80 | OP_TEXT,
            format!(r#"{{"ping":{{}},"cid":"{i}"}}"#).as_bytes(),
            true,
        ));
    }
    client.send_raw(&batch).await;
    for i in 0..50 {
        assert_eq!(
            client.next_data().await.text(),
            format!(r#"{{"cid":"{i}","pong":{{}}}}"#)
        );
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_even_when_a_follow_waits_for_another_shard() {
    let server = TestServer::start();
    let followed = server.user_on_shard("followed", 1).await;
    let follower = server.user_on_shard("follower", 0).await;
    let mut online = server.connect(&followed, true).await;
    online.recv_event().await;
    let mut client = server.raw(&follower, false, "").await;
    let mut batch = Vec::new();
    for request in [
        json!({"status_follow": {"user_ids": [followed.id]}, "cid": "1"}),
        json!({"ping": {}, "cid": "2"}),
        json!({"status_follow": {"usernames": [followed.username]}, "cid": "3"}),
        json!({"status_update": {"status": "x"}, "cid": "4"}),
        json!({"status_unfollow": {"user_ids": [followed.id]}, "cid": "5"}),
    ] {
        batch.extend(client_frame(
            0x80 | OP_TEXT,
            request.to_string().as_bytes(),
            true,
        ));
    }
    client.send_raw(&batch).await;
    let mut cids = Vec::new();
    while cids.len() < 5 {
        let message = client.recv_json().await;
        if let Some(cid) = message.get("cid") {
            cids.push(cid.as_str().expect("a string cid").to_string());
        }
    }
    assert_eq!(cids, ["1", "2", "3", "4", "5"]);
}

#[tokio::test]
async fn a_websocket_ping_is_answered_with_a_pong_carrying_its_payload() {
    let server = TestServer::start();
    let mut client = session(&server).await;
    let longest = [b'x'; 125];
    for payload in [&b"hello"[..], b"", &[0u8, 0xff, 0x80][..], &longest[..]] {
        client.send(OP_PING, payload).await;
        let pong = client.next_data().await;
        assert_eq!(pong.opcode, OP_PONG);
        assert!(pong.fin);
        assert_eq!(pong.payload, payload);
    }
    // An unsolicited pong needs no answer.
    client.send(OP_PONG, b"unasked").await;
    client.expect_silence().await;
}

#[tokio::test]
async fn text_that_is_not_utf8_closes_with_1007() {
    let server = TestServer::start();
    let mut client = session(&server).await;
    client
        .send(OP_TEXT, b"{\"ping\":{},\"cid\":\"\xff\"}")
        .await;
    assert_eq!(client.expect_close().await.0, 1007);

    // Also when the bad byte only shows up once fragments are joined.
    let mut client = session(&server).await;
    client
        .send_raw(&client_frame(
            OP_TEXT,
            b"{\"ping\":{},\"cid\":\"\xe2\x82",
            true,
        ))
        .await;
    client
        .send_raw(&client_frame(0x80 | OP_CONTINUATION, b"\"}", true))
        .await;
    assert_eq!(client.expect_close().await.0, 1007);
}

#[tokio::test]
async fn websocket_protocol_violations_close_with_1002() {
    let server = TestServer::start();
    let ping = br#"{"ping":{},"cid":"1"}"#;
    let mut fragmented_then_new = client_frame(OP_TEXT, b"{", true);
    fragmented_then_new.extend(client_frame(0x80 | OP_TEXT, ping, true));
    let violations: Vec<(&str, Vec<u8>)> = vec![
        ("unmasked frame", client_frame(0x80 | OP_TEXT, ping, false)),
        ("RSV1", client_frame(0xC0 | OP_TEXT, ping, true)),
        ("RSV2", client_frame(0xA0 | OP_TEXT, ping, true)),
        ("RSV3", client_frame(0x90 | OP_TEXT, ping, true)),
        ("opcode 3", client_frame(0x83, ping, true)),
        ("opcode 7", client_frame(0x87, ping, true)),
        ("opcode 11", client_frame(0x8B, b"", true)),
        ("opcode 15", client_frame(0x8F, b"", true)),
        ("fragmented ping", client_frame(OP_PING, b"x", true)),
        (
            "fragmented close",
            client_frame(OP_CLOSE, &1000u16.to_be_bytes(), true),
        ),
        (
            "126-byte ping",
            client_frame(0x80 | OP_PING, &[b'x'; 126], true),
        ),
        (
            "126-byte pong",
            client_frame(0x80 | OP_PONG, &[b'x'; 126], true),
        ),
        (
            "stray continuation",
            client_frame(0x80 | OP_CONTINUATION, ping, true),
        ),
        (
            "stray unfinished continuation",
            client_frame(OP_CONTINUATION, ping, true),
        ),
        ("new message inside a fragmented one", fragmented_then_new),
        (
            "one-byte close payload",
            client_frame(0x80 | OP_CLOSE, &[3], true),
        ),
        (
            "close code 999",
            client_frame(0x80 | OP_CLOSE, &999u16.to_be_bytes(), true),
        ),
        (
            "close code 1005",
            client_frame(0x80 | OP_CLOSE, &1005u16.to_be_bytes(), true),
        ),
        (
            "close code 1006",
            client_frame(0x80 | OP_CLOSE, &1006u16.to_be_bytes(), true),
        ),
        (
            "close code 5000",
            client_frame(0x80 | OP_CLOSE, &5000u16.to_be_bytes(), true),
        ),
        (
            "64-bit length with the high bit set",
            [
                &[0x81u8, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1][..],
                &[1, 2, 3, 4],
            ]
            .concat(),
        ),
    ];
    for (what, bytes) in violations {
        let mut client = session(&server).await;
        client.send_raw(&bytes).await;
        assert_eq!(client.expect_close().await.0, 1002, "{what}");
    }
}

#[tokio::test]
async fn a_client_close_is_echoed_and_ends_the_session() {
    let server = TestServer::start();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut follower = server.connect(&bob, false).await;
    follower.follow("1", &[&alice.id]).await;

    for code in [1000u16, 1001, 4000] {
        let mut client = server.raw(&alice, true, "").await;
        client.recv_json().await;
        assert_join(&follower.recv_event().await, &alice, "");
        client.send_close(code, "bye").await;
        let frame = client.next_data().await;
        assert_eq!(frame.close().map(|c| c.0), Some(code), "{frame:?}");
        client.expect_end().await;
        assert_leave(&follower.recv_event().await, &alice, "");
    }

    // An empty close is answered too.
    let mut client = server.raw(&alice, false, "").await;
    client.send(OP_CLOSE, b"").await;
    let frame = client.next_data().await;
    assert_eq!(frame.opcode, OP_CLOSE);
    assert!(matches!(frame.close(), None | Some((1000, _))), "{frame:?}");
    client.expect_end().await;

    // A close reason that is not UTF-8 is a protocol error of its own.
    let mut client = server.raw(&alice, false, "").await;
    client.send(OP_CLOSE, b"\x03\xe8\xff").await;
    assert_eq!(client.next_data().await.close().map(|c| c.0), Some(1007));
    client.expect_end().await;

    server.wait_closed(CloseKind::Client, 4).await;
}

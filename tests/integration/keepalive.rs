//! Websocket keepalive (reference §8.2): the server pings every
//! `ping_period_sec`; a session that shows no sign of life (a pong, solicited
//! or not, or every 20th data message) for `pong_wait_sec` is closed.
//!
//! Servers here ping every second and wait two, so a dead session is closed
//! within about three seconds; "stays open" is watched for four.

use std::time::Duration;

use herald::engine::stats::CloseKind;
use serde_json::json;

use crate::common::*;

/// How long a live session is watched: twice the pong wait.
const WATCH: Duration = Duration::from_secs(4);

fn fast_keepalive() -> TestServer {
    TestServer::start_with(|c| {
        c.ping_period_sec = 1;
        c.pong_wait_sec = 2;
    })
}

/// Reads for `duration`, answering every server ping with a pong of the same
/// payload. Returns how many pings came; panics on anything else.
async fn answer_pings_for(client: &mut RawClient, duration: Duration) -> usize {
    let deadline = tokio::time::Instant::now() + duration;
    let mut pings = 0;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match client.try_frame(left).await {
            Err(()) => return pings,
            Ok(Some(frame)) if frame.opcode == OP_PING => {
                pings += 1;
                client.send(OP_PONG, &frame.payload).await;
            }
            Ok(other) => panic!("expected only pings, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_server_sends_websocket_pings_with_an_empty_payload() {
    let server = fast_keepalive();
    let user = server.user("alice").await;
    let mut client = server.raw(&user, false, "").await;
    for _ in 0..2 {
        let frame = client.frame().await.expect("a ping before the end");
        assert_eq!(frame.opcode, OP_PING, "{frame:?}");
        assert!(frame.fin);
        assert!(frame.payload.is_empty());
        client.send(OP_PONG, b"").await;
    }
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed_and_leaves() {
    let server = fast_keepalive();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut follower = server.connect(&bob, false).await;
    follower.follow("1", &[&alice.id]).await;
    let mut silent = server.raw(&alice, true, "").await;
    silent.recv_json().await;
    let session = assert_join(&follower.recv_event().await, &alice, "");

    // expect_close skips (and never answers) pings. The follower is read
    // meanwhile, so tungstenite answers its pings.
    let ((code, _), event) = tokio::join!(silent.expect_close(), follower.recv_event());
    assert_eq!(code, 1000);
    assert_eq!(assert_leave(&event, &alice, ""), session);
    assert_eq!(server.stats().closed(CloseKind::Timeout), 1);
    follower.assert_open("2").await;
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_open() {
    let server = fast_keepalive();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut raw = server.raw(&alice, false, "").await;
    let mut library = server.connect(&bob, false).await;
    let (pings, quiet) = tokio::join!(answer_pings_for(&mut raw, WATCH), library.try_recv(WATCH));
    assert!(pings >= 2, "only {pings} pings in {WATCH:?}");
    assert_eq!(quiet, None);
    raw.send_text(r#"{"ping":{},"cid":"1"}"#).await;
    assert_eq!(raw.next_data().await.text(), r#"{"cid":"1","pong":{}}"#);
    library.assert_open("1").await;
    assert_eq!(server.stats().closed(CloseKind::Timeout), 0);
}

#[tokio::test]
async fn unsolicited_pongs_count_as_liveness() {
    // The .NET client's ClientWebSocket keep-alive sends pongs nobody asked for.
    let server = fast_keepalive();
    let user = server.user("alice").await;
    let mut client = server.raw(&user, false, "").await;
    let deadline = tokio::time::Instant::now() + WATCH;
    while tokio::time::Instant::now() < deadline {
        match client.try_frame(Duration::from_millis(500)).await {
            Err(()) => client.send(OP_PONG, b"keepalive").await,
            Ok(Some(frame)) if frame.opcode == OP_PING => {}
            Ok(other) => panic!("expected only pings, got {other:?}"),
        }
    }
    client.send_text(r#"{"ping":{},"cid":"1"}"#).await;
    assert_eq!(client.next_data().await.text(), r#"{"cid":"1","pong":{}}"#);
    assert_eq!(server.stats().closed(CloseKind::Timeout), 0);
}

#[tokio::test]
async fn a_few_data_messages_do_not_keep_a_session_alive() {
    let server = fast_keepalive();
    let user = server.user("alice").await;
    let mut client = server.raw(&user, false, "").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut sent = 0;
    let close = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still open after {sent} messages"
        );
        client
            .send_text(&json!({"ping": {}, "cid": sent.to_string()}).to_string())
            .await;
        sent += 1;
        assert!(sent < 20, "20 messages would count as liveness");
        let mut closed = None;
        let pause = tokio::time::Instant::now() + Duration::from_millis(300);
        while closed.is_none() {
            let left = pause.saturating_duration_since(tokio::time::Instant::now());
            match client.try_frame(left).await {
                Err(()) => break,
                Ok(Some(frame)) if frame.opcode == OP_CLOSE => closed = frame.close(),
                Ok(Some(_)) => {}
                Ok(None) => panic!("ended without a close frame"),
            }
        }
        if let Some(close) = closed {
            break close;
        }
    };
    assert_eq!(close.0, 1000);
    server.wait_closed(CloseKind::Timeout, 1).await;
}

#[tokio::test]
async fn every_twentieth_data_message_counts_as_liveness() {
    let server = fast_keepalive();
    let user = server.user("alice").await;
    let mut client = server.raw(&user, false, "").await;
    let deadline = tokio::time::Instant::now() + WATCH;
    let mut sent = 0u32;
    while tokio::time::Instant::now() < deadline {
        // 50 messages a second: one in 20 counts, so 2.5 signs of life a second.
        for _ in 0..10 {
            client
                .send_text(&json!({"ping": {}, "cid": sent.to_string()}).to_string())
                .await;
            sent += 1;
        }
        let mut replies = 0;
        while replies < 10 {
            let frame = client.frame().await.expect("open");
            match frame.opcode {
                OP_PING => {}
                OP_TEXT => replies += 1,
                _ => panic!("unexpected {frame:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(server.stats().closed(CloseKind::Timeout), 0);
}

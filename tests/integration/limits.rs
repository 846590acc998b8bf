//! Bounded resources (issue 5, §2) over real sockets: `--max-connections`
//! refuses with 503 rather than hanging, oversized heads get 431, a gzip bomb
//! gets 413 without being inflated, silent and half-sent requests are
//! dropped after the head timeout, and the opt-in rate limits answer error 3
//! while the session stays open.

use std::io::Write as _;
use std::time::{Duration, Instant};

use herald::transport::http::{HEAD_TIMEOUT, MAX_BODY_BYTES, MAX_HEAD_BYTES};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_the_upgrade_gets_503_and_a_freed_slot_is_reused() {
    const MAX: usize = 5;
    let server = TestServer::start_with(|c| c.max_connections = Some(MAX));
    let alice = server.user("alice").await;
    let mut open = Vec::new();
    for _ in 0..MAX {
        open.push(server.connect(&alice, false).await);
    }
    let target = format!("/ws?status=false&token={}", alice.token);
    for _ in 0..3 {
        let refused = RawClient::connect(server.addr, &target, &[])
            .await
            .err()
            .expect("the upgrade past --max-connections is refused");
        assert_eq!(refused.status, 503, "{refused:?}");
        assert_eq!(refused.body, "Too many connections");
    }
    // REST is not counted against the limit.
    server.user("bob").await;
    // The ones in keep working; one closing frees its slot.
    open[0].assert_open("1").await;
    let mut leaving = open.pop().expect("a session");
    leaving.close(1000).await;
    leaving.expect_close().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut again = loop {
        match RawClient::connect(server.addr, &target, &[]).await {
            Ok(client) => break client,
            Err(reply) => {
                assert_eq!(reply.status, 503);
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the closed session's slot was never freed"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    again.send_text(r#"{"ping":{},"cid":"2"}"#).await;
    assert_eq!(again.recv_json().await, json!({"cid": "2", "pong": {}}));
}

#[tokio::test]
async fn a_request_head_over_8_kib_gets_431() {
    let server = TestServer::start();
    let big = "a".repeat(MAX_HEAD_BYTES + 1);
    let reply = http_request(server.addr, "GET", "/", &[("X-Padding", &big)]).await;
    assert_eq!(reply.status, 431, "{reply:?}");
    // The same on the websocket path, and a long request line too.
    let reply = http_request(server.addr, "GET", &format!("/ws?x={big}"), &[]).await;
    assert_eq!(reply.status, 431, "{reply:?}");
    // Just under the limit is served.
    let fits = "a".repeat(MAX_HEAD_BYTES - 200);
    let reply = http_request(server.addr, "GET", "/", &[("X-Padding", &fits)]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
}

#[tokio::test]
async fn a_gzip_bomb_gets_413_without_being_inflated() {
    let server = TestServer::start();
    // 64 MiB of one JSON string compress to about 64 KiB.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(br#"{"id":""#).expect("compress");
    let zeros = vec![b'0'; 1 << 20];
    for _ in 0..64 {
        encoder.write_all(&zeros).expect("compress");
    }
    encoder.write_all(br#""}"#).expect("compress");
    let bomb = encoder.finish().expect("compress");
    assert!(bomb.len() < MAX_BODY_BYTES, "{} bytes", bomb.len());
    let reply = http(
        server.addr,
        "POST",
        "/v2/account/authenticate/custom?create=true",
        &[
            ("Authorization", DEFAULT_KEY_AUTH),
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
        ],
        &bomb,
    )
    .await;
    reply.assert_error(413, 3, "Request body too large.");

    // A small gzip body is inflated and served.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder
        .write_all(br#"{"id":"custom-gzipped"}"#)
        .expect("compress");
    let small = encoder.finish().expect("compress");
    let reply = http(
        server.addr,
        "POST",
        "/v2/account/authenticate/custom?create=true&username=gzipped",
        &[
            ("Authorization", DEFAULT_KEY_AUTH),
            ("Content-Type", "application/json"),
            ("Content-Encoding", "gzip"),
        ],
        &small,
    )
    .await;
    assert_eq!(user_of(&reply, "gzipped").username, "gzipped");
    // The server is still there for everyone else.
    let alice = server.user("alice").await;
    server.connect(&alice, false).await.assert_open("1").await;
}

/// Reads until the server closes `stream`; returns what it sent and when it closed.
async fn read_until_closed(mut stream: TcpStream, limit: Duration) -> (Vec<u8>, Instant) {
    let mut got = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut chunk = [0u8; 4096];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    });
    read.await
        .unwrap_or_else(|_| panic!("the connection was still open after {limit:?}"));
    (got, Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_sent_requests_are_dropped_after_the_head_timeout() {
    let server = TestServer::start();
    let started = Instant::now();
    let silent = TcpStream::connect(server.addr).await.expect("connect");
    let mut partial = TcpStream::connect(server.addr).await.expect("connect");
    partial
        .write_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
        .await
        .expect("send half a head");
    // Meanwhile everyone else is served.
    let alice = server.user("alice").await;
    let mut client = server.connect(&alice, false).await;
    client.assert_open("1").await;

    let limit = HEAD_TIMEOUT + Duration::from_secs(10);
    let (silent_got, silent_closed) = read_until_closed(silent, limit).await;
    let (_, partial_closed) = read_until_closed(partial, limit).await;
    assert!(silent_got.is_empty() || silent_got.starts_with(b"HTTP/1.1 408"));
    // Not before the timeout: a slow but live client gets all of it.
    for closed in [silent_closed, partial_closed] {
        let waited = closed - started;
        assert!(
            waited + Duration::from_millis(500) >= HEAD_TIMEOUT,
            "closed after only {waited:?}"
        );
    }
    client.assert_open("2").await;
}

/// True if `reply` is the rate limit's error 3 with `message` (same cid as
/// `served`); otherwise it must be `served`.
fn is_limited(reply: &serde_json::Value, message: &str, served: serde_json::Value) -> bool {
    if reply.get("error").is_none() {
        assert_eq!(reply, &served);
        return false;
    }
    let error = json!({"cid": served["cid"], "error": {"code": 3, "message": message}});
    assert_eq!(reply, &error);
    true
}

#[tokio::test]
async fn past_the_status_update_rate_the_request_gets_error_3_and_the_session_stays() {
    const RATE: u32 = 5;
    let server = TestServer::start_with(|c| c.status_update_rate = RATE);
    let alice = server.user("alice").await;
    let mut session = server.connect(&alice, false).await;
    // Sent back to back, well within one second: the first RATE pass.
    // (A second boundary in between can only let more pass, never fewer.)
    let mut limited = 0;
    for n in 0..RATE * 3 {
        let cid = format!("u{n}");
        session
            .send_json(json!({"status_update": {"status": format!("s{n}")}, "cid": cid}))
            .await;
        let reply = session
            .next_matching("the update's reply", |v| v["cid"] == cid.as_str())
            .await;
        if is_limited(
            &reply,
            "Status update rate limit exceeded",
            json!({"cid": cid}),
        ) {
            limited += 1;
        }
    }
    assert!(limited >= RATE, "only {limited} of {} limited", RATE * 3);
    // Open: a ping is answered (after the echoes of the accepted updates).
    session.send_json(json!({"ping": {}, "cid": "p"})).await;
    let pong = session.next_matching("the pong", |v| v["cid"] == "p").await;
    assert_eq!(pong, json!({"cid": "p", "pong": {}}));
    // A second later the budget is back.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    session
        .send_json(json!({"status_update": {"status": "later"}, "cid": "late"}))
        .await;
    let reply = session
        .next_matching("the later update's reply", |v| v["cid"] == "late")
        .await;
    assert_eq!(reply, json!({"cid": "late"}));
}

#[tokio::test]
async fn past_the_follow_rate_the_request_gets_error_3_and_the_session_stays() {
    const RATE: u32 = 10;
    let server = TestServer::start_with(|c| c.follow_rate = RATE);
    let alice = server.user("alice").await;
    let mut session = server.connect(&alice, false).await;
    let ids: Vec<String> = (0..RATE * 3)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    let mut limited = 0;
    for (n, chunk) in ids.chunks(4).enumerate() {
        let cid = format!("f{n}");
        let reply = session
            .request(json!({"status_follow": {"user_ids": chunk}, "cid": cid}))
            .await;
        let served = json!({"cid": cid, "status": {"presences": []}});
        if is_limited(&reply, "Follow rate limit exceeded", served) {
            limited += 1;
        }
    }
    assert!(limited >= 1, "30 ids in one second passed a limit of 10");
    session.assert_open("p").await;
    // More ids than the whole budget in one request are refused, too.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let reply = session
        .request(json!({"status_follow": {"user_ids": ids[..RATE as usize + 1]}, "cid": "all"}))
        .await;
    assert_eq!(reply["error"]["code"], 3, "{reply}");
    session.assert_open("q").await;
}

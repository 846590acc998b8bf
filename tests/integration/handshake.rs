//! `GET /ws` and the other plain HTTP routes (reference §1, §2, §8.3):
//! format and token checks before the upgrade, `status` parsed like Go's
//! `strconv.ParseBool`, and the small routes a load balancer or a browser uses.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::common::*;

const INVALID_TOKEN: &str = "Missing or invalid token";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// An HS256 JWT with exactly `claims`, signed with `key`.
fn mint(claims: &Value, key: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
    )
    .expect("sign a token")
}

/// Claims as Nakama writes them, for `user`, expiring at `exp`.
fn claims(user: &User, exp: i64) -> Value {
    json!({"tid": uuid::Uuid::new_v4().to_string(), "uid": user.id, "usn": user.username, "exp": exp, "iat": now()})
}

/// Expects the handshake for `target` to be refused with `status` and the plain text `body`.
async fn expect_refused(
    server: &TestServer,
    target: &str,
    headers: &[(&str, &str)],
    status: u16,
    body: &str,
) {
    match RawClient::connect(server.addr, target, headers).await {
        Ok(_) => panic!("{target} was upgraded, expected {status}"),
        Err(reply) => {
            assert_eq!(reply.status, status, "{target}: {reply:?}");
            assert_eq!(reply.body, body, "{target}");
            let content_type = reply.header("content-type").unwrap_or_default();
            assert!(
                content_type.starts_with("text/plain"),
                "{target}: {content_type}"
            );
        }
    }
}

async fn expect_upgraded(server: &TestServer, target: &str, headers: &[(&str, &str)]) -> RawClient {
    match RawClient::connect(server.addr, target, headers).await {
        Ok(client) => client,
        Err(reply) => panic!("{target} was refused: {reply:?}"),
    }
}

#[tokio::test]
async fn an_unknown_format_is_refused_with_400_before_the_token_is_looked_at() {
    let server = TestServer::start();
    let user = server.user("alice").await;
    for format in ["xml", "JSON", "Protobuf", "json%20", "proto"] {
        let target = format!("/ws?format={format}&token={}", user.token);
        expect_refused(&server, &target, &[], 400, "Invalid format parameter").await;
    }
    // The format is checked first: no token at all still gets 400.
    expect_refused(
        &server,
        "/ws?format=xml",
        &[],
        400,
        "Invalid format parameter",
    )
    .await;
}

#[tokio::test]
async fn json_format_may_be_named_or_left_empty() {
    let server = TestServer::start();
    let user = server.user("alice").await;
    for format in ["&format=json", "&format=", ""] {
        let target = format!("/ws?lang=en&status=false&token={}{format}", user.token);
        let mut client = expect_upgraded(&server, &target, &[]).await;
        client.send_text(r#"{"ping":{},"cid":"1"}"#).await;
        let reply = client.next_data().await;
        assert_eq!(reply.opcode, OP_TEXT, "JSON travels in text frames");
        assert_eq!(reply.text(), r#"{"cid":"1","pong":{}}"#);
    }
}

#[tokio::test]
async fn missing_or_invalid_tokens_are_refused_with_401() {
    let server = TestServer::start();
    let user = server.user("alice").await;
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims(&user, now() + 600).to_string());
    let alg_none = format!("{header}.{payload}.");
    let mut tampered = user.token.clone();
    tampered.pop();
    tampered.push(if user.token.ends_with('A') { 'B' } else { 'A' });

    let tokens = [
        ("missing", None),
        ("empty", Some(String::new())),
        ("garbage", Some("not-a-jwt".to_string())),
        ("tampered signature", Some(tampered)),
        (
            "other key",
            Some(mint(&claims(&user, now() + 600), "someotherkey")),
        ),
        (
            "expired",
            Some(mint(&claims(&user, now() - 5), "defaultencryptionkey")),
        ),
        (
            "no exp",
            Some(mint(
                &json!({"uid": user.id, "usn": user.username, "iat": now()}),
                "defaultencryptionkey",
            )),
        ),
        (
            "uid not a uuid",
            Some(mint(
                &json!({"uid": "alice", "usn": "alice", "exp": now() + 600}),
                "defaultencryptionkey",
            )),
        ),
        ("refresh token", Some(user.refresh_token.clone())),
        ("alg none", Some(alg_none)),
    ];
    for (what, token) in tokens {
        let target = match &token {
            None => "/ws?lang=en&status=true".to_string(),
            Some(token) => format!("/ws?lang=en&status=true&token={token}"),
        };
        match RawClient::connect(server.addr, &target, &[]).await {
            Ok(_) => panic!("{what}: upgraded"),
            Err(reply) => {
                assert_eq!(reply.status, 401, "{what}: {reply:?}");
                assert_eq!(reply.body, INVALID_TOKEN, "{what}");
            }
        }
    }
    // The same valid claims signed with the right key are accepted.
    let good = mint(&claims(&user, now() + 600), "defaultencryptionkey");
    expect_upgraded(&server, &format!("/ws?token={good}"), &[]).await;
}

#[tokio::test]
async fn an_authorization_header_takes_precedence_over_the_query_token() {
    let server = TestServer::start();
    let user = server.user("alice").await;
    let bearer = format!("Bearer {}", user.token);

    // A good header wins over a bad query token, and needs no query token at all.
    expect_upgraded(&server, "/ws?token=garbage", &[("Authorization", &bearer)]).await;
    expect_upgraded(&server, "/ws", &[("Authorization", &bearer)]).await;

    // A present header must be a good Bearer token, whatever the query says.
    let good_query = format!("/ws?token={}", user.token);
    for header in [
        "Bearer garbage",
        "Bearer ",
        "",
        "Basic ZGVmYXVsdGtleTo=",
        &format!("bearer {}", user.token),
        &user.token,
    ] {
        expect_refused(
            &server,
            &good_query,
            &[("Authorization", header)],
            401,
            INVALID_TOKEN,
        )
        .await;
    }
}

#[tokio::test]
async fn a_percent_encoded_token_is_decoded() {
    let server = TestServer::start();
    let user = server.user("alice").await;
    let encoded = user.token.replace('.', "%2E");
    expect_upgraded(&server, &format!("/ws?lang=en&token={encoded}"), &[]).await;
}

#[tokio::test]
async fn a_valid_token_of_a_user_never_seen_is_accepted() {
    // Tokens minted elsewhere with the same key (another Nakama) work.
    let server = TestServer::start();
    let stranger = server.external_user("stranger");
    let mut client = server.connect(&stranger, true).await;
    assert_join(&client.recv_event().await, &stranger, "");
}

#[tokio::test]
async fn status_is_parsed_like_go_parse_bool() {
    let server = TestServer::start();
    let truthy = ["1", "t", "T", "TRUE", "true", "True"];
    let falsy = [
        "0", "f", "F", "FALSE", "false", "False", "", "yes", "on", "tRUE", "2",
    ];
    for (i, value) in truthy.iter().chain(falsy.iter()).enumerate() {
        // A user per value: sessions of one user see each other's joins.
        let user = server.user(&format!("user{i}")).await;
        let mut client = server
            .connect_query(&format!("lang=xx&status={value}&token={}", user.token))
            .await;
        if truthy.contains(value) {
            assert_join(&client.recv_event().await, &user, "");
        } else {
            client.expect_silence().await;
        }
    }
    // No status parameter at all: false.
    let user = server.user("nostatus").await;
    let mut client = server.connect_query(&format!("token={}", user.token)).await;
    client.expect_silence().await;
}

#[tokio::test]
async fn no_compression_extension_is_negotiated() {
    let server = TestServer::start();
    let user = server.user("alice").await;
    let target = format!("/ws?token={}", user.token);
    // RawClient::handshake asserts the 101 carries no Sec-WebSocket-Extensions.
    let mut client = expect_upgraded(
        &server,
        &target,
        &[(
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits",
        )],
    )
    .await;
    client.send_text(r#"{"ping":{},"cid":"1"}"#).await;
    assert_eq!(client.next_data().await.text(), r#"{"cid":"1","pong":{}}"#);
}

#[tokio::test]
async fn ws_is_get_only_and_needs_an_upgrade() {
    let server = TestServer::start();
    let user = server.user("alice").await;
    let target = format!("/ws?token={}", user.token);
    let reply = http_request(server.addr, "POST", &target, &[("Content-Length", "0")]).await;
    assert_eq!(reply.status, 405, "{reply:?}");
    let reply = http_request(server.addr, "GET", &target, &[]).await;
    assert_eq!(
        reply.status, 400,
        "a GET without upgrade headers: {reply:?}"
    );
}

#[tokio::test]
async fn root_answers_200_with_an_empty_body() {
    let server = TestServer::start();
    let reply = http_request(server.addr, "GET", "/", &[]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "");
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
}

#[tokio::test]
async fn unknown_routes_get_404() {
    let server = TestServer::start();
    for target in [
        "/nope",
        "/v2/account",
        "/ws/",
        "/v2/account/authenticate/email",
    ] {
        let reply = http_request(server.addr, "GET", target, &[]).await;
        assert_eq!(reply.status, 404, "{target}: {reply:?}");
    }
}

#[tokio::test]
async fn cors_preflights_are_answered_for_browser_clients() {
    let server = TestServer::start();
    let reply = http_request(
        server.addr,
        "OPTIONS",
        "/v2/account/authenticate/custom?create=true&username=alice&",
        &[
            ("Origin", "http://example.test"),
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization,content-type",
            ),
        ],
    )
    .await;
    assert!((200..300).contains(&reply.status), "{reply:?}");
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("*"),
        "{reply:?}"
    );
    let allowed_headers = reply
        .header("access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    for header in ["authorization", "content-type"] {
        assert!(
            allowed_headers.contains(header),
            "{header} not allowed: {reply:?}"
        );
    }
    let allowed_methods = reply
        .header("access-control-allow-methods")
        .unwrap_or_default();
    assert!(allowed_methods.contains("POST"), "{reply:?}");

    // The real request then carries the origin header too.
    let reply = http_post(
        server.addr,
        "/v2/account/authenticate/custom?username=alice",
        Some(DEFAULT_KEY_AUTH),
        r#"{"id":"custom-alice"}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.header("access-control-allow-origin"), Some("*"));
}

#[tokio::test]
async fn an_open_socket_outlives_its_token() {
    // Expiry is checked at connect only (reference §8.3).
    let server = TestServer::start();
    let user = server.user("alice").await;
    let token = mint(&claims(&user, now() + 2), "defaultencryptionkey");
    let mut client = server
        .connect_query(&format!("status=true&token={token}"))
        .await;
    assert_join(&client.recv_event().await, &user, "");
    tokio::time::sleep(Duration::from_millis(3100)).await;
    client.assert_open("1").await;
    client.set_status("2", "still here").await;
    // A new socket with the same token is refused now.
    expect_refused(
        &server,
        &format!("/ws?token={token}"),
        &[],
        401,
        INVALID_TOKEN,
    )
    .await;
}

#[tokio::test]
async fn no_subprotocol_is_selected() {
    let server = TestServer::start();
    let user = server.user("alice").await;
    let target = format!("/ws?token={}", user.token);
    let stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let client = RawClient::handshake(
        stream,
        &target,
        &[("Sec-WebSocket-Protocol", "nakama, json")],
    )
    .await;
    assert!(client.is_ok(), "{:?}", client.err());
    // tungstenite checks the 101 in full; asking for no protocol must get none.
    let mut session = server.connect(&user, false).await;
    session.assert_open("1").await;
}

#[tokio::test]
async fn frames_sent_together_with_the_handshake_are_not_lost() {
    // Whichever shard accepts the socket, it moves to the user's home shard
    // with the bytes already read; with two shards both paths are taken.
    let server = TestServer::start();
    for i in 0..12 {
        let user = server.user(&format!("early{i}")).await;
        let mut stream = tokio::net::TcpStream::connect(server.addr)
            .await
            .expect("connect");
        let request = format!(
            "GET /ws?status=true&token={} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
            user.token
        );
        let mut bytes = request.into_bytes();
        bytes.extend(client_frame(
            0x80 | OP_TEXT,
            br#"{"ping":{},"cid":"early"}"#,
            true,
        ));
        bytes.extend(client_frame(0x80 | OP_PING, b"early ping", true));
        tokio::io::AsyncWriteExt::write_all(&mut stream, &bytes)
            .await
            .expect("send");
        let mut client = RawClient::handshake_sent(stream).await.expect("upgrade");
        let mut seen = Vec::new();
        while seen.len() < 3 {
            let frame = client.next_data().await;
            seen.push(match frame.opcode {
                OP_PONG => format!("pong {}", String::from_utf8_lossy(&frame.payload)),
                _ => frame.text(),
            });
        }
        // The join and the replies may interleave; the replies keep their order.
        assert!(
            seen.contains(&r#"{"cid":"early","pong":{}}"#.to_string()),
            "{seen:?}"
        );
        assert!(seen.contains(&"pong early ping".to_string()), "{seen:?}");
        assert!(
            seen.iter()
                .any(|s| s.starts_with(r#"{"status_presence_event""#)),
            "{seen:?}"
        );
    }
}

#[tokio::test]
async fn shutdown_closes_every_session_with_1001() {
    let server = TestServer::start();
    let alice = server.user("alice").await;
    let mut library = server.connect(&alice, false).await;
    let mut raw = server.raw(&alice, false, "").await;
    let shutdown = tokio::task::spawn_blocking(move || drop(server));
    let (code, _) = raw.expect_close().await;
    assert_eq!(code, 1001);
    assert!(matches!(
        library.recv().await,
        Received::Close(Some((1001, _)))
    ));
    shutdown.await.expect("the server shut down");
}

#[tokio::test]
async fn browser_style_upgrade_headers_are_accepted_and_bad_versions_refused() {
    let server = TestServer::start();
    let user = server.user("alice").await;
    let target = format!("/ws?token={}", user.token);
    // Firefox sends "Connection: keep-alive, Upgrade"; case does not matter.
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: http://example.test\r\n\r\n"
    );
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .expect("send");
    let mut client = RawClient::handshake_sent(stream).await.expect("upgrade");
    client.send_text(r#"{"ping":{},"cid":"1"}"#).await;
    assert_eq!(client.next_data().await.text(), r#"{"cid":"1","pong":{}}"#);

    // An unsupported version is refused before the upgrade.
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n"
    );
    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes())
        .await
        .expect("send");
    let refused = RawClient::handshake_sent(stream)
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.status, 400, "{refused:?}");
}

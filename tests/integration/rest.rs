//! The REST endpoints (reference §9) over real HTTP/1.1 against a whole
//! in-process server, driven by raw requests over a TcpStream.

use herald::auth::{Tokens, Vars};
use herald::ids::UserId;
use herald::transport::http::MAX_BODY_BYTES;

use crate::common::*;

const MAX_BODY: usize = MAX_BODY_BYTES;

/// The server and the keys it signs with.
struct Rest {
    server: TestServer,
    tokens: Tokens,
}

impl Rest {
    fn start() -> Rest {
        let server = TestServer::start();
        let tokens = server.tokens();
        Rest { server, tokens }
    }
}

async fn post(
    addr: std::net::SocketAddr,
    target: &str,
    auth: Option<&str>,
    body: &str,
) -> HttpReply {
    http_post(addr, target, auth, body).await
}

async fn exchange(addr: std::net::SocketAddr, request: Vec<u8>) -> HttpReply {
    http_exchange(addr, &request).await
}

async fn authenticate_custom(addr: std::net::SocketAddr, query: &str, body: &str) -> HttpReply {
    post(
        addr,
        &format!("/v2/account/authenticate/custom{query}"),
        Some(DEFAULT_KEY_AUTH),
        body,
    )
    .await
}

#[tokio::test]
async fn nakama_js_authenticate_creates_then_finds_the_account() {
    let rest = Rest::start();
    let server = &rest.server;
    let first = authenticate_custom(
        server.addr,
        "?create=true&username=alice&",
        r#"{"id":"custom-id-123","vars":{}}"#,
    )
    .await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.header("content-type"), Some("application/json"));
    let json = first.json();
    assert_eq!(json["created"], true);
    let token = json["token"].as_str().expect("token");
    let refresh_token = json["refresh_token"].as_str().expect("refresh token");
    let claims = rest.tokens.verify_session(token).expect("valid token");
    assert_eq!(claims.username, "alice");
    let refresh_claims = rest
        .tokens
        .verify_refresh(refresh_token)
        .expect("valid refresh token");
    assert_eq!(refresh_claims.token_id, claims.token_id);

    let again = authenticate_custom(
        server.addr,
        "?create=true&username=somebody-else&",
        r#"{"id":"custom-id-123"}"#,
    )
    .await;
    assert_eq!(again.status, 200, "{}", again.body);
    let json = again.json();
    assert!(json.get("created").is_none(), "{}", again.body);
    let token = json["token"].as_str().expect("token");
    let again_claims = rest.tokens.verify_session(token).expect("valid token");
    assert_eq!(again_claims.user_id, claims.user_id);
    assert_eq!(again_claims.username, "alice");
}

#[tokio::test]
async fn device_authenticate_carries_vars_and_generates_a_username() {
    let rest = Rest::start();
    let server = &rest.server;
    let reply = post(
        server.addr,
        "/v2/account/authenticate/device",
        Some(DEFAULT_KEY_AUTH),
        r#"{"id":"device-id-123456","vars":{"level":"3"},"unknown":{"x":1}}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let json = reply.json();
    assert_eq!(json["created"], true);
    let claims = rest
        .tokens
        .verify_session(json["token"].as_str().expect("token"))
        .expect("valid");
    assert_eq!(claims.vars.get("level").map(String::as_str), Some("3"));
    assert_eq!(claims.username.len(), 10);
    assert!(claims.username.bytes().all(|b| b.is_ascii_alphabetic()));
}

#[tokio::test]
async fn server_key_is_required_and_checked() {
    let rest = Rest::start();
    let server = &rest.server;
    let path = "/v2/account/authenticate/custom";
    let body = r#"{"id":"custom-id-123"}"#;

    let reply = post(server.addr, path, None, body).await;
    reply.assert_error(401, 16, "Server key required");
    assert_eq!(
        reply.header("www-authenticate"),
        Some("Server key required")
    );

    let wrong = "Basic d3JvbmdrZXk6"; // "wrongkey:"
    let reply = post(server.addr, path, Some(wrong), body).await;
    reply.assert_error(401, 16, "Server key invalid");
    assert_eq!(reply.header("www-authenticate"), Some("Server key invalid"));

    let reply = post(server.addr, path, Some("Bearer abc"), body).await;
    reply.assert_error(401, 16, "Server key invalid");

    let reply = post(server.addr, "/v2/account/session/refresh", None, "{}").await;
    reply.assert_error(401, 16, "Server key required");
}

#[tokio::test]
async fn request_errors_use_nakama_texts() {
    let rest = Rest::start();
    let server = &rest.server;
    let addr = server.addr;

    authenticate_custom(addr, "", "")
        .await
        .assert_error(400, 3, "Custom ID is required.");
    post(
        addr,
        "/v2/account/authenticate/device",
        Some(DEFAULT_KEY_AUTH),
        "",
    )
    .await
    .assert_error(400, 3, "Device ID is required.");
    authenticate_custom(addr, "", r#"{"id":""}"#)
        .await
        .assert_error(400, 3, "Custom ID is required.");
    authenticate_custom(addr, "", r#"{"id":"short"}"#)
        .await
        .assert_error(400, 3, "Custom ID invalid, must be 6-128 bytes.");
    authenticate_custom(addr, "", r#"{"id":"has a space"}"#)
        .await
        .assert_error(
            400,
            3,
            "Custom ID invalid, no spaces or control characters allowed.",
        );
    post(
        addr,
        "/v2/account/authenticate/device",
        Some(DEFAULT_KEY_AUTH),
        r#"{"id":"dev-12345"}"#,
    )
    .await
    .assert_error(400, 3, "Device ID invalid, must be 10-128 bytes.");
    authenticate_custom(addr, "?username=bad%09name", r#"{"id":"custom-id-123"}"#)
        .await
        .assert_error(
            400,
            3,
            "Username invalid, no spaces or control characters allowed.",
        );
    let long_name = "x".repeat(129);
    authenticate_custom(
        addr,
        &format!("?username={long_name}"),
        r#"{"id":"custom-id-123"}"#,
    )
    .await
    .assert_error(400, 3, "Username invalid, must be 1-128 bytes.");
    authenticate_custom(addr, "?create=maybe", r#"{"id":"custom-id-123"}"#)
        .await
        .assert_error(
            400,
            3,
            "parsing field \"create\": strconv.ParseBool: parsing \"maybe\": invalid syntax",
        );

    let reply = authenticate_custom(addr, "", r#"{"id": oops}"#).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    assert_eq!(reply.json()["code"], 3);

    authenticate_custom(addr, "?create=false&", r#"{"id":"nobody-here"}"#)
        .await
        .assert_error(404, 5, "User account not found.");

    let owner = authenticate_custom(addr, "?username=taken&", r#"{"id":"owner-id-1"}"#).await;
    assert_eq!(owner.status, 200, "{}", owner.body);
    authenticate_custom(addr, "?username=taken&", r#"{"id":"owner-id-2"}"#)
        .await
        .assert_error(409, 6, "Username is already in use.");
}

#[tokio::test]
async fn bodies_over_the_cap_get_413() {
    let rest = Rest::start();
    let server = &rest.server;
    let big_id = "x".repeat(MAX_BODY);
    let body = format!(r#"{{"id":"{big_id}"}}"#);
    let reply = authenticate_custom(server.addr, "", &body).await;
    reply.assert_error(413, 3, "Request body too large.");

    // Chunked, so the size is only known while reading.
    let chunk = "y".repeat(MAX_BODY / 2 + 10);
    let request = format!(
        "POST /v2/account/authenticate/custom HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: {DEFAULT_KEY_AUTH}\r\nTransfer-Encoding: chunked\r\n\r\n{len:x}\r\n{chunk}\r\n{len:x}\r\n{chunk}\r\n0\r\n\r\n",
        len = chunk.len()
    );
    let reply = exchange(server.addr, request.into_bytes()).await;
    reply.assert_error(413, 3, "Request body too large.");

    // Exactly at the cap is fine (and then fails validation as an over-long id).
    let id = "z".repeat(MAX_BODY - r#"{"id":""}"#.len());
    let reply = authenticate_custom(server.addr, "", &format!(r#"{{"id":"{id}"}}"#)).await;
    reply.assert_error(400, 3, "Custom ID invalid, must be 6-128 bytes.");
}

#[tokio::test]
async fn refresh_issues_a_new_pair_with_the_same_token_id() {
    let rest = Rest::start();
    let server = &rest.server;
    let reply = authenticate_custom(
        server.addr,
        "?username=refresher",
        r#"{"id":"refresh-id-1","vars":{"a":"1"}}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let json = reply.json();
    let session_token = json["token"].as_str().expect("token").to_string();
    let refresh_token = json["refresh_token"].as_str().expect("refresh").to_string();
    let old = rest.tokens.verify_session(&session_token).expect("valid");

    let refresh_path = "/v2/account/session/refresh";
    let kept = post(
        server.addr,
        refresh_path,
        Some(DEFAULT_KEY_AUTH),
        &format!(r#"{{"token":"{refresh_token}"}}"#),
    )
    .await;
    assert_eq!(kept.status, 200, "{}", kept.body);
    let json = kept.json();
    assert!(json.get("created").is_none());
    let kept = rest
        .tokens
        .verify_session(json["token"].as_str().expect("token"))
        .expect("valid");
    assert_eq!(kept.token_id, old.token_id);
    assert_eq!(kept.user_id, old.user_id);
    assert_eq!(kept.username, "refresher");
    assert_eq!(kept.vars, old.vars);
    rest.tokens
        .verify_refresh(json["refresh_token"].as_str().expect("refresh"))
        .expect("valid refresh");

    let replaced = post(
        server.addr,
        refresh_path,
        Some(DEFAULT_KEY_AUTH),
        &format!(r#"{{"token":"{refresh_token}","vars":{{"b":"2"}}}}"#),
    )
    .await;
    assert_eq!(replaced.status, 200, "{}", replaced.body);
    let replaced = rest
        .tokens
        .verify_session(replaced.json()["token"].as_str().expect("token"))
        .expect("valid");
    let mut expected = Vars::new();
    expected.insert("b".into(), "2".into());
    assert_eq!(replaced.vars, expected);

    // A session token is not a refresh token.
    post(
        server.addr,
        refresh_path,
        Some(DEFAULT_KEY_AUTH),
        &format!(r#"{{"token":"{session_token}"}}"#),
    )
    .await
    .assert_error(401, 16, "Refresh token invalid or expired.");
    post(server.addr, refresh_path, Some(DEFAULT_KEY_AUTH), "{}")
        .await
        .assert_error(400, 3, "Refresh token is required.");

    // A valid refresh token for a user this server does not know.
    let stranger = UserId(uuid::Uuid::new_v4());
    let issued = rest
        .tokens
        .issue(stranger, "stranger", &Vars::new())
        .expect("issue");
    post(
        server.addr,
        refresh_path,
        Some(DEFAULT_KEY_AUTH),
        &format!(r#"{{"token":"{}"}}"#, issued.refresh_token),
    )
    .await
    .assert_error(404, 5, "User account not found.");
}

#[tokio::test]
async fn an_account_can_be_followed_by_id_and_name_right_after_authenticate() {
    // Every shard that needs to know the account knows it before the reply.
    let server = TestServer::start_with(|c| c.shards = 4);
    let alice = server.user("alice").await;
    let mut follower = server.connect(&alice, false).await;
    let mut sessions = Vec::new();
    for i in 0..8 {
        let name = format!("fresh{i}");
        let fresh = server.user(&name).await;
        let reply = follower
            .request(serde_json::json!({"status_follow": {"usernames": [name]}, "cid": "n"}))
            .await;
        assert_eq!(
            reply,
            serde_json::json!({"cid": "n", "status": {"presences": []}})
        );
        let mut session = server.connect(&fresh, true).await;
        session.recv_event().await;
        assert_join(&follower.recv_event().await, &fresh, "");
        sessions.push(session);
        let newer = server.user(&format!("newer{i}")).await;
        follower.follow("i", &[&newer.id]).await;
        let mut session = server.connect(&newer, true).await;
        session.recv_event().await;
        assert_join(&follower.recv_event().await, &newer, "");
        sessions.push(session);
    }
}

#[tokio::test]
async fn a_refreshed_token_opens_a_socket() {
    let server = TestServer::start();
    let alice = server.user("alice").await;
    let body = serde_json::json!({"token": alice.refresh_token}).to_string();
    let reply = post(
        server.addr,
        "/v2/account/session/refresh",
        Some(DEFAULT_KEY_AUTH),
        &body,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let token = reply.json()["token"].as_str().expect("token").to_string();
    let refreshed = User {
        token,
        ..alice.clone()
    };
    let mut session = server.connect(&refreshed, true).await;
    assert_join(&session.recv_event().await, &alice, "");
}

#[tokio::test]
async fn accounts_survive_a_restart() {
    let server = TestServer::start();
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let server = server.restart();

    // Known again: followed by id and by name, and the same account on authenticate.
    let again = server.user("alice").await;
    assert_eq!(again.id, alice.id);
    let mut follower = server.connect(&again, false).await;
    let reply = follower
        .request(serde_json::json!({"status_follow": {"user_ids": [bob.id], "usernames": ["bob"]}, "cid": "1"}))
        .await;
    assert_eq!(
        reply,
        serde_json::json!({"cid": "1", "status": {"presences": []}})
    );
    // bob's old token still works: same keys.
    let mut session = server.connect(&bob, true).await;
    session.recv_event().await;
    assert_join(&follower.recv_event().await, &bob, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_authenticates_of_one_new_id_over_http_make_one_account_and_no_5xx() {
    let rest = Rest::start();
    let addr = rest.server.addr;
    let calls: Vec<_> = (0..500)
        .map(|_| {
            tokio::spawn(async move {
                authenticate_custom(addr, "?create=true&", r#"{"id":"contended1"}"#).await
            })
        })
        .collect();
    let mut created = 0;
    let mut users = std::collections::HashSet::new();
    for call in calls {
        let reply = call.await.expect("the call finished");
        assert_eq!(reply.status, 200, "{}", reply.body);
        let json = reply.json();
        if json["created"] == true {
            created += 1;
        }
        let token = json["token"].as_str().expect("token");
        let claims = rest.tokens.verify_session(token).expect("valid token");
        users.insert(claims.user_id);
    }
    assert_eq!(created, 1, "exactly one call created the account");
    assert_eq!(users.len(), 1, "every call got the same account");
}

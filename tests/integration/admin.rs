//! The admin listener over real sockets: an in-process server on port 0 for
//! both listeners, driven by raw HTTP and websocket clients.

use std::net::SocketAddr;
use std::sync::Arc;

use herald::admin::{AdminListener, AdminState};
use herald::config::{AdminListen, Config};
use herald::engine::{EngineConfig, EngineHandle};
use herald::server::Server;
use serde_json::{json, Value};

use crate::common::*;

const HTTP_KEY: &str = "test-http-key";

fn start() -> TestServer {
    TestServer::start_with(|c| c.http_key = HTTP_KEY.into())
}

fn with_key(target: &str) -> String {
    let separator = if target.contains('?') { '&' } else { '?' };
    format!("{target}{separator}http_key={HTTP_KEY}")
}

async fn status_query(admin: SocketAddr, ids: &[&str]) -> HttpReply {
    get(
        admin,
        &with_key(&format!("/v2/status?user_ids={}", ids.join(","))),
    )
    .await
}

async fn disconnect(admin: SocketAddr, session_id: &str, body: &str) -> HttpReply {
    http(
        admin,
        "POST",
        &with_key(&format!("/v2/session/{session_id}/disconnect")),
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await
}

/// The session id of `client`'s own session, from its own status event.
async fn own_session_id(client: &mut Client, status: &str) -> String {
    let event = client.set_status("own", status).await;
    event["joins"][0]["session_id"]
        .as_str()
        .expect("session id")
        .to_owned()
}

/// The code and reason of the close frame `client` gets, skipping messages.
async fn close_of(client: &mut Client) -> (u16, String) {
    loop {
        match client.recv().await {
            Received::Close(Some(close)) => return close,
            Received::Text(_) | Received::Binary(_) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// All sample lines of the counters and gauges the test load moves.
fn counters(text: &str) -> Value {
    json!({
        "sessions": metric(text, "herald_sessions"),
        "users_online": metric(text, "herald_users_online"),
        "follow_edges": metric(text, "herald_follow_edges"),
        "status_changes": metric(text, "herald_status_changes_total"),
        "deliveries": metric(text, "herald_deliveries_total"),
        "fanout_count": metric(text, "herald_fanout_seconds_count"),
        "auth_created": metric(text, "herald_auth_total{result=\"created\"}"),
        "auth_existing": metric(text, "herald_auth_total{result=\"existing\"}"),
        "auth_rejected": metric(text, "herald_auth_total{result=\"rejected\"}"),
        "auth_error": metric(text, "herald_auth_total{result=\"error\"}"),
        "closed_client": metric(text, "herald_sessions_closed_total{reason=\"client\"}"),
        "closed_kicked": metric(text, "herald_sessions_closed_total{reason=\"kicked\"}"),
        "closed_slow_consumer": metric(text, "herald_sessions_closed_total{reason=\"slow_consumer\"}"),
    })
}

fn delta(before: &Value, after: &Value) -> Value {
    let mut out = serde_json::Map::new();
    for (key, value) in after.as_object().expect("object") {
        let moved = value.as_f64().unwrap_or(0.0) - before[key].as_f64().unwrap_or(0.0);
        out.insert(key.clone(), json!(moved));
    }
    Value::Object(out)
}

#[tokio::test]
async fn metrics_move_by_exactly_the_load() {
    let server = start();
    let (listen, admin) = (server.addr, server.admin_addr());
    let before = counters(&scrape(admin).await);

    // 3 accounts created, 1 found again, 1 refused (wrong server key).
    let alice = authenticate(listen, "custom-alice", "alice").await;
    let bob = authenticate(listen, "custom-bob-1", "bob").await;
    let carol = authenticate(listen, "custom-carol", "carol").await;
    authenticate(listen, "custom-alice", "alice").await;
    let refused = http_post(
        listen,
        "/v2/account/authenticate/custom?create=true",
        Some("Basic d3Jvbmc6"),
        r#"{"id":"custom-mallory"}"#,
    )
    .await;
    assert_eq!(refused.status, 401);

    // 3 sessions, 2 follows, 5 updates by alice.
    let mut alice_session = connect(listen, &alice, false).await;
    let mut bob_session = connect(listen, &bob, false).await;
    let mut carol_session = connect(listen, &carol, false).await;
    bob_session.follow("f", &[&alice.id]).await;
    carol_session.follow("f", &[&alice.id]).await;
    for n in 1..=5 {
        alice_session.set_status("u", &format!("round {n}")).await;
    }
    for follower in [&mut bob_session, &mut carol_session] {
        for n in 1..=5 {
            let event = follower.recv_event().await;
            assert_eq!(event["joins"][0]["status"], format!("round {n}"));
        }
    }

    // Every session follows its own user too, so each update is queued to
    // three sessions: alice, bob and carol.
    let expected = json!({
        "sessions": 3.0,
        "users_online": 1.0,
        "follow_edges": 2.0,
        "status_changes": 5.0,
        "deliveries": 15.0,
        "fanout_count": 5.0,
        "auth_created": 3.0,
        "auth_existing": 1.0,
        "auth_rejected": 1.0,
        "auth_error": 0.0,
        "closed_client": 0.0,
        "closed_kicked": 0.0,
        "closed_slow_consumer": 0.0,
    });
    let text = scrape_until(admin, "the load in the counters", |text| {
        delta(&before, &counters(text)) == expected
    })
    .await;
    assert_eq!(delta(&before, &counters(&text)), expected);
    // Frames went out, in at most one write call each.
    let bytes = metric(&text, "herald_bytes_written_total");
    let writes = metric(&text, "herald_write_syscalls_total");
    assert!(bytes > 0.0 && writes > 0.0, "{text}");
    for shard in 0..2 {
        metric(
            &text,
            &format!("herald_shard_inbox_depth{{shard=\"{shard}\"}}"),
        );
    }
    assert!(
        text.contains("# TYPE herald_fanout_seconds histogram"),
        "{text}"
    );

    // Carol leaves: one session and one follow edge fewer, one client close.
    carol_session.close(1000).await;
    let text = scrape_until(admin, "carol's close", |text| {
        metric(text, "herald_sessions_closed_total{reason=\"client\"}") == 1.0
    })
    .await;
    let moved = delta(&before, &counters(&text));
    assert_eq!(moved["sessions"], 2.0);
    assert_eq!(moved["follow_edges"], 1.0);
}

#[tokio::test]
async fn metrics_can_be_scraped_as_openmetrics() {
    let server = start();
    let admin = server.admin_addr();
    let reply = http_request(
        admin,
        "GET",
        "/metrics",
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )],
    )
    .await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        reply.headers
    );
    assert!(reply.body.ends_with("# EOF\n"), "{}", reply.body);
    let plain = get(admin, "/metrics").await;
    assert_eq!(
        plain.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
}

#[tokio::test]
async fn the_backend_api_needs_the_http_key() {
    let server = start();
    let admin = server.admin_addr();
    let user = "3a3c2b53-8f2f-4c43-9a3e-2f1f0e6b1a01";
    let target = format!("/v2/status?user_ids={user}");

    let missing = get(admin, &target).await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.json(),
        json!({"code": 16, "message": "HTTP key required"})
    );
    assert_eq!(missing.header("content-type"), Some("application/json"));

    let wrong = get(admin, &format!("{target}&http_key=nope")).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(
        wrong.json(),
        json!({"code": 16, "message": "HTTP key invalid"})
    );
    let wrong_bearer =
        http_request(admin, "GET", &target, &[("Authorization", "Bearer nope")]).await;
    assert_eq!(wrong_bearer.status, 401);
    let basic = http_request(
        admin,
        "GET",
        &target,
        &[("Authorization", "Basic dGVzdC1odHRwLWtleTo=")],
    )
    .await;
    assert_eq!(basic.status, 401);

    let in_query = get(admin, &with_key(&target)).await;
    assert_eq!(in_query.status, 200, "{}", in_query.body);
    let bearer = http_request(
        admin,
        "GET",
        &target,
        &[("Authorization", &format!("Bearer {HTTP_KEY}"))],
    )
    .await;
    assert_eq!(bearer.status, 200, "{}", bearer.body);

    let kick = http_request(
        admin,
        "POST",
        &format!("/v2/session/{user}/disconnect"),
        &[],
    )
    .await;
    assert_eq!(kick.status, 401);
    // Metrics and health need no key.
    assert_eq!(get(admin, "/metrics").await.status, 200);
    assert_eq!(get(admin, "/healthz").await.status, 200);
}

#[tokio::test]
async fn status_answers_one_entry_per_id_in_request_order() {
    let server = start();
    let (listen, admin) = (server.addr, server.admin_addr());
    let alice = authenticate(listen, "custom-alice", "alice").await;
    let bob = authenticate(listen, "custom-bob-1", "bob").await;
    let (user_a, user_b) = (alice.id.as_str(), bob.id.as_str());
    let unknown = "3a3c2b53-8f2f-4c43-9a3e-2f1f0e6b1a01";

    // Alice: one session with a status, one without (not listed).
    let mut alice_session = connect(listen, &alice, false).await;
    let session = own_session_id(&mut alice_session, "in lobby").await;
    let _quiet = connect(listen, &alice, false).await;

    let reply = status_query(admin, &[user_b, unknown, user_a, user_b]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let offline = |id: &str| json!({"user_id": id, "online": false, "sessions": []});
    assert_eq!(
        reply.json(),
        json!({"users": [
            offline(user_b),
            offline(unknown),
            {"user_id": user_a, "online": true, "sessions": [{"session_id": session, "status": "in lobby"}]},
            offline(user_b),
        ]})
    );

    // The upper-case and brace forms Nakama accepts name the same user.
    let upper = user_a.to_uppercase();
    let reply = status_query(admin, &[&format!("%7B{upper}%7D")]).await;
    assert_eq!(reply.json()["users"][0]["user_id"], user_a);
    assert_eq!(reply.json()["users"][0]["online"], true);
    assert_eq!(status_query(admin, &[]).await.json(), json!({"users": []}));
}

#[tokio::test]
async fn status_refuses_bad_and_too_many_ids() {
    let server = start();
    let admin = server.admin_addr();
    let user = "3a3c2b53-8f2f-4c43-9a3e-2f1f0e6b1a01";
    let invalid = status_query(admin, &[user, "not-a-user"]).await;
    assert_eq!(invalid.status, 400);
    assert_eq!(invalid.json()["code"], 3);
    assert_eq!(
        invalid.json()["message"],
        "Invalid user ID: \"not-a-user\"."
    );

    let thousand = vec![user; 1000];
    assert_eq!(status_query(admin, &thousand).await.status, 200);
    let too_many = vec![user; 1001];
    let reply = status_query(admin, &too_many).await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["message"], "At most 1000 user IDs per call.");

    let missing = get(admin, &with_key("/v2/status")).await;
    assert_eq!(missing.status, 400);
    assert_eq!(missing.json()["message"], "user_ids is required.");
}

#[tokio::test]
async fn disconnect_closes_the_session_and_followers_see_the_leave() {
    let server = start();
    let (listen, admin) = (server.addr, server.admin_addr());
    let alice = authenticate(listen, "custom-alice", "alice").await;
    let bob = authenticate(listen, "custom-bob-1", "bob").await;
    let mut alice_session = connect(listen, &alice, false).await;
    let mut bob_session = connect(listen, &bob, false).await;
    bob_session.follow("f", &[&alice.id]).await;
    let session = own_session_id(&mut alice_session, "in a match").await;
    assert_eq!(
        bob_session.recv_event().await["joins"][0]["session_id"],
        session.as_str()
    );

    let reply = disconnect(admin, &session, r#"{"reason":"banned for cheating"}"#).await;
    assert_eq!(reply.status, 204, "{}", reply.body);
    assert_eq!(reply.body, "");

    // Alice's socket is closed with the reason.
    assert_eq!(
        close_of(&mut alice_session).await,
        (1000, "banned for cheating".to_owned())
    );
    // Bob sees the usual leave.
    let leave = bob_session.recv_event().await;
    assert_eq!(leave["leaves"][0]["session_id"], session.as_str());
    assert_eq!(leave["leaves"][0]["status"], "in a match");
    assert!(leave.get("joins").is_none(), "{leave}");
    // And it counts as kicked.
    scrape_until(admin, "the kick counted", |text| {
        metric(text, "herald_sessions_closed_total{reason=\"kicked\"}") == 1.0
            && metric(text, "herald_sessions") == 1.0
    })
    .await;

    // The session is gone now; a random one never existed.
    assert_eq!(disconnect(admin, &session, "").await.status, 404);
    let unknown = disconnect(admin, "3a3c2b53-8f2f-4c43-9a3e-2f1f0e6b1a01", "").await;
    assert_eq!(unknown.status, 404);
    assert_eq!(
        unknown.json(),
        json!({"code": 5, "message": "Session not found."})
    );
    assert_eq!(disconnect(admin, "nope", "").await.status, 400);
    assert_eq!(disconnect(admin, &session, "[1]").await.status, 400);
    let wrong_method = get(
        admin,
        &with_key(&format!("/v2/session/{session}/disconnect")),
    )
    .await;
    assert_eq!(wrong_method.status, 405);
}

#[tokio::test]
async fn disconnect_without_a_reason_uses_nakamas_text() {
    let server = start();
    let alice = authenticate(server.addr, "custom-alice", "alice").await;
    let mut alice_session = connect(server.addr, &alice, false).await;
    let session = own_session_id(&mut alice_session, "x").await;
    assert_eq!(
        disconnect(server.admin_addr(), &session, "").await.status,
        204
    );
    assert_eq!(
        close_of(&mut alice_session).await,
        (1000, "server-side session disconnect".to_owned())
    );
}

#[tokio::test]
async fn readiness_waits_for_the_engine_and_ends_with_shutdown() {
    // The listener as start-up leaves it before the engine runs.
    let state = Arc::new(AdminState::new(HTTP_KEY.into()));
    let admin = AdminListener::start(SocketAddr::from(([127, 0, 0, 1], 0)), state.clone())
        .expect("admin listener");
    let addr = admin.local_addr();
    assert_eq!(get(addr, "/healthz").await.status, 200);
    assert_eq!(get(addr, "/readyz").await.status, 503);
    assert_eq!(get(addr, "/metrics").await.status, 503);
    let not_ready = get(addr, &with_key("/v2/status?user_ids=")).await;
    assert_eq!(not_ready.status, 503);
    assert_eq!(not_ready.json()["code"], 14);

    let engine = EngineHandle::standalone(EngineConfig::default());
    state.serve(engine.clone());
    assert_eq!(get(addr, "/readyz").await.status, 200);
    assert_eq!(get(addr, "/readyz").await.body, "ready\n");
    assert_eq!(get(addr, "/metrics").await.status, 200);
    engine.begin_shutdown();
    assert_eq!(get(addr, "/readyz").await.status, 503);
    assert_eq!(get(addr, "/healthz").await.status, 200);
    admin.stop();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "stopped listener still accepts"
    );

    // A whole server: ready once started, not ready once shutdown begins.
    let server = start();
    let admin_addr = server.admin_addr();
    assert_eq!(get(admin_addr, "/readyz").await.status, 200);
    server.engine().begin_shutdown();
    assert_eq!(get(admin_addr, "/readyz").await.status, 503);
    assert_eq!(get(admin_addr, "/healthz").await.status, 200);
    assert_eq!(
        get(admin_addr, &with_key("/v2/status?user_ids="))
            .await
            .status,
        503,
        "the backend API refuses once shutdown begins"
    );
    drop(server);
    assert!(
        std::net::TcpStream::connect(admin_addr).is_err(),
        "admin listener outlived the server"
    );
}

#[test]
fn admin_listen_off_starts_no_listener() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = Config::for_tests(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        data.path().to_path_buf(),
    );
    config.admin_listen = AdminListen::Off;
    config.shards = 1;
    let server = Server::start(config).expect("server starts");
    assert_eq!(server.admin_addr(), None);
    server.shutdown();
}

#[test]
fn a_busy_admin_address_fails_start_up_clearly() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = Config::for_tests(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        data.path().to_path_buf(),
    );
    config.admin_listen = AdminListen::Addr(addr);
    config.shards = 1;
    let error = match Server::start(config) {
        Ok(_) => panic!("started on a busy admin address"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.starts_with(&format!("cannot listen on --admin-listen {addr}")),
        "{error}"
    );
}

#[tokio::test]
async fn unknown_paths_and_methods_get_json_errors() {
    let server = start();
    let admin = server.admin_addr();
    let missing = get(admin, "/nothing").await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["code"], 5);
    assert_eq!(
        http_request(admin, "POST", "/metrics", &[]).await.status,
        405
    );
    assert_eq!(
        http_request(admin, "DELETE", &with_key("/v2/status"), &[])
            .await
            .status,
        405
    );
}

#[tokio::test]
async fn single_socket_replacements_count_as_kicked() {
    let server = TestServer::start_with(|c| c.single_socket = true);
    let admin = server.admin_addr();
    let alice = authenticate(server.addr, "custom-alice", "alice").await;
    // A connected client is registered on its home shard (the harness waits
    // for an answer, which the handshake alone does not give), so it is the
    // older one.
    let mut first = connect(server.addr, &alice, false).await;
    let _second = connect(server.addr, &alice, false).await;
    // Nakama's notification first, then the close.
    let mut notified = false;
    let close = loop {
        match first.recv().await {
            Received::Text(text) => notified |= text.contains("\"notifications\""),
            Received::Close(Some(close)) => break close,
            other => panic!("expected a notification and a close, got {other:?}"),
        }
    };
    assert!(notified, "no single-socket notification before the close");
    assert_eq!(close.0, 1000);
    scrape_until(admin, "the replaced session counted", |text| {
        metric(text, "herald_sessions_closed_total{reason=\"kicked\"}") == 1.0
            && metric(text, "herald_sessions") == 1.0
    })
    .await;
}

#[tokio::test]
async fn a_follower_that_stops_reading_is_cut_off_as_a_slow_consumer() {
    let server = TestServer::start_with(|c| c.outgoing_queue_bytes = 64 * 1024);
    let admin = server.admin_addr();
    let alice = authenticate(server.addr, "custom-alice", "alice").await;
    let bob = authenticate(server.addr, "custom-bob-1", "bob").await;
    let mut alice_session = connect(server.addr, &alice, false).await;
    let target = format!("/ws?status=false&token={}", bob.token);
    let mut bob_session = RawClient::connect_small_buffer(server.addr, &target).await;
    bob_session
        .send_text(&json!({"status_follow": {"user_ids": [alice.id]}, "cid": "1"}).to_string())
        .await;
    assert_eq!(bob_session.recv_json().await["cid"], "1");
    // Bob reads nothing from here on. Alice reads her own events (inside
    // set_status), so only bob's queue grows: socket buffers first, then
    // his outbox, until it passes 64 KiB.
    let status = "x".repeat(1024);
    let mut updates = 0;
    loop {
        for _ in 0..100 {
            alice_session
                .set_status("u", &format!("{updates} {status}"))
                .await;
            updates += 1;
        }
        let text = scrape(admin).await;
        if metric(
            &text,
            "herald_sessions_closed_total{reason=\"slow_consumer\"}",
        ) == 1.0
        {
            assert_eq!(metric(&text, "herald_sessions"), 1.0, "alice stays");
            assert_eq!(metric(&text, "herald_follow_edges"), 0.0);
            break;
        }
        assert!(updates < 50_000, "bob was never cut off:\n{text}");
    }
    drop(bob_session);
}

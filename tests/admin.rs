//! The admin listener over real sockets: an in-process server on port 0 for
//! both listeners, driven by raw HTTP and websocket clients.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;

use herald::admin::{AdminListener, AdminState};
use herald::config::{AdminListen, Config};
use herald::engine::{EngineConfig, EngineHandle};
use herald::server::Server;
use serde_json::{json, Value};

use support::{authenticate, get, http, metric, scrape, scrape_until, Frame, Socket};

const HTTP_KEY: &str = "test-http-key";

struct Running {
    server: Server,
    listen: SocketAddr,
    admin: SocketAddr,
    _data: tempfile::TempDir,
}

fn start() -> Running {
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = Config::for_tests(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        data.path().to_path_buf(),
    );
    config.shards = 2;
    config.http_key = HTTP_KEY.into();
    let server = Server::start(config).expect("server starts");
    let listen = server.local_addr();
    let admin = server.admin_addr().expect("admin listener");
    Running {
        server,
        listen,
        admin,
        _data: data,
    }
}

fn with_key(target: &str) -> String {
    let separator = if target.contains('?') { '&' } else { '?' };
    format!("{target}{separator}http_key={HTTP_KEY}")
}

fn status_query(admin: SocketAddr, ids: &[&str]) -> support::Reply {
    get(
        admin,
        &with_key(&format!("/v2/status?user_ids={}", ids.join(","))),
    )
}

fn disconnect(admin: SocketAddr, session_id: &str, body: &str) -> support::Reply {
    http(
        admin,
        "POST",
        &with_key(&format!("/v2/session/{session_id}/disconnect")),
        &[("Content-Type", "application/json")],
        body,
    )
}

/// The session id of `socket`'s own session, from its own status event.
fn own_session_id(socket: &mut Socket, status: &str) -> String {
    let early = socket.update_status(status);
    let event = early
        .iter()
        .find_map(|message| message.get("status_presence_event").cloned())
        .unwrap_or_else(|| socket.next_event());
    event["joins"][0]["session_id"]
        .as_str()
        .expect("session id")
        .to_owned()
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

#[test]
fn metrics_move_by_exactly_the_load() {
    let herald = start();
    let before = counters(&scrape(herald.admin));

    // 3 accounts created, 1 found again, 1 refused (wrong server key).
    let (token_a, user_a) = authenticate(herald.listen, "custom-alice", "alice");
    let (token_b, _) = authenticate(herald.listen, "custom-bob-1", "bob");
    let (token_c, _) = authenticate(herald.listen, "custom-carol", "carol");
    authenticate(herald.listen, "custom-alice", "alice");
    let refused = http(
        herald.listen,
        "POST",
        "/v2/account/authenticate/custom?create=true",
        &[("Authorization", "Basic d3Jvbmc6")],
        r#"{"id":"custom-mallory"}"#,
    );
    assert_eq!(refused.status, 401);

    // 3 sessions, 2 follows, 5 updates by alice.
    let mut alice = Socket::connect(herald.listen, &token_a, false);
    let mut bob = Socket::connect(herald.listen, &token_b, false);
    let mut carol = Socket::connect(herald.listen, &token_c, false);
    bob.follow(&user_a);
    carol.follow(&user_a);
    for n in 1..=5 {
        alice.update_status(&format!("round {n}"));
    }
    for follower in [&mut bob, &mut carol] {
        for n in 1..=5 {
            let event = follower.next_event();
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
    let text = scrape_until(herald.admin, "the load in the counters", |text| {
        delta(&before, &counters(text)) == expected
    });
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
    carol.close();
    let text = scrape_until(herald.admin, "carol's close", |text| {
        metric(text, "herald_sessions_closed_total{reason=\"client\"}") == 1.0
    });
    let moved = delta(&before, &counters(&text));
    assert_eq!(moved["sessions"], 2.0);
    assert_eq!(moved["follow_edges"], 1.0);
    drop((alice, bob));
    herald.server.shutdown();
}

#[test]
fn metrics_can_be_scraped_as_openmetrics() {
    let herald = start();
    let reply = http(
        herald.admin,
        "GET",
        "/metrics",
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
        )],
        "",
    );
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        reply.headers
    );
    assert!(reply.body.ends_with("# EOF\n"), "{}", reply.body);
    let plain = get(herald.admin, "/metrics");
    assert_eq!(
        plain.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    herald.server.shutdown();
}

#[test]
fn the_backend_api_needs_the_http_key() {
    let herald = start();
    let user = "3a3c2b53-8f2f-4c43-9a3e-2f1f0e6b1a01";
    let target = format!("/v2/status?user_ids={user}");

    let missing = get(herald.admin, &target);
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.json(),
        json!({"code": 16, "message": "HTTP key required"})
    );
    assert_eq!(missing.header("content-type"), Some("application/json"));

    let wrong = get(herald.admin, &format!("{target}&http_key=nope"));
    assert_eq!(wrong.status, 401);
    assert_eq!(
        wrong.json(),
        json!({"code": 16, "message": "HTTP key invalid"})
    );
    let wrong_bearer = http(
        herald.admin,
        "GET",
        &target,
        &[("Authorization", "Bearer nope")],
        "",
    );
    assert_eq!(wrong_bearer.status, 401);
    let basic = http(
        herald.admin,
        "GET",
        &target,
        &[("Authorization", "Basic dGVzdC1odHRwLWtleTo=")],
        "",
    );
    assert_eq!(basic.status, 401);

    let in_query = get(herald.admin, &with_key(&target));
    assert_eq!(in_query.status, 200, "{}", in_query.body);
    let bearer = http(
        herald.admin,
        "GET",
        &target,
        &[("Authorization", &format!("Bearer {HTTP_KEY}"))],
        "",
    );
    assert_eq!(bearer.status, 200, "{}", bearer.body);

    let kick = http(
        herald.admin,
        "POST",
        &format!("/v2/session/{user}/disconnect"),
        &[],
        "",
    );
    assert_eq!(kick.status, 401);
    // Metrics and health need no key.
    assert_eq!(get(herald.admin, "/metrics").status, 200);
    assert_eq!(get(herald.admin, "/healthz").status, 200);
    herald.server.shutdown();
}

#[test]
fn status_answers_one_entry_per_id_in_request_order() {
    let herald = start();
    let (token_a, user_a) = authenticate(herald.listen, "custom-alice", "alice");
    let (_, user_b) = authenticate(herald.listen, "custom-bob-1", "bob");
    let unknown = "3a3c2b53-8f2f-4c43-9a3e-2f1f0e6b1a01";

    // Alice: one session with a status, one without (not listed).
    let mut alice = Socket::connect(herald.listen, &token_a, false);
    let session = own_session_id(&mut alice, "in lobby");
    let _quiet = Socket::connect(herald.listen, &token_a, false);

    let reply = status_query(herald.admin, &[&user_b, unknown, &user_a, &user_b]);
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let offline = |id: &str| json!({"user_id": id, "online": false, "sessions": []});
    assert_eq!(
        reply.json(),
        json!({"users": [
            offline(&user_b),
            offline(unknown),
            {"user_id": user_a, "online": true, "sessions": [{"session_id": session, "status": "in lobby"}]},
            offline(&user_b),
        ]})
    );

    // The upper-case and brace forms Nakama accepts name the same user.
    let upper = user_a.to_uppercase();
    let reply = status_query(herald.admin, &[&format!("%7B{upper}%7D")]);
    assert_eq!(reply.json()["users"][0]["user_id"], user_a.as_str());
    assert_eq!(reply.json()["users"][0]["online"], true);
    assert_eq!(status_query(herald.admin, &[]).json(), json!({"users": []}));
    drop((alice, _quiet));
    herald.server.shutdown();
}

#[test]
fn status_refuses_bad_and_too_many_ids() {
    let herald = start();
    let user = "3a3c2b53-8f2f-4c43-9a3e-2f1f0e6b1a01";
    let invalid = status_query(herald.admin, &[user, "not-a-user"]);
    assert_eq!(invalid.status, 400);
    assert_eq!(invalid.json()["code"], 3);
    assert_eq!(
        invalid.json()["message"],
        "Invalid user ID: \"not-a-user\"."
    );

    let thousand = vec![user; 1000];
    assert_eq!(status_query(herald.admin, &thousand).status, 200);
    let too_many = vec![user; 1001];
    let reply = status_query(herald.admin, &too_many);
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["message"], "At most 1000 user IDs per call.");

    let missing = get(herald.admin, &with_key("/v2/status"));
    assert_eq!(missing.status, 400);
    assert_eq!(missing.json()["message"], "user_ids is required.");
    herald.server.shutdown();
}

#[test]
fn disconnect_closes_the_session_and_followers_see_the_leave() {
    let herald = start();
    let (token_a, user_a) = authenticate(herald.listen, "custom-alice", "alice");
    let (token_b, _) = authenticate(herald.listen, "custom-bob-1", "bob");
    let mut alice = Socket::connect(herald.listen, &token_a, false);
    let mut bob = Socket::connect(herald.listen, &token_b, false);
    bob.follow(&user_a);
    let session = own_session_id(&mut alice, "in a match");
    assert_eq!(bob.next_event()["joins"][0]["session_id"], session.as_str());

    let reply = disconnect(
        herald.admin,
        &session,
        r#"{"reason":"banned for cheating"}"#,
    );
    assert_eq!(reply.status, 204, "{}", reply.body);
    assert_eq!(reply.body, "");

    // Alice's socket is closed with the reason.
    let close = loop {
        match alice.recv() {
            Frame::Close(code, reason) => break (code, reason),
            _ => continue,
        }
    };
    assert_eq!(close, (1000, "banned for cheating".to_owned()));
    // Bob sees the usual leave.
    let leave = bob.next_event();
    assert_eq!(leave["leaves"][0]["session_id"], session.as_str());
    assert_eq!(leave["leaves"][0]["status"], "in a match");
    assert!(leave.get("joins").is_none(), "{leave}");
    // And it counts as kicked.
    scrape_until(herald.admin, "the kick counted", |text| {
        metric(text, "herald_sessions_closed_total{reason=\"kicked\"}") == 1.0
            && metric(text, "herald_sessions") == 1.0
    });

    // The session is gone now; a random one never existed.
    assert_eq!(disconnect(herald.admin, &session, "").status, 404);
    let unknown = disconnect(herald.admin, "3a3c2b53-8f2f-4c43-9a3e-2f1f0e6b1a01", "");
    assert_eq!(unknown.status, 404);
    assert_eq!(
        unknown.json(),
        json!({"code": 5, "message": "Session not found."})
    );
    assert_eq!(disconnect(herald.admin, "nope", "").status, 400);
    assert_eq!(disconnect(herald.admin, &session, "[1]").status, 400);
    let wrong_method = get(
        herald.admin,
        &with_key(&format!("/v2/session/{session}/disconnect")),
    );
    assert_eq!(wrong_method.status, 405);
    drop((alice, bob));
    herald.server.shutdown();
}

#[test]
fn disconnect_without_a_reason_uses_nakamas_text() {
    let herald = start();
    let (token, _) = authenticate(herald.listen, "custom-alice", "alice");
    let mut alice = Socket::connect(herald.listen, &token, false);
    let session = own_session_id(&mut alice, "x");
    assert_eq!(disconnect(herald.admin, &session, "").status, 204);
    let close = loop {
        if let Frame::Close(code, reason) = alice.recv() {
            break (code, reason);
        }
    };
    assert_eq!(close, (1000, "server-side session disconnect".to_owned()));
    drop(alice);
    herald.server.shutdown();
}

#[test]
fn readiness_waits_for_the_engine_and_ends_with_shutdown() {
    // The listener as start-up leaves it before the engine runs.
    let state = Arc::new(AdminState::new(HTTP_KEY.into()));
    let admin = AdminListener::start(SocketAddr::from(([127, 0, 0, 1], 0)), state.clone())
        .expect("admin listener");
    let addr = admin.local_addr();
    assert_eq!(get(addr, "/healthz").status, 200);
    assert_eq!(get(addr, "/readyz").status, 503);
    assert_eq!(get(addr, "/metrics").status, 503);
    let not_ready = get(addr, &with_key("/v2/status?user_ids="));
    assert_eq!(not_ready.status, 503);
    assert_eq!(not_ready.json()["code"], 14);

    let engine = EngineHandle::standalone(EngineConfig::default());
    state.serve(engine.clone());
    assert_eq!(get(addr, "/readyz").status, 200);
    assert_eq!(get(addr, "/readyz").body, "ready\n");
    assert_eq!(get(addr, "/metrics").status, 200);
    engine.begin_shutdown();
    assert_eq!(get(addr, "/readyz").status, 503);
    assert_eq!(get(addr, "/healthz").status, 200);
    admin.stop();
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "stopped listener still accepts"
    );

    // A whole server: ready once started, not ready once shutdown begins.
    let herald = start();
    assert_eq!(get(herald.admin, "/readyz").status, 200);
    herald.server.engine().begin_shutdown();
    assert_eq!(get(herald.admin, "/readyz").status, 503);
    assert_eq!(get(herald.admin, "/healthz").status, 200);
    assert_eq!(
        get(herald.admin, &with_key("/v2/status?user_ids=")).status,
        503,
        "the backend API refuses once shutdown begins"
    );
    let admin_addr = herald.admin;
    herald.server.shutdown();
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

#[test]
fn unknown_paths_and_methods_get_json_errors() {
    let herald = start();
    let missing = get(herald.admin, "/nothing");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["code"], 5);
    assert_eq!(http(herald.admin, "POST", "/metrics", &[], "").status, 405);
    assert_eq!(
        http(herald.admin, "DELETE", &with_key("/v2/status"), &[], "").status,
        405
    );
    herald.server.shutdown();
}

#[test]
fn single_socket_replacements_count_as_kicked() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = Config::for_tests(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        data.path().to_path_buf(),
    );
    config.single_socket = true;
    config.shards = 2;
    let server = Server::start(config).expect("server starts");
    let (listen, admin) = (server.local_addr(), server.admin_addr().expect("admin"));
    let (token, _) = authenticate(listen, "custom-alice", "alice");
    let mut first = Socket::connect(listen, &token, false);
    // A request answered means the session is registered on its home shard
    // (the handshake answer alone does not), so it is the older one.
    first.update_status("first");
    let second = Socket::connect(listen, &token, false);
    // Nakama's notification first, then the close.
    let mut notified = false;
    let close = loop {
        match first.recv() {
            Frame::Text(message) => notified |= message.get("notifications").is_some(),
            Frame::Close(code, reason) => break (code, reason),
            Frame::Other(_) => {}
        }
    };
    assert!(notified, "no single-socket notification before the close");
    assert_eq!(close.0, 1000);
    scrape_until(admin, "the replaced session counted", |text| {
        metric(text, "herald_sessions_closed_total{reason=\"kicked\"}") == 1.0
            && metric(text, "herald_sessions") == 1.0
    });
    drop((first, second));
    server.shutdown();
}

#[test]
fn a_follower_that_stops_reading_is_cut_off_as_a_slow_consumer() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut config = Config::for_tests(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        data.path().to_path_buf(),
    );
    config.outgoing_queue_bytes = 64 * 1024;
    config.shards = 2;
    let server = Server::start(config).expect("server starts");
    let (listen, admin) = (server.local_addr(), server.admin_addr().expect("admin"));
    let (token_a, user_a) = authenticate(listen, "custom-alice", "alice");
    let (token_b, _) = authenticate(listen, "custom-bob-1", "bob");
    let mut alice = Socket::connect(listen, &token_a, false);
    let mut bob = Socket::connect_small_buffer(listen, &token_b);
    bob.follow(&user_a);
    // Bob reads nothing from here on. Alice reads her own events (inside
    // update_status), so only bob's queue grows: socket buffers first, then
    // his outbox, until it passes 64 KiB.
    let status = "x".repeat(1024);
    let mut updates = 0;
    loop {
        for _ in 0..100 {
            alice.update_status(&format!("{updates} {status}"));
            updates += 1;
        }
        let text = scrape(admin);
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
    drop((alice, bob));
    server.shutdown();
}

//! The REST endpoints over real HTTP/1.1: a hyper server on 127.0.0.1:0
//! serving only `transport::rest`, driven by raw requests over a TcpStream.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use herald::auth::{AccountStore, IdKind, Tokens, Vars};
use herald::engine::stats::ShardStats;
use herald::engine::{Engine, EngineConfig};
use herald::ids::UserId;
use herald::transport::rest::{self, RestContext};

/// base64("defaultkey:"), exactly what nakama-js sends.
const DEFAULT_KEY_AUTH: &str = "Basic ZGVmYXVsdGtleTo=";
const MAX_BODY: usize = 1024;

struct Server {
    addr: SocketAddr,
    ctx: Arc<RestContext>,
    /// One shard, so that `register_user` is answered; it has no listener.
    _engine: Engine,
    _dir: tempfile::TempDir,
}

async fn route(ctx: &RestContext, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    match (req.method().clone(), req.uri().path()) {
        (Method::POST, "/v2/account/authenticate/custom") => {
            rest::authenticate(ctx, IdKind::Custom, req).await
        }
        (Method::POST, "/v2/account/authenticate/device") => {
            rest::authenticate(ctx, IdKind::Device, req).await
        }
        (Method::POST, "/v2/account/session/refresh") => rest::refresh(ctx, req).await,
        _ => rest::error_response(StatusCode::NOT_FOUND, 5, "Not Found"),
    }
}

async fn start() -> Server {
    let dir = tempfile::tempdir().expect("tempdir");
    let (accounts, _) = AccountStore::open(dir.path()).expect("open store");
    let engine = Engine::start(
        EngineConfig {
            pin_threads: false,
            ..EngineConfig::default()
        },
        Arc::new(Vec::new()),
        Arc::new(|_: &_| {}),
    )
    .expect("engine");
    let ctx = Arc::new(RestContext {
        tokens: Arc::new(Tokens::new(
            "defaultencryptionkey",
            "defaultrefreshencryptionkey",
            7200,
            604_800,
        )),
        accounts,
        server_key: "defaultkey".into(),
        engine: engine.handle().clone(),
        max_body_bytes: MAX_BODY,
        stats: Arc::new(ShardStats::default()),
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let served = ctx.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let ctx = served.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let ctx = ctx.clone();
                    async move { Ok::<_, Infallible>(route(&ctx, req).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Server {
        addr,
        ctx,
        _engine: engine,
        _dir: dir,
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("json body")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn assert_error(&self, status: u16, code: i64, message: &str) {
        assert_eq!(self.status, status, "body {}", self.body);
        let json = self.json();
        assert_eq!(json["code"], code, "body {}", self.body);
        assert_eq!(json["message"], message, "body {}", self.body);
        assert_eq!(self.header("content-type"), Some("application/json"));
    }
}

/// Sends raw bytes and reads the whole response (the request asks for `Connection: close`).
async fn exchange(addr: SocketAddr, request: Vec<u8>) -> Reply {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The server may answer and close before reading everything; a failed write is fine.
    let _ = stream.write_all(&request).await;
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8(raw).expect("utf8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers = lines
        .filter_map(|line| line.split_once(": "))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_string(),
    }
}

async fn post(addr: SocketAddr, target: &str, auth: Option<&str>, body: &str) -> Reply {
    let mut request = format!(
        "POST {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(auth) = auth {
        request.push_str(&format!("Authorization: {auth}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    exchange(addr, request.into_bytes()).await
}

async fn authenticate_custom(addr: SocketAddr, query: &str, body: &str) -> Reply {
    post(
        addr,
        &format!("/v2/account/authenticate/custom{query}"),
        Some(DEFAULT_KEY_AUTH),
        body,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nakama_js_authenticate_creates_then_finds_the_account() {
    let server = start().await;
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
    let claims = server
        .ctx
        .tokens
        .verify_session(token)
        .expect("valid token");
    assert_eq!(claims.username, "alice");
    let refresh_claims = server
        .ctx
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
    let again_claims = server
        .ctx
        .tokens
        .verify_session(token)
        .expect("valid token");
    assert_eq!(again_claims.user_id, claims.user_id);
    assert_eq!(again_claims.username, "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_authenticate_carries_vars_and_generates_a_username() {
    let server = start().await;
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
    let claims = server
        .ctx
        .tokens
        .verify_session(json["token"].as_str().expect("token"))
        .expect("valid");
    assert_eq!(claims.vars.get("level").map(String::as_str), Some("3"));
    assert_eq!(claims.username.len(), 10);
    assert!(claims.username.bytes().all(|b| b.is_ascii_alphabetic()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_key_is_required_and_checked() {
    let server = start().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_errors_use_nakama_texts() {
    let server = start().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_cap_get_413() {
    let server = start().await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_issues_a_new_pair_with_the_same_token_id() {
    let server = start().await;
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
    let old = server
        .ctx
        .tokens
        .verify_session(&session_token)
        .expect("valid");

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
    let kept = server
        .ctx
        .tokens
        .verify_session(json["token"].as_str().expect("token"))
        .expect("valid");
    assert_eq!(kept.token_id, old.token_id);
    assert_eq!(kept.user_id, old.user_id);
    assert_eq!(kept.username, "refresher");
    assert_eq!(kept.vars, old.vars);
    server
        .ctx
        .tokens
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
    let replaced = server
        .ctx
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
    let issued = server
        .ctx
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

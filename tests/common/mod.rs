//! Shared harness of the integration tests: an in-process Herald on
//! 127.0.0.1:0 ([`TestServer`]) or the `herald` binary as a child process
//! ([`HeraldProcess`]), users authenticated over real HTTP, and two websocket
//! clients:
//!
//! * [`Client`] (tokio-tungstenite) for ordinary traffic. It answers the
//!   server's pings by itself and validates every frame Herald sends, so the
//!   tests get an independent check of Herald's framing for free.
//! * [`RawClient`], hand-built frames over a plain `TcpStream`, for protocol
//!   violations, keepalive and anything where the exact frames matter.
//!
//! Every wait is bounded ([`WAIT`] by default). JSON from the server is parsed
//! with `serde_json`, never with Herald's own codec.
//!
//! [`postgres`] runs a real PostgreSQL server for the tests of `--database-url`.
//!
//! Each test file compiles this module separately and uses a different part
//! of it, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod postgres;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use herald::auth::{Tokens, Vars};
use herald::config::Config;
use herald::engine::stats::{CloseKind, StatsSnapshot};
use herald::engine::EngineHandle;
use herald::ids::UserId;
use herald::server::Server;

/// Default bound of every wait for something that should happen.
pub const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing more arrives" is watched for.
pub const QUIET: Duration = Duration::from_millis(300);
/// base64("defaultkey:"), exactly what nakama-js sends.
pub const DEFAULT_KEY_AUTH: &str = "Basic ZGVmYXVsdGtleTo=";

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

/// A Herald running in this process, with its own data directory. Dropping
/// it shuts the server down (and waits for it).
pub struct TestServer {
    server: Option<Server>,
    pub addr: SocketAddr,
    pub config: Config,
    /// The data directory; removed when the server is dropped.
    dir: Option<tempfile::TempDir>,
}

impl TestServer {
    /// A server with test defaults: two shards, everything else as shipped.
    pub fn start() -> TestServer {
        TestServer::start_with(|_| {})
    }

    /// A server with test defaults and `tweak` applied to its configuration.
    pub fn start_with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        TestServer::try_start_with(tweak).expect("the server starts")
    }

    /// As [`TestServer::start_with`]; `Err` holds the start-up error with its causes.
    pub fn try_start_with(tweak: impl FnOnce(&mut Config)) -> Result<TestServer, String> {
        let dir = tempfile::tempdir().expect("a temporary data directory");
        let listen: SocketAddr = "127.0.0.1:0".parse().expect("loopback address");
        let mut config = Config::for_tests(listen, dir.path().to_path_buf());
        config.shards = 2;
        config.log_level = "warn".into();
        tweak(&mut config);
        TestServer::try_run(config, dir)
    }

    fn try_run(config: Config, dir: tempfile::TempDir) -> Result<TestServer, String> {
        let server = Server::start(config.clone()).map_err(|error| format!("{error:#}"))?;
        let addr = server.local_addr();
        Ok(TestServer {
            server: Some(server),
            addr,
            config,
            dir: Some(dir),
        })
    }

    /// Shuts the server down and starts a new one on the same data
    /// directory and settings (on a new port).
    pub fn restart(mut self) -> TestServer {
        self.stop();
        let dir = self.dir.take().expect("the data directory");
        TestServer::try_run(self.config.clone(), dir).expect("the server starts again")
    }

    /// Shuts the server down, waiting for it.
    fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            // `shutdown` blocks (and runs a runtime of its own), so it runs on
            // a plain thread, never on the test's runtime.
            let done = std::thread::spawn(move || server.shutdown()).join();
            if done.is_err() && !std::thread::panicking() {
                panic!("server shutdown panicked");
            }
        }
    }

    pub fn engine(&self) -> &EngineHandle {
        self.server.as_ref().expect("running").engine()
    }

    /// The admin listener's address (on by default in tests).
    pub fn admin_addr(&self) -> SocketAddr {
        self.server
            .as_ref()
            .expect("running")
            .admin_addr()
            .expect("an admin listener")
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.engine().stats()
    }

    /// Waits (bounded) until `closed(kind)` reaches `count`.
    pub async fn wait_closed(&self, kind: CloseKind, count: u64) {
        let engine = self.engine().clone();
        wait_until(&format!("{count} sessions closed as {kind:?}"), || {
            engine.stats().closed(kind) >= count
        })
        .await;
    }

    /// The token keys this server uses, to mint tokens of our own.
    pub fn tokens(&self) -> Tokens {
        tokens_of(&self.config)
    }

    /// Authenticates (creating) the account `username` over REST.
    pub async fn user(&self, username: &str) -> User {
        authenticate(self.addr, &format!("custom-{username}"), username).await
    }

    /// A user whose id is owned by shard `shard` (and not by any other).
    pub async fn user_on_shard(&self, prefix: &str, shard: usize) -> User {
        for i in 0..200 {
            let user = self.user(&format!("{prefix}{i}")).await;
            if self.engine().router().shard_of_user(user.user_id()) == shard {
                return user;
            }
        }
        panic!("no user of 200 hashed to shard {shard}");
    }

    /// A valid token for a user this server has never seen (minted with its key).
    pub fn external_user(&self, username: &str) -> User {
        mint_user(&self.tokens(), uuid::Uuid::new_v4(), username)
    }

    /// A JSON session of `user`; `status` is the `status` query parameter.
    pub async fn connect(&self, user: &User, status: bool) -> Client {
        connect(self.addr, user, status).await
    }

    /// A JSON session with exactly this query string.
    pub async fn connect_query(&self, query: &str) -> Client {
        connect_query(self.addr, query).await
    }

    /// A raw session of `user` (JSON unless `extra_query` says otherwise).
    pub async fn raw(&self, user: &User, status: bool, extra_query: &str) -> RawClient {
        let target = format!("/ws?status={status}&token={}{extra_query}", user.token);
        RawClient::connect(self.addr, &target, &[])
            .await
            .expect("upgrade")
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Polls `check` every 10 ms until it holds; panics after [`WAIT`].
pub async fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A JSON session of `user` on the server at `addr`; `status` is the
/// `status` query parameter.
pub async fn connect(addr: SocketAddr, user: &User, status: bool) -> Client {
    let query = format!("lang=en&status={status}&token={}", user.token);
    connect_query(addr, &query).await
}

/// A JSON session on the server at `addr` with exactly this query string,
/// registered on the server when this returns.
pub async fn connect_query(addr: SocketAddr, query: &str) -> Client {
    let stream = TcpStream::connect(addr).await.expect("connect");
    connect_over(stream, &format!("ws://{addr}/ws?{query}")).await
}

/// A session over an already connected stream (e.g. TLS) to `url`,
/// registered on the server when this returns.
pub async fn connect_over<S: AsyncRead + AsyncWrite + Unpin>(stream: S, url: &str) -> Client<S> {
    let (ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream))
        .await
        .expect("handshake in time")
        .expect("websocket handshake");
    assert_eq!(response.status(), 101);
    let mut client = Client {
        ws,
        pending: VecDeque::new(),
    };
    client.wait_registered().await;
    client
}

// ---------------------------------------------------------------------------
// The herald binary
// ---------------------------------------------------------------------------

/// The `herald` binary of this build. From another package of the
/// workspace (loadgen's tests), the one cargo built into the same target
/// directory (`cargo test --workspace` builds it).
pub fn herald_binary() -> std::path::PathBuf {
    if let Some(path) = option_env!("CARGO_BIN_EXE_herald") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("the test executable");
    let binary = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/<profile>/deps")
        .join("herald");
    assert!(
        binary.exists(),
        "{} is missing: build herald first (cargo test --workspace does)",
        binary.display()
    );
    binary
}

/// The `herald` binary of this build with an empty environment, so only
/// what a test sets applies.
pub fn herald_command() -> std::process::Command {
    let mut command = std::process::Command::new(herald_binary());
    command.env_clear();
    command
}

/// The exit status of `child` if it ends within `limit` (polled).
pub fn child_exit(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// How to start the `herald` binary: where it listens, its other flags, and
/// an optional wrapper command it runs under (e.g. `ip netns exec NS`, which
/// execs the binary, so the child's PID is herald's own).
#[derive(Debug, Clone)]
pub struct HeraldLaunch {
    /// Program and arguments put before the binary; empty: none.
    pub wrapper: Vec<String>,
    /// `--listen` (default `127.0.0.1:0`).
    pub listen: String,
    /// `--admin-listen` (default `127.0.0.1:0`).
    pub admin_listen: String,
    /// Every other flag (`--data-dir` and the JSON logs are added).
    pub args: Vec<String>,
}

impl HeraldLaunch {
    /// Both listeners on free ports of 127.0.0.1, with `args`.
    pub fn new(args: &[&str]) -> HeraldLaunch {
        HeraldLaunch {
            wrapper: Vec::new(),
            listen: "127.0.0.1:0".into(),
            admin_listen: "127.0.0.1:0".into(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    /// The command for a server on data directory `dir`, its logs JSON at `info`.
    pub fn command(&self, dir: &std::path::Path) -> std::process::Command {
        let mut command = match self.wrapper.split_first() {
            Some((program, wrapper_args)) => {
                let mut command = std::process::Command::new(program);
                command.env_clear().args(wrapper_args).arg(herald_binary());
                command
            }
            None => herald_command(),
        };
        command
            .args([
                "--listen",
                &self.listen,
                "--admin-listen",
                &self.admin_listen,
            ])
            .args(["--log-format", "json", "--log-level", "info"])
            .arg("--data-dir")
            .arg(dir)
            .args(&self.args);
        command
    }
}

/// One log line of a [`HeraldProcess`] and when this process read it.
pub type LogLine = (std::time::Instant, Value);

/// The `herald` binary as a child process: its own data directory, both
/// listeners on free ports of 127.0.0.1 unless told otherwise
/// ([`HeraldLaunch`]), JSON logs read from its stdout (each line stamped
/// with the instant it was read). Dropping it kills the process.
pub struct HeraldProcess {
    child: std::process::Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    /// How it was started, for a restart on the same data directory.
    launch: Option<HeraldLaunch>,
    dir: Option<tempfile::TempDir>,
    logs: std::sync::mpsc::Receiver<LogLine>,
    /// Log lines already read, searched first by [`HeraldProcess::log_fields`].
    seen: Vec<LogLine>,
}

impl HeraldProcess {
    /// Starts the binary with `args` on a new data directory and waits until it serves.
    pub fn start(args: &[&str]) -> HeraldProcess {
        HeraldProcess::start_with(HeraldLaunch::new(args))
    }

    /// Starts the binary as `launch` says on a new data directory and waits until it serves.
    pub fn start_with(launch: HeraldLaunch) -> HeraldProcess {
        let dir = tempfile::tempdir().expect("a temporary data directory");
        let mut herald = HeraldProcess::begin_in(dir, launch);
        herald.wait_serving(WAIT);
        herald
    }

    /// Starts the binary on data directory `dir` without waiting for it to
    /// serve (see [`HeraldProcess::wait_serving`]).
    pub fn begin_in(dir: tempfile::TempDir, launch: HeraldLaunch) -> HeraldProcess {
        let mut herald = HeraldProcess::begin(launch.command(dir.path()));
        herald.launch = Some(launch);
        herald.dir = Some(dir);
        herald
    }

    /// Spawns `command` (whose logs must be JSON) and waits until it serves.
    pub fn spawn(command: std::process::Command) -> HeraldProcess {
        let mut herald = HeraldProcess::begin(command);
        herald.wait_serving(WAIT);
        herald
    }

    /// Spawns `command` (whose logs must be JSON) and returns at once; the
    /// addresses are known after [`HeraldProcess::wait_serving`].
    pub fn begin(mut command: std::process::Command) -> HeraldProcess {
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("herald starts");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines, logs) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| json!({"fields": {"message": line}}));
                if lines.send((std::time::Instant::now(), value)).is_err() {
                    return;
                }
            }
        });
        HeraldProcess {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin: SocketAddr::from(([127, 0, 0, 1], 0)),
            launch: None,
            dir: None,
            logs,
            seen: Vec::new(),
        }
    }

    /// Waits (at most `limit`) for the "herald is serving" line and takes
    /// both addresses from it.
    pub fn wait_serving(&mut self, limit: Duration) {
        let (_, serving) = self.log_line("herald is serving", limit);
        let address = |key: &str| -> SocketAddr {
            serving[key]
                .as_str()
                .and_then(|a| a.parse().ok())
                .unwrap_or_else(|| panic!("no {key} address in {serving}"))
        };
        self.addr = address("listen");
        self.admin = address("admin");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The data directory, when the process has one of its own.
    pub fn data_dir(&self) -> Option<&std::path::Path> {
        self.dir.as_ref().map(tempfile::TempDir::path)
    }

    /// Authenticates (creating) the account `username` over REST.
    pub async fn user(&self, username: &str) -> User {
        authenticate(self.addr, &format!("custom-{username}"), username).await
    }

    /// A JSON session of `user`; `status` is the `status` query parameter.
    pub async fn connect(&self, user: &User, status: bool) -> Client {
        connect(self.addr, user, status).await
    }

    /// The `herald_sessions` gauge, from the admin listener.
    pub async fn sessions_gauge(&self) -> f64 {
        metric(&scrape(self.admin).await, "herald_sessions")
    }

    /// The `fields` of the first log line whose message is `message`
    /// (earlier lines included); panics after [`WAIT`].
    pub fn log_fields(&mut self, message: &str) -> Value {
        self.log_line(message, WAIT).1
    }

    /// When the first log line whose message is `message` was read, and its
    /// `fields` (earlier lines included); panics after `limit`.
    pub fn log_line(&mut self, message: &str, limit: Duration) -> (std::time::Instant, Value) {
        self.try_log_line(message, limit).unwrap_or_else(|| {
            panic!(
                "no log line {message:?} within {limit:?}; got {:?}",
                self.seen.iter().map(|(_, line)| line).collect::<Vec<_>>()
            )
        })
    }

    /// As [`HeraldProcess::log_line`], `None` after `limit`.
    pub fn try_log_line(
        &mut self,
        message: &str,
        limit: Duration,
    ) -> Option<(std::time::Instant, Value)> {
        let matches = |line: &Value| line["fields"]["message"] == message;
        if let Some((at, line)) = self.seen.iter().find(|(_, line)| matches(line)) {
            return Some((*at, line["fields"].clone()));
        }
        let deadline = std::time::Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let (at, line) = self.logs.recv_timeout(left).ok()?;
            let found = matches(&line).then(|| line["fields"].clone());
            self.seen.push((at, line));
            if let Some(fields) = found {
                return Some((at, fields));
            }
        }
    }

    /// Every log line read so far (waiting for none).
    pub fn logs(&mut self) -> &[LogLine] {
        self.seen.extend(self.logs.try_iter());
        &self.seen
    }

    /// Sends `signal` (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("a pid");
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(sent, 0, "kill({pid}, {signal})");
    }

    /// Waits (polling, bounded by `limit`) for the process to exit.
    pub fn wait_for_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        self.try_wait_for_exit(limit)
            .unwrap_or_else(|| panic!("herald did not exit within {limit:?}"))
    }

    /// The exit status if the process ends within `limit`.
    pub fn try_wait_for_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        child_exit(&mut self.child, limit)
    }

    /// SIGKILLs the process and starts a new one on the same data directory
    /// and settings (on new ports unless the settings name them).
    pub fn kill_and_restart(self) -> HeraldProcess {
        self.signal(libc::SIGKILL);
        let mut herald = self.relaunch();
        herald.wait_serving(WAIT);
        herald
    }

    /// Once the process has ended (waited for, at most [`WAIT`]), starts a
    /// new one on the same data directory and settings, without waiting for
    /// it to serve.
    pub fn relaunch(mut self) -> HeraldProcess {
        self.wait_for_exit(WAIT);
        let dir = self.dir.take().expect("a data directory of our own");
        let launch = self.launch.take().expect("started from a HeraldLaunch");
        HeraldProcess::begin_in(dir, launch)
    }

    /// Resident memory of the process in KiB (`VmRSS` of /proc/PID/status).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("/proc/PID/status");
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmRSS in {status}"))
    }
}

impl Drop for HeraldProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Users and HTTP
// ---------------------------------------------------------------------------

/// An authenticated account.
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub username: String,
    pub token: String,
    pub refresh_token: String,
}

impl User {
    pub fn user_id(&self) -> UserId {
        UserId::parse(&self.id).expect("a uuid")
    }
}

/// A user with a token minted with `tokens` (no account behind it).
pub fn mint_user(tokens: &Tokens, id: uuid::Uuid, username: &str) -> User {
    let issued = tokens
        .issue(UserId(id), username, &Vars::new())
        .expect("a token");
    User {
        id: id.to_string(),
        username: username.to_string(),
        token: issued.token,
        refresh_token: issued.refresh_token,
    }
}

/// The token keys of a server run with the defaults (Nakama's published ones).
pub fn default_tokens() -> Tokens {
    tokens_of(&Config::for_tests(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        std::path::PathBuf::new(),
    ))
}

/// The token keys of a server run with `config`.
pub fn tokens_of(config: &Config) -> Tokens {
    Tokens::new(
        &config.encryption_key,
        &config.refresh_encryption_key,
        config.token_expiry_sec,
        config.refresh_token_expiry_sec,
    )
}

/// The claims of a JWT, decoded without verification (as clients do).
pub fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("three parts");
    let bytes = URL_SAFE_NO_PAD.decode(payload).expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

/// `POST /v2/account/authenticate/custom?create=true&username=…` as nakama-js sends it.
pub async fn authenticate(addr: SocketAddr, custom_id: &str, username: &str) -> User {
    let body = json!({ "id": custom_id, "vars": {} }).to_string();
    let target = format!("/v2/account/authenticate/custom?create=true&username={username}&");
    let reply = http_post(addr, &target, Some(DEFAULT_KEY_AUTH), &body).await;
    user_of(&reply, username)
}

/// The user of a successful authenticate reply.
pub fn user_of(reply: &HttpReply, username: &str) -> User {
    assert_eq!(reply.status, 200, "authenticate {username}: {}", reply.body);
    let json = reply.json();
    let token = json["token"].as_str().expect("token").to_string();
    let refresh_token = json["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_string();
    let claims = jwt_claims(&token);
    User {
        id: claims["uid"].as_str().expect("uid claim").to_string(),
        username: claims["usn"].as_str().expect("usn claim").to_string(),
        token,
        refresh_token,
    }
}

/// A complete HTTP response.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("JSON body")
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts a grpc-gateway error body.
    pub fn assert_error(&self, status: u16, code: i64, message: &str) {
        assert_eq!(self.status, status, "body {}", self.body);
        let json = self.json();
        assert_eq!(json["code"], code, "body {}", self.body);
        assert_eq!(json["message"], message, "body {}", self.body);
        assert_eq!(self.header("content-type"), Some("application/json"));
    }
}

/// Sends raw bytes and reads the whole response (requests ask for `Connection: close`).
pub async fn http_exchange(addr: SocketAddr, request: &[u8]) -> HttpReply {
    let stream = TcpStream::connect(addr).await.expect("connect");
    http_exchange_over(stream, request).await
}

/// As [`http_exchange`], `None` if the connection fails or ends without a
/// complete head (e.g. the server was killed).
pub async fn try_http_exchange(addr: SocketAddr, request: &[u8]) -> Option<HttpReply> {
    let stream = TcpStream::connect(addr).await.ok()?;
    try_http_exchange_over(stream, request).await
}

/// As [`try_http_exchange`] over an already connected stream; panics when no complete head comes.
pub async fn http_exchange_over<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    request: &[u8],
) -> HttpReply {
    try_http_exchange_over(stream, request)
        .await
        .expect("a complete response")
}

/// An exchange over an already connected stream (e.g. TLS). The response
/// ends where the server closes, or after its `Content-Length`; `None` if
/// it has no complete head.
pub async fn try_http_exchange_over<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    request: &[u8],
) -> Option<HttpReply> {
    // The server may answer and close before reading everything; a failed write is fine.
    let _ = stream.write_all(request).await;
    let mut raw = Vec::new();
    let read = async {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
            }
            if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..end]);
                let (_, headers) = parse_head(&head);
                let length = headers
                    .iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.parse::<usize>().ok());
                if length.is_some_and(|length| raw.len() >= end + 4 + length) {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(WAIT * 2, read)
        .await
        .expect("response in time");
    let text = String::from_utf8(raw).expect("utf8 response");
    let (head, body) = text.split_once("\r\n\r\n")?;
    let (status, headers) = parse_head(head);
    Some(HttpReply {
        status,
        headers,
        body: body.to_string(),
    })
}

fn parse_head(head: &str) -> (u16, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    (status, headers)
}

/// `METHOD target` on a fresh connection with extra header lines and a
/// body (`Content-Length` is added); reads until the server closes.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpReply {
    http_exchange(addr, &http_bytes(method, target, headers, body)).await
}

/// The bytes of a request as [`http`] sends it.
pub fn http_bytes(method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    let mut request = request.into_bytes();
    request.extend_from_slice(body);
    request
}

/// `POST target` with a JSON body and an optional `Authorization`.
pub async fn http_post(
    addr: SocketAddr,
    target: &str,
    auth: Option<&str>,
    body: &str,
) -> HttpReply {
    let mut headers = vec![
        ("Accept", "application/json"),
        ("Content-Type", "application/json"),
    ];
    if let Some(auth) = auth {
        headers.push(("Authorization", auth));
    }
    http(addr, "POST", target, &headers, body.as_bytes()).await
}

/// `METHOD target` without a body, with extra header lines.
pub async fn http_request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
) -> HttpReply {
    http(addr, method, target, headers, b"").await
}

/// `GET target`.
pub async fn get(addr: SocketAddr, target: &str) -> HttpReply {
    http_request(addr, "GET", target, &[]).await
}

/// The value of the sample `name` in a Prometheus exposition (with its
/// labels, e.g. `herald_sessions_closed_total{reason="kicked"}`).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (sample, value) = line.rsplit_once(' ')?;
            (sample == name).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
}

/// `GET /metrics` on an admin listener.
pub async fn scrape(admin: SocketAddr) -> String {
    let reply = get(admin, "/metrics").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

/// Scrapes until `done` holds for the exposition; panics after [`WAIT`].
pub async fn scrape_until(admin: SocketAddr, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = scrape(admin).await;
        if done(&text) {
            return text;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------
// The tungstenite client
// ---------------------------------------------------------------------------

/// What a [`Client`] received (server pings and pongs are not reported).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    Text(String),
    Binary(Vec<u8>),
    /// A close frame: code and reason (`None` for an empty close payload).
    Close(Option<(u16, String)>),
    /// The connection ended without (further) frames.
    End,
}

/// A websocket session driven by tokio-tungstenite.
pub struct Client<S = TcpStream> {
    ws: WebSocketStream<S>,
    /// Frames received while waiting for something else, delivered first.
    pending: VecDeque<Received>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// The 101 can reach the client before the server has registered the
    /// session (Nakama upgrades first and registers after, too), and events
    /// in that window are not for it. A ping round trip proves the session
    /// is registered; whatever arrives before the pong is kept for later.
    async fn wait_registered(&mut self) {
        const CID: &str = "registered?";
        self.send_json(json!({"ping": {}, "cid": CID})).await;
        let pong = format!(r#"{{"cid":"{CID}","pong":{{}}}}"#);
        loop {
            let received = self.recv_from_socket(WAIT).await.expect("the pong in time");
            if received == Received::Text(pong.clone()) {
                return;
            }
            self.pending.push_back(received);
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("send text");
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::binary(bytes))
            .await
            .expect("send binary");
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    /// Sends a close frame.
    pub async fn close(&mut self, code: u16) {
        let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: CloseCode::from(code),
            reason: "".into(),
        };
        self.ws
            .send(Message::Close(Some(frame)))
            .await
            .expect("send close");
    }

    /// The next data or close frame within `wait`; `None` if none came.
    pub async fn try_recv(&mut self, wait: Duration) -> Option<Received> {
        if let Some(received) = self.pending.pop_front() {
            return Some(received);
        }
        self.recv_from_socket(wait).await
    }

    async fn recv_from_socket(&mut self, wait: Duration) -> Option<Received> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            return Some(match next {
                None | Some(Err(_)) => Received::End,
                Some(Ok(Message::Text(text))) => Received::Text(text.to_string()),
                Some(Ok(Message::Binary(bytes))) => Received::Binary(bytes.to_vec()),
                Some(Ok(Message::Close(frame))) => {
                    Received::Close(frame.map(|f| (u16::from(f.code), f.reason.to_string())))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            });
        }
    }

    /// The next data or close frame; panics after [`WAIT`].
    pub async fn recv(&mut self) -> Received {
        self.try_recv(WAIT).await.expect("a frame in time")
    }

    /// The next frame, which must be text.
    pub async fn recv_text(&mut self) -> String {
        match self.recv().await {
            Received::Text(text) => text,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next frame, which must be a text frame holding one JSON object.
    pub async fn recv_json(&mut self) -> Value {
        let text = self.recv_text().await;
        let value: Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
        assert!(value.is_object(), "not an object: {text}");
        value
    }

    /// The next frame, which must be binary.
    pub async fn recv_binary(&mut self) -> Vec<u8> {
        match self.recv().await {
            Received::Binary(bytes) => bytes,
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    /// Sends `request` and returns the next frame as JSON (the reply, when
    /// nothing else is expected in between).
    pub async fn request(&mut self, request: Value) -> Value {
        self.send_json(request).await;
        self.recv_json().await
    }

    /// The first JSON message matching `want`, kept or arriving within
    /// [`WAIT`]; others are kept for later.
    pub async fn next_matching(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let parse = |received: &Received| match received {
            Received::Text(text) => serde_json::from_str::<Value>(text).ok(),
            _ => None,
        };
        if let Some(i) = self
            .pending
            .iter()
            .position(|r| parse(r).is_some_and(|v| want(&v)))
        {
            let received = self.pending.remove(i).expect("a kept frame");
            return parse(&received).expect("JSON");
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let received = self
                .recv_from_socket(left)
                .await
                .unwrap_or_else(|| panic!("timed out waiting for {what}"));
            match parse(&received) {
                Some(value) if want(&value) => return value,
                _ if matches!(received, Received::End | Received::Close(_)) => {
                    panic!("the session ended while waiting for {what}: {received:?}")
                }
                _ => self.pending.push_back(received),
            }
        }
    }

    /// The next status event, which must carry no cid.
    pub async fn recv_event(&mut self) -> Value {
        let message = self.recv_json().await;
        assert_eq!(
            object_keys(&message),
            ["status_presence_event"],
            "not an event: {message}"
        );
        message["status_presence_event"].clone()
    }

    /// Asserts nothing but pings arrive for [`QUIET`].
    pub async fn expect_silence(&mut self) {
        if let Some(received) = self.try_recv(QUIET).await {
            panic!("expected nothing, got {received:?}");
        }
    }

    /// The next frame must be a close frame; returns its code and reason.
    /// Then the connection must end.
    pub async fn expect_close(&mut self) -> (u16, String) {
        let closed = match self.recv().await {
            Received::Close(Some(close)) => close,
            other => panic!("expected a close frame, got {other:?}"),
        };
        match self.try_recv(WAIT).await {
            Some(Received::End) | None => {}
            Some(other) => panic!("expected the end after the close frame, got {other:?}"),
        }
        closed
    }

    /// Sends an app-level ping and expects its pong: proof the session is open.
    pub async fn assert_open(&mut self, cid: &str) {
        let reply = self.request(json!({"ping": {}, "cid": cid})).await;
        assert_eq!(reply, json!({"cid": cid, "pong": {}}));
    }

    /// Sets the status and consumes the ack (checked) and this session's own echo event.
    pub async fn set_status(&mut self, cid: &str, status: &str) -> Value {
        self.send_json(json!({"status_update": {"status": status}, "cid": cid}))
            .await;
        assert_eq!(self.recv_text().await, format!(r#"{{"cid":"{cid}"}}"#));
        let event = self.recv_event().await;
        assert_eq!(event["joins"][0]["status"], status, "{event}");
        event
    }

    /// Follows `ids` and returns the snapshot's presences (possibly empty).
    pub async fn follow(&mut self, cid: &str, ids: &[&str]) -> Vec<Value> {
        let reply = self
            .request(json!({"status_follow": {"user_ids": ids}, "cid": cid}))
            .await;
        snapshot_presences(&reply, cid)
    }
}

/// The presences of a `status_follow` reply, checking its shape: the list
/// is always there, `[]` when nobody is online (Godot requires it).
pub fn snapshot_presences(reply: &Value, cid: &str) -> Vec<Value> {
    assert_eq!(reply["cid"], cid, "{reply}");
    assert_eq!(object_keys(reply), ["cid", "status"], "{reply}");
    let status = &reply["status"];
    assert_eq!(object_keys(status), ["presences"], "{reply}");
    status["presences"]
        .as_array()
        .unwrap_or_else(|| panic!("presences is an array: {reply}"))
        .clone()
}

/// The keys of a JSON object, sorted.
pub fn object_keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    keys.sort();
    keys
}

/// Asserts `presence` is a complete status presence of `user` with `status`,
/// and returns its session id.
pub fn assert_presence(presence: &Value, user: &User, status: &str) -> String {
    assert_eq!(
        object_keys(presence),
        ["session_id", "status", "user_id", "username"],
        "{presence}"
    );
    assert_eq!(presence["user_id"], user.id.as_str(), "{presence}");
    assert_eq!(presence["username"], user.username.as_str(), "{presence}");
    assert_eq!(presence["status"], status, "{presence}");
    let session = presence["session_id"]
        .as_str()
        .expect("session_id")
        .to_string();
    assert!(uuid::Uuid::parse_str(&session).is_ok(), "{presence}");
    session
}

/// Asserts `event` is a join of `user` with `status` and nothing else; returns the session id.
pub fn assert_join(event: &Value, user: &User, status: &str) -> String {
    assert_eq!(object_keys(event), ["joins"], "{event}");
    assert_eq!(event["joins"].as_array().map(Vec::len), Some(1), "{event}");
    assert_presence(&event["joins"][0], user, status)
}

/// Asserts `event` is a leave of `user` with `status` and nothing else; returns the session id.
pub fn assert_leave(event: &Value, user: &User, status: &str) -> String {
    assert_eq!(object_keys(event), ["leaves"], "{event}");
    assert_eq!(event["leaves"].as_array().map(Vec::len), Some(1), "{event}");
    assert_presence(&event["leaves"][0], user, status)
}

/// Asserts `event` is an update of one session of `user` from `old` to `new`;
/// returns the session id.
pub fn assert_update(event: &Value, user: &User, old: &str, new: &str) -> String {
    assert_eq!(object_keys(event), ["joins", "leaves"], "{event}");
    assert_eq!(event["joins"].as_array().map(Vec::len), Some(1), "{event}");
    assert_eq!(event["leaves"].as_array().map(Vec::len), Some(1), "{event}");
    let joined = assert_presence(&event["joins"][0], user, new);
    let left = assert_presence(&event["leaves"][0], user, old);
    assert_eq!(joined, left, "an update concerns one session: {event}");
    joined
}

// ---------------------------------------------------------------------------
// The raw client
// ---------------------------------------------------------------------------

pub const OP_CONTINUATION: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// One server frame, as it came off the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    pub fin: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// Code and reason of a close frame.
    pub fn close(&self) -> Option<(u16, String)> {
        if self.opcode != OP_CLOSE || self.payload.len() < 2 {
            return None;
        }
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        let reason = String::from_utf8(self.payload[2..].to_vec()).expect("UTF-8 close reason");
        Some((code, reason))
    }

    pub fn text(&self) -> String {
        assert_eq!(self.opcode, OP_TEXT, "not a text frame: {self:?}");
        String::from_utf8(self.payload.clone()).expect("UTF-8 text frame")
    }
}

/// Builds one client frame: `first` holds FIN, RSV and the opcode; the mask is fixed but not zero.
pub fn client_frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![first];
    let mask_bit = if masked { 0x80 } else { 0 };
    match payload.len() {
        n if n < 126 => out.push(mask_bit | n as u8),
        n if n <= 0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    if masked {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// A websocket over a plain `TcpStream` with hand-built frames.
pub struct RawClient {
    stream: TcpStream,
    /// Bytes read and not yet parsed.
    buf: Vec<u8>,
}

impl RawClient {
    /// Performs the handshake for `target` (path and query) with extra
    /// headers. `Err` holds the HTTP reply when it is not 101.
    pub async fn connect(
        addr: SocketAddr,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<RawClient, HttpReply> {
        let stream = TcpStream::connect(addr).await.expect("connect");
        RawClient::handshake(stream, target, headers).await
    }

    /// As [`RawClient::connect`] over a socket with a receive buffer of a
    /// few KiB: a client that stops reading backs up into the server quickly.
    pub async fn connect_small_buffer(addr: SocketAddr, target: &str) -> RawClient {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .set_recv_buffer_size(4096)
            .expect("small receive buffer");
        let stream = socket.connect(addr).await.expect("connect");
        RawClient::handshake(stream, target, &[])
            .await
            .expect("upgrade")
    }

    /// The handshake over an already connected stream (e.g. one with small buffers).
    pub async fn handshake(
        mut stream: TcpStream,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Result<RawClient, HttpReply> {
        let key = STANDARD.encode(uuid::Uuid::new_v4().as_bytes());
        let mut request = format!(
            "GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send handshake");
        RawClient::handshake_sent(stream).await
    }

    /// Reads the reply to a handshake the caller already wrote.
    pub async fn handshake_sent(mut stream: TcpStream) -> Result<RawClient, HttpReply> {
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .expect("handshake reply in time")
                .expect("read handshake reply");
            assert!(
                n > 0,
                "connection closed during the handshake: {:?}",
                String::from_utf8_lossy(&buf)
            );
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).expect("UTF-8 head");
        let (status, headers) = parse_head(&head);
        let rest = buf[head_end + 4..].to_vec();
        if status != 101 {
            // Error replies carry a body; read it to the end (bounded).
            let mut reply = HttpReply {
                status,
                headers,
                body: String::new(),
            };
            let length = reply
                .header("content-length")
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            let mut body = rest;
            while body.len() < length {
                let mut chunk = [0u8; 4096];
                let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                    .await
                    .expect("error body in time")
                    .expect("read error body");
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
            reply.body = String::from_utf8(body).expect("UTF-8 body");
            return Err(reply);
        }
        let accept = headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-accept"))
            .map(|(_, v)| v.clone());
        assert!(accept.is_some(), "101 without Sec-WebSocket-Accept: {head}");
        assert!(
            !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-extensions")),
            "no extension may be negotiated: {head}"
        );
        assert!(
            !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-protocol")),
            "no subprotocol may be selected: {head}"
        );
        Ok(RawClient { stream, buf: rest })
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        // The server may already have closed; later reads tell the story.
        let _ = self.stream.write_all(bytes).await;
    }

    /// Sends one masked frame with FIN set.
    pub async fn send(&mut self, opcode: u8, payload: &[u8]) {
        self.send_raw(&client_frame(0x80 | opcode, payload, true))
            .await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send(OP_TEXT, text.as_bytes()).await;
    }

    /// Sends a close frame with `code` and `reason`.
    pub async fn send_close(&mut self, code: u16, reason: &str) {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason.as_bytes());
        self.send(OP_CLOSE, &payload).await;
    }

    /// The next frame within `wait`: `Ok(None)` at EOF, `Err(())` on timeout.
    pub async fn try_frame(&mut self, wait: Duration) -> Result<Option<RawFrame>, ()> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(frame) = self.parse_frame() {
                return Ok(Some(frame));
            }
            let mut chunk = vec![0u8; 64 * 1024];
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return Err(()),
                Ok(Err(_)) | Ok(Ok(0)) => {
                    assert!(
                        self.buf.is_empty(),
                        "connection ended inside a frame: {} bytes left, ending in {:?}",
                        self.buf.len(),
                        String::from_utf8_lossy(&self.buf[self.buf.len().saturating_sub(120)..])
                    );
                    return Ok(None);
                }
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next frame, pings included; panics on timeout. `None` at EOF.
    pub async fn frame(&mut self) -> Option<RawFrame> {
        self.try_frame(WAIT).await.expect("a frame in time")
    }

    /// The next frame that is not a server ping; panics on timeout or EOF.
    pub async fn next_data(&mut self) -> RawFrame {
        loop {
            let frame = self.frame().await.expect("a frame before the end");
            if frame.opcode != OP_PING {
                return frame;
            }
        }
    }

    /// The next non-ping frame as JSON text.
    pub async fn recv_json(&mut self) -> Value {
        let text = self.next_data().await.text();
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    /// Expects a close frame next (pings skipped), answers it as a client
    /// should, then expects the end of the connection. Returns the close
    /// code and reason.
    pub async fn expect_close(&mut self) -> (u16, String) {
        let frame = self.next_data().await;
        let close = frame
            .close()
            .unwrap_or_else(|| panic!("expected a close frame, got {frame:?}"));
        self.send_close(close.0, "").await;
        self.expect_end().await;
        close
    }

    /// Expects the connection to end with no further frame.
    pub async fn expect_end(&mut self) {
        // The server waits for our close answer for a while before dropping
        // the socket; give it that and a bit.
        match self.try_frame(WAIT).await {
            Ok(None) => {}
            Ok(Some(frame)) => panic!("expected the end, got {frame:?}"),
            Err(()) => panic!("the connection did not end in time"),
        }
    }

    /// Asserts no frame but pings arrives for [`QUIET`].
    pub async fn expect_silence(&mut self) {
        let deadline = tokio::time::Instant::now() + QUIET;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.try_frame(left).await {
                Err(()) => return,
                Ok(Some(frame)) if frame.opcode == OP_PING => continue,
                Ok(other) => panic!("expected nothing, got {other:?}"),
            }
        }
    }

    /// Parses one complete frame from `buf`, checking what RFC 6455 requires of server frames.
    fn parse_frame(&mut self) -> Option<RawFrame> {
        let buf = &self.buf;
        if buf.len() < 2 {
            return None;
        }
        let (b0, b1) = (buf[0], buf[1]);
        assert_eq!(b0 & 0x70, 0, "server frame with RSV bits: {buf:?}");
        assert_eq!(b1 & 0x80, 0, "server frames must not be masked");
        let (len, header) = match b1 & 0x7f {
            126 => {
                if buf.len() < 4 {
                    return None;
                }
                (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4)
            }
            127 => {
                if buf.len() < 10 {
                    return None;
                }
                let mut be = [0u8; 8];
                be.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(be) as usize, 10)
            }
            n => (n as usize, 2),
        };
        if buf.len() < header + len {
            return None;
        }
        let opcode = b0 & 0x0f;
        assert!(
            matches!(
                opcode,
                OP_CONTINUATION | OP_TEXT | OP_BINARY | OP_CLOSE | OP_PING | OP_PONG
            ),
            "server frame with opcode {opcode}"
        );
        let frame = RawFrame {
            fin: b0 & 0x80 != 0,
            opcode,
            payload: buf[header..header + len].to_vec(),
        };
        self.buf.drain(..header + len);
        Some(frame)
    }
}

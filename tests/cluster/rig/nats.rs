//! nats-server processes: one server, or a JetStream cluster of three with
//! routes between them, each on free ports with a store directory of its
//! own (removed with it). Every server is a child of the test process, known
//! by its PID; it is signalled by that PID only, and killed when dropped,
//! also when a test panics.
//!
//! The binary is `tests/.deps/nats-server` (`tests/install-deps.sh` puts
//! v2.14.0 there), or the one `HERALD_NATS_SERVER` names.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::net::Net;
use crate::common::{http_bytes, try_http_exchange_over};

/// How long a server gets to start (a cluster: to elect its meta leader).
const START_WAIT: Duration = Duration::from_secs(30);
/// The stream of the presence log.
pub const STREAM: &str = "KV_herald";

/// The nats-server binary the tests run (see the module doc).
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("HERALD_NATS_SERVER") {
        return path.into();
    }
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/.deps/nats-server");
    assert!(
        path.exists(),
        "{} is missing: run `bash tests/install-deps.sh` (it installs nats-server v2.14.0 there), \
         or set HERALD_NATS_SERVER to a nats-server 2.11 or newer",
        path.display()
    );
    path
}

/// Where one server listens and what it runs under.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Server name (`-n`): the stream leader is reported by it.
    pub name: String,
    /// Address of every listener (clients, monitoring, routes).
    pub host: IpAddr,
    pub client_port: u16,
    pub monitor_port: u16,
    /// Cluster mode: the cluster's name, this server's route port, and the
    /// route ports of the others.
    pub cluster: Option<(String, u16, Vec<u16>)>,
    /// Program and arguments put before the binary (`ip netns exec NS`).
    pub wrapper: Vec<String>,
}

/// One nats-server process (see the module doc).
pub struct NatsServer {
    pub options: NatsOptions,
    child: Child,
    /// Store directory and log file.
    dir: tempfile::TempDir,
    /// How the test reaches its listeners.
    net: Net,
    /// Killed (or exited) and waited for.
    gone: bool,
}

impl NatsServer {
    /// One JetStream server on free ports of 127.0.0.1, ready.
    pub async fn start_single() -> NatsServer {
        for attempt in 0.. {
            let [client_port, monitor_port] = free_ports();
            let options = NatsOptions {
                name: "nats-a".into(),
                host: Ipv4Addr::LOCALHOST.into(),
                client_port,
                monitor_port,
                cluster: None,
                wrapper: Vec::new(),
            };
            match NatsServer::try_start(options, Net::Root).await {
                Ok(server) => return server,
                // A free port may be taken between the probe and the bind.
                Err(log) if attempt < 3 => eprintln!("nats-server did not start, retrying: {log}"),
                Err(log) => panic!("nats-server did not start:\n{log}"),
            }
        }
        unreachable!()
    }

    /// Three JetStream servers on 127.0.0.1 routed into one cluster, each
    /// healthy (the meta group has a leader).
    pub async fn start_cluster() -> Vec<NatsServer> {
        for attempt in 0.. {
            let ports: [u16; 9] = free_ports();
            let routes: Vec<u16> = ports[6..9].to_vec();
            let mut servers = Vec::new();
            let mut failed = None;
            for i in 0..3 {
                let options = NatsOptions {
                    name: format!("nats-{}", ["a", "b", "c"][i]),
                    host: Ipv4Addr::LOCALHOST.into(),
                    client_port: ports[i],
                    monitor_port: ports[3 + i],
                    cluster: Some(("herald-test".into(), routes[i], routes.clone())),
                    wrapper: Vec::new(),
                };
                match NatsServer::spawn(options, Net::Root) {
                    Ok(server) => servers.push(server),
                    Err(log) => {
                        failed = Some(log);
                        break;
                    }
                }
            }
            if failed.is_none() {
                for server in &mut servers {
                    if let Err(log) = server.wait_healthy().await {
                        failed = Some(log);
                        break;
                    }
                }
            }
            match failed {
                None => return servers,
                Some(log) if attempt < 3 => {
                    eprintln!("nats cluster did not start, retrying: {log}")
                }
                Some(log) => panic!("nats cluster did not start:\n{log}"),
            }
        }
        unreachable!()
    }

    /// Starts a server as `options` say and waits until it is healthy; `Err`
    /// holds its log when it is not.
    pub async fn try_start(options: NatsOptions, net: Net) -> Result<NatsServer, String> {
        let mut server = NatsServer::spawn(options, net)?;
        server.wait_healthy().await?;
        Ok(server)
    }

    fn spawn(options: NatsOptions, net: Net) -> Result<NatsServer, String> {
        let dir = tempfile::Builder::new()
            .prefix("herald-nats-")
            .tempdir()
            .expect("a temporary directory");
        let log = std::fs::File::create(dir.path().join("nats.log")).expect("the log file");
        let mut command = match options.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(binary());
                command
            }
            None => Command::new(binary()),
        };
        command
            .args(["-js", "-sd"])
            .arg(dir.path().join("store"))
            .args(["-n", &options.name, "-a", &options.host.to_string()])
            .args(["-p", &options.client_port.to_string()])
            .args(["-m", &options.monitor_port.to_string()]);
        if let Some((cluster, own, all)) = &options.cluster {
            let routes: Vec<String> = all
                .iter()
                .filter(|port| *port != own)
                .map(|port| format!("nats://{}:{port}", options.host))
                .collect();
            command
                .args(["--cluster_name", cluster])
                .args(["--cluster", &format!("nats://{}:{own}", options.host)])
                .args(["--routes", &routes.join(",")]);
        }
        let child = command
            .env_clear()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", binary().display()))?;
        Ok(NatsServer {
            options,
            child,
            dir,
            net,
            gone: false,
        })
    }

    /// Waits until `/healthz` answers 200 (JetStream ready; in a cluster, with
    /// a meta leader). `Err` holds the log if the server exits or never is.
    async fn wait_healthy(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_WAIT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.gone = true;
                return Err(format!("exited with {status}:\n{}", self.log()));
            }
            if self
                .http_get("/healthz")
                .await
                .is_some_and(|(s, _)| s == 200)
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not healthy within {START_WAIT:?}:\n{}",
                    self.log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `GET target` on the monitoring port: status and body, `None` when
    /// it cannot be reached.
    pub async fn http_get(&self, target: &str) -> Option<(u16, String)> {
        let addr = SocketAddr::new(self.options.host, self.options.monitor_port);
        let stream = self.net.connect(addr).await.ok()?;
        let request = http_bytes("GET", target, &[], b"");
        let reply = tokio::time::timeout(Duration::from_secs(5), async {
            try_http_exchange_over(stream, &request).await
        })
        .await
        .ok()??;
        Some((reply.status, reply.body))
    }

    /// The client address.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::new(self.options.host, self.options.client_port)
    }

    /// `nats://HOST:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.client_addr())
    }

    pub fn name(&self) -> &str {
        &self.options.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    /// Sends `signal` to the server's PID.
    pub fn signal(&self, signal: libc::c_int) {
        assert!(!self.gone, "{} is not running", self.name());
        let pid = libc::pid_t::try_from(self.pid()).expect("a pid");
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        let sent = unsafe { libc::kill(pid, signal) };
        assert_eq!(sent, 0, "kill({pid}, {signal})");
    }

    /// SIGKILL, and waits for the process.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
        self.gone = true;
    }

    pub fn is_running(&self) -> bool {
        !self.gone
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if !self.gone {
            // By PID (std's Child::kill), never by name; a stopped server dies too.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The name of the server that leads stream [`STREAM`], asked of the first
/// running server in `servers` that answers (at most 20 s: during an
/// election there is none).
pub async fn stream_leader(servers: &[NatsServer]) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last_error = String::new();
    while Instant::now() < deadline {
        for server in servers.iter().filter(|s| s.is_running()) {
            match leader_by(&server.url()).await {
                Ok(leader) => return leader,
                Err(error) => last_error = error,
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("no leader of {STREAM} found: {last_error}");
}

/// Waits (up to `limit`) until a running server's monitoring port names a
/// leader of [`STREAM`] other than `old`, polling every 50 ms; returns when
/// it was first seen. The monitoring port answers during an election, when
/// a JetStream request would wait for a leader.
pub async fn new_stream_leader_seen(
    servers: &[NatsServer],
    old: &str,
    limit: Duration,
) -> Option<Instant> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        for server in servers.iter().filter(|s| s.is_running()) {
            let Some((200, body)) = server.http_get("/jsz?streams=true").await else {
                continue;
            };
            let json: serde_json::Value = serde_json::from_str(&dechunk(&body)).unwrap_or_default();
            let streams = json["account_details"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|account| account["stream_detail"].as_array().into_iter().flatten());
            for stream in streams {
                let leader = stream["cluster"]["leader"].as_str().unwrap_or("");
                if stream["name"] == STREAM && !leader.is_empty() && leader != old {
                    return Some(Instant::now());
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// The body of a `Transfer-Encoding: chunked` answer (the monitoring
/// port's), or `body` itself if it is not chunked.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_owned();
        };
        if size == 0 {
            return out;
        }
        let Some(data) = after.get(..size) else {
            return body.to_owned();
        };
        out.push_str(data);
        rest = after[size..].trim_start_matches("\r\n");
    }
    if out.is_empty() {
        body.to_owned()
    } else {
        out
    }
}

async fn leader_by(url: &str) -> Result<String, String> {
    let ask = async {
        let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
        let js = async_nats::jetstream::new(client);
        let mut stream = js.get_stream(STREAM).await.map_err(|e| e.to_string())?;
        let info = stream.info().await.map_err(|e| e.to_string())?;
        info.cluster
            .as_ref()
            .and_then(|c| c.leader.clone())
            .ok_or_else(|| format!("{STREAM} has no leader now"))
    };
    tokio::time::timeout(Duration::from_secs(5), ask)
        .await
        .map_err(|_| format!("{url} did not answer"))?
}

/// A fake NATS server on 127.0.0.1 that says it is `version`: it sends
/// `INFO` and answers every `PING` with `PONG`, enough for a client to
/// connect. It serves until the test's runtime ends.
pub async fn fake_server(version: &str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a listener");
    let addr = listener.local_addr().expect("its address");
    let info = format!(
        "INFO {{\"server_id\":\"FAKE\",\"server_name\":\"fake\",\"version\":\"{version}\",\
         \"proto\":1,\"go\":\"go1.19\",\"host\":\"127.0.0.1\",\"port\":{},\"headers\":true,\
         \"max_payload\":1048576,\"jetstream\":true}}\r\n",
        addr.port()
    );
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let info = info.clone();
            tokio::spawn(async move {
                if stream.write_all(info.as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = vec![0u8; 64 * 1024];
                let mut seen = Vec::new();
                loop {
                    let n = match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(end) = seen.windows(2).position(|w| w == b"\r\n") {
                        let line: Vec<u8> = seen.drain(..end + 2).collect();
                        if line.starts_with(b"PING") && stream.write_all(b"PONG\r\n").await.is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// `N` ports of 127.0.0.1 free right now (probed by binding port 0).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("an address").port())
}

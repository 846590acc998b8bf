//! The cluster test rig: real nats-server and real Herald processes, each a
//! child of the test process known by its PID, and the test's websocket
//! clients talking to them over real sockets.
//!
//! * [`run`] runs one test: it takes the binary-wide lock (cluster tests
//!   measure timings, so they never overlap) and a fresh tokio runtime.
//! * [`Cluster`] is a set of nodes sharing one NATS (a single server, three
//!   servers in a JetStream cluster, or one server in a network namespace
//!   topology), built with [`ClusterSpec`]. Dropping it kills every process
//!   it started, by PID, then deletes its namespaces; on a panic it first
//!   prints the nodes' warnings and the NATS logs.
//! * [`Node`] is one Herald node: its process ([`HeraldProcess`]), how the
//!   test reaches it ([`Net`]), and what the tests do to it (connect,
//!   authenticate, scrape, signal, restart with the same node id).
//! * [`session::Session`] records a websocket session's frames with the
//!   instant each arrived; [`population::Population`] is the standard set
//!   of sessions the failure tests follow across nodes.
//!
//! Accounts: `--nats-url` needs `--database-url` (one account store for the
//! whole cluster): one PostgreSQL server per test binary, a database per
//! cluster; see [`SharedAccounts`].

pub mod nats;
pub mod net;
pub mod population;
pub mod session;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{
    connect_over, http_bytes, metric, try_http_exchange_over, user_of, Client, HeraldLaunch,
    HeraldProcess, HttpReply, User, DEFAULT_KEY_AUTH,
};
use nats::NatsServer;
use net::{Net, Netns};
use session::Session;

/// How long a node gets to start: connect, load the log, register.
pub const NODE_START: Duration = Duration::from_secs(30);
/// The backend API's key (Herald's default `--http-key`).
pub const HTTP_KEY: &str = "defaulthttpkey";

/// Runs one cluster test (see the module doc).
pub fn run(test: impl std::future::Future<Output = ()>) {
    static SERIAL: Mutex<()> = Mutex::new(());
    // A test that failed still lets the others run.
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(test);
}

/// Network namespaces for a partition test, or `None` (after saying so
/// loudly) where they cannot be made: not root, or no `ip`. On CI (`CI`
/// set) they must work.
pub fn netns_or_skip(test: &str, nodes: usize) -> Option<Netns> {
    match Netns::create(nodes) {
        Ok(netns) => Some(netns),
        Err(reason) if std::env::var_os("CI").is_none() => {
            eprintln!(
                "\n*** SKIPPED {test}: network namespaces are unavailable here ({reason}); \
                 run as root with iproute2 ***\n"
            );
            None
        }
        Err(reason) => panic!("{test}: network namespaces are unavailable on CI: {reason}"),
    }
}

/// The account store every node of one cluster shares (`--nats-url`
/// requires `--database-url`): a database of its own on the test binary's
/// one PostgreSQL server ([`crate::common::postgres::shared`]), so that
/// users created on one node can be followed from any other. Nodes inside
/// network namespaces reach it through a forwarder on the hub
/// ([`Netns::forward`]).
pub struct SharedAccounts {
    /// `postgres://…` as the root namespace reaches it.
    pub url: String,
}

impl SharedAccounts {
    pub fn new() -> SharedAccounts {
        let postgres = crate::common::postgres::shared();
        SharedAccounts {
            url: postgres.url(&postgres.create_database()),
        }
    }

    /// The URL with its host and port replaced by `addr`, and the address it named.
    fn via(&self, addr: SocketAddr) -> (String, SocketAddr) {
        let mut url = url::Url::parse(&self.url).expect("a database URL");
        let host = url.host_str().expect("a host").to_owned();
        let target = SocketAddr::new(
            host.parse().expect("an IP address"),
            url.port().unwrap_or(5432),
        );
        url.set_host(Some(&addr.ip().to_string())).expect("a host");
        url.set_port(Some(addr.port())).expect("a port");
        (url.to_string(), target)
    }
}

/// Which NATS a cluster uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatsLayout {
    /// One server on 127.0.0.1 (the stream R1).
    Single,
    /// Three servers on 127.0.0.1 in one JetStream cluster.
    Three,
}

/// What [`Cluster::start`] builds.
pub struct ClusterSpec {
    pub nodes: usize,
    pub nats: NatsLayout,
    /// Flags every node gets (e.g. `--single-socket`, `--nats-replicas 3`).
    pub args: Vec<String>,
    /// Run NATS and every node in network namespaces ([`Netns`]): one
    /// server at [`Netns::NATS`], node `i` at [`Netns::node_ip`].
    pub netns: Option<Netns>,
}

impl ClusterSpec {
    /// `nodes` nodes on one nats-server on loopback.
    pub fn new(nodes: usize) -> ClusterSpec {
        ClusterSpec {
            nodes,
            nats: NatsLayout::Single,
            args: Vec::new(),
            netns: None,
        }
    }

    pub fn nats(mut self, layout: NatsLayout) -> ClusterSpec {
        self.nats = layout;
        self
    }

    pub fn args(mut self, args: &[&str]) -> ClusterSpec {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    pub fn in_netns(mut self, netns: Netns) -> ClusterSpec {
        self.netns = Some(netns);
        self
    }
}

/// Nodes sharing one NATS (see the module doc). Fields drop in order:
/// nodes, then NATS, then the namespaces.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub nats: Vec<NatsServer>,
    pub netns: Option<Netns>,
    /// `--nats-url` as the nodes get it.
    pub nats_url: String,
    /// The account store flags every node gets.
    accounts: Vec<String>,
    net: Net,
}

impl Cluster {
    /// Starts NATS and the nodes, each ready (`/readyz` 200).
    pub async fn start(spec: ClusterSpec) -> Cluster {
        let accounts = SharedAccounts::new();
        let (nats, net, database_url) = match &spec.netns {
            Some(netns) => {
                let options = nats::NatsOptions {
                    name: "nats-a".into(),
                    host: Netns::NATS.into(),
                    client_port: 4222,
                    monitor_port: 8222,
                    cluster: None,
                    wrapper: Netns::wrapper(netns.hub()),
                };
                let server = NatsServer::try_start(options, netns.net())
                    .await
                    .unwrap_or_else(|log| panic!("nats-server in the hub did not start:\n{log}"));
                let (url, target) = accounts.via(SocketAddr::new(Netns::SERVICES.into(), 5432));
                netns
                    .forward(SocketAddr::new(Netns::SERVICES.into(), 5432), target)
                    .await;
                (vec![server], netns.net(), url)
            }
            None => {
                let servers = match spec.nats {
                    NatsLayout::Single => vec![NatsServer::start_single().await],
                    NatsLayout::Three => NatsServer::start_cluster().await,
                };
                (servers, Net::Root, accounts.url.clone())
            }
        };
        let nats_url = nats
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",");
        let flags = vec!["--database-url".to_owned(), database_url];
        let mut cluster = Cluster {
            nodes: Vec::new(),
            nats,
            netns: spec.netns,
            nats_url,
            accounts: flags,
            net,
        };
        for i in 0..spec.nodes {
            let args: Vec<&str> = spec.args.iter().map(String::as_str).collect();
            let node = cluster.add_node(i, &args);
            cluster.nodes.push(node);
        }
        for node in &mut cluster.nodes {
            node.wait_serving();
        }
        for node in &cluster.nodes {
            node.wait_ready(NODE_START).await;
        }
        cluster
    }

    /// Starts node `i` (`node-<i>`, without waiting for it) with the
    /// cluster's flags and `args`: in its namespace when the cluster has
    /// them, else on 127.0.0.(11+i).
    pub fn add_node(&self, i: usize, args: &[&str]) -> Node {
        let id = format!("node-{i}");
        let (ip, wrapper): (IpAddr, Vec<String>) = match &self.netns {
            Some(netns) => (Netns::node_ip(i).into(), Netns::wrapper(netns.node(i))),
            None => (Ipv4Addr::new(127, 0, 0, 11 + i as u8).into(), Vec::new()),
        };
        let mut all: Vec<String> = [
            "--shards",
            "2",
            "--node-id",
            &id,
            "--nats-url",
            &self.nats_url,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        all.extend(self.accounts.iter().cloned());
        all.extend(args.iter().map(|a| a.to_string()));
        let launch = HeraldLaunch {
            wrapper,
            listen: format!("{ip}:0"),
            admin_listen: format!("{ip}:0"),
            args: all,
        };
        let dir = tempfile::Builder::new()
            .prefix("herald-node-")
            .tempdir()
            .expect("a data directory");
        Node {
            id,
            process: Some(HeraldProcess::begin_in(dir, launch)),
            net: self.net.clone(),
        }
    }

    /// Asserts that each of `nodes` read `verdicts` verdicts and never fenced.
    pub async fn expect_verdicts(&self, nodes: std::ops::Range<usize>, verdicts: f64) {
        for i in nodes {
            let counters = self.node(i).cluster_counters().await;
            assert_eq!(
                counters.verdicts, verdicts,
                "node {i}'s verdicts: {counters:?}"
            );
            assert_eq!(
                counters.fences_total(),
                0.0,
                "node {i} never fenced: {counters:?}"
            );
        }
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for node in &mut self.nodes {
            eprintln!(
                "---- {} (pid {:?}): warnings and cluster events",
                node.id,
                node.pid()
            );
            for line in node.notable_logs() {
                eprintln!("{line}");
            }
        }
        for server in &self.nats {
            let log = server.log();
            // Not the servers' attempts to reach a killed peer, which fill a log.
            let tail: Vec<&str> = log
                .lines()
                .rev()
                .filter(|line| !line.contains("Error trying to connect to route"))
                .take(60)
                .collect();
            eprintln!("---- {} (pid {}): last lines", server.name(), server.pid());
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// One Herald node of a [`Cluster`].
pub struct Node {
    /// Its `--node-id`.
    pub id: String,
    /// `None` only inside [`Node::restart`].
    process: Option<HeraldProcess>,
    net: Net,
}

impl Node {
    pub fn process(&mut self) -> &mut HeraldProcess {
        self.process.as_mut().expect("a process")
    }

    fn proc_ref(&self) -> &HeraldProcess {
        self.process.as_ref().expect("a process")
    }

    /// The client listener.
    pub fn addr(&self) -> SocketAddr {
        self.proc_ref().addr
    }

    /// The admin listener.
    pub fn admin(&self) -> SocketAddr {
        self.proc_ref().admin
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(HeraldProcess::pid)
    }

    /// Waits for the "herald is serving" line (the node registered).
    pub fn wait_serving(&mut self) {
        self.process().wait_serving(NODE_START);
    }

    /// Sends `signal` to the node's PID.
    pub fn signal(&self, signal: libc::c_int) {
        self.proc_ref().signal(signal);
    }

    /// SIGKILLs the node and starts it again at once with the same node id,
    /// data directory and flags (not waiting for it: see [`Node::wait_serving`]).
    /// Returns when the new process was spawned.
    pub fn kill_and_relaunch(&mut self) -> Instant {
        self.signal(libc::SIGKILL);
        let old = self.process.take().expect("a process");
        self.process = Some(old.relaunch());
        Instant::now()
    }

    /// `GET target` on the admin listener.
    pub async fn admin_get(&self, target: &str) -> HttpReply {
        self.http(self.admin(), &http_bytes("GET", target, &[], b""))
            .await
    }

    /// Sends `request` (see [`http_bytes`]) to `addr` through the node's
    /// network and reads the reply.
    pub async fn http(&self, addr: SocketAddr, request: &[u8]) -> HttpReply {
        self.exchange(addr, request).await.unwrap_or_else(|| {
            let head = String::from_utf8_lossy(&request[..request.len().min(80)]).into_owned();
            panic!("{}: no answer to {head:?}", self.id)
        })
    }

    async fn exchange(&self, addr: SocketAddr, request: &[u8]) -> Option<HttpReply> {
        let stream = self.net.connect(addr).await.ok()?;
        try_http_exchange_over(stream, request).await
    }

    /// `/readyz`'s status, `None` if the admin listener does not answer.
    pub async fn readyz(&self) -> Option<u16> {
        let request = http_bytes("GET", "/readyz", &[], b"");
        self.exchange(self.admin(), &request)
            .await
            .map(|r| r.status)
    }

    /// Polls `/readyz` every 10 ms until 200; returns when it first was.
    pub async fn wait_ready(&self, limit: Duration) -> Instant {
        let deadline = Instant::now() + limit;
        loop {
            if self.readyz().await == Some(200) {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "{}: /readyz not 200 within {limit:?}",
                self.id
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The node's metrics.
    pub async fn scrape(&self) -> String {
        let reply = self.admin_get("/metrics").await;
        assert_eq!(reply.status, 200, "{}: /metrics: {}", self.id, reply.body);
        reply.body
    }

    /// One sample of the node's metrics.
    pub async fn metric(&self, name: &str) -> f64 {
        metric(&self.scrape().await, name)
    }

    /// The node's fences, by reason, and its verdicts.
    pub async fn cluster_counters(&self) -> ClusterCounters {
        let text = self.scrape().await;
        let fence = |reason: &str| {
            metric(
                &text,
                &format!("herald_cluster_fences_total{{reason=\"{reason}\"}}"),
            )
        };
        ClusterCounters {
            verdicts: metric(&text, "herald_cluster_verdicts_total"),
            fences: [
                fence("nats_disconnected"),
                fence("heartbeat_unacknowledged"),
                fence("lease_lost"),
                fence("node_id_taken"),
            ],
            ignored_records: metric(&text, "herald_cluster_ignored_records_total"),
            coalesced: metric(&text, "herald_cluster_coalesced_total"),
            watch_restarts: metric(&text, "herald_cluster_watch_restarts_total"),
        }
    }

    /// Authenticates (creating) the account `username` on this node.
    pub async fn user(&self, username: &str) -> User {
        let body =
            serde_json::json!({ "id": format!("custom-{username}"), "vars": {} }).to_string();
        let target = format!("/v2/account/authenticate/custom?create=true&username={username}&");
        let headers = [
            ("Accept", "application/json"),
            ("Content-Type", "application/json"),
            ("Authorization", DEFAULT_KEY_AUTH),
        ];
        let request = http_bytes("POST", &target, &headers, body.as_bytes());
        let reply = self.http(self.addr(), &request).await;
        user_of(&reply, username)
    }

    /// A JSON session of `user` (`status`: the query parameter), registered.
    pub async fn connect(&self, user: &User, status: bool) -> Client {
        let stream = self
            .net
            .connect(self.addr())
            .await
            .unwrap_or_else(|e| panic!("{}: connect: {e}", self.id));
        let url = format!(
            "ws://{}/ws?lang=en&status={status}&token={}",
            self.addr(),
            user.token
        );
        connect_over(stream, &url).await
    }

    /// A recorded JSON session of `user`.
    pub async fn session(&self, user: &User, status: bool) -> Session {
        Session::record(self.connect(user, status).await, user.clone())
    }

    /// The websocket upgrade's answer when it is not 101 (e.g. 503 while
    /// the node is not ready); `None` when the upgrade succeeds.
    pub async fn refused_upgrade(&self, user: &User) -> Option<HttpReply> {
        let stream = self.net.connect(self.addr()).await.ok()?;
        let target = format!("/ws?status=true&token={}", user.token);
        crate::common::RawClient::handshake(stream, &target, &[])
            .await
            .err()
    }

    /// The node's log lines worth printing after a failure: warnings, errors
    /// and cluster events.
    pub fn notable_logs(&mut self) -> Vec<String> {
        let Some(process) = self.process.as_mut() else {
            return Vec::new();
        };
        process
            .logs()
            .iter()
            .filter(|(_, line)| {
                line["level"] != "INFO"
                    || line["target"]
                        .as_str()
                        .is_some_and(|t| t.contains("cluster"))
            })
            .map(|(_, line)| line.to_string())
            .collect()
    }

    /// When the log line `message` was read, if within `limit`.
    pub fn log_line(&mut self, message: &str, limit: Duration) -> Option<(Instant, Value)> {
        self.process().try_log_line(message, limit)
    }
}

/// A node's cluster counters (see [`Node::cluster_counters`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClusterCounters {
    pub verdicts: f64,
    /// nats_disconnected, heartbeat_unacknowledged, lease_lost, node_id_taken.
    pub fences: [f64; 4],
    pub ignored_records: f64,
    pub coalesced: f64,
    pub watch_restarts: f64,
}

impl ClusterCounters {
    pub fn fences_total(&self) -> f64 {
        self.fences.iter().sum()
    }
}

/// Seconds of `d`, for reports.
pub fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

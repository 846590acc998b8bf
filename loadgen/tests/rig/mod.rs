//! The processes of loadgen's cluster tests, in one place (so that the
//! cluster rig of Herald's own suite can take its place once it is on main):
//! one nats-server with JetStream and N Herald nodes on 127.0.0.1, each a
//! child of the test known by its PID. Dropping a [`Cluster`] kills every
//! process it started, by PID (`Child::kill`), nodes first, and waits for
//! them; that also runs when a test panics.
//!
//! nats-server (2.11 or newer): `tests/.deps/nats-server`, where
//! `tests/install-deps.sh` installs v2.14.0, else `$HERALD_NATS_SERVER`.
//! Herald: the binary cargo built into the same target directory.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{herald_binary, metric, HeraldProcess};

/// Accounts: `--nats-url` requires `--database-url` (one account store for
/// the cluster): a database of its own on the test binary's one PostgreSQL
/// server (`common::postgres::shared`). loadgen mints its tokens offline,
/// so its users have no account rows: `--follow-unknown-ids` keeps their
/// follows.
fn accounts() -> Vec<String> {
    let postgres = crate::common::postgres::shared();
    vec![
        "--database-url".into(),
        postgres.url(&postgres.create_database()),
        "--follow-unknown-ids".into(),
    ]
}

/// How long a node gets to report `/readyz` 200.
const READY_WAIT: Duration = Duration::from_secs(30);

/// The nats-server binary (see the module doc).
pub fn nats_binary() -> PathBuf {
    let installed = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/.deps/nats-server");
    if installed.exists() {
        return installed;
    }
    if let Some(path) = std::env::var_os("HERALD_NATS_SERVER") {
        return path.into();
    }
    panic!(
        "no nats-server: {} is missing (run `bash tests/install-deps.sh`) and \
         HERALD_NATS_SERVER is not set",
        installed.display()
    );
}

/// One nats-server, JetStream on, its store in a directory of its own.
pub struct Nats {
    child: Child,
    pub port: u16,
    _store: tempfile::TempDir,
}

impl Nats {
    /// Starts a server on a free port of 127.0.0.1 and waits until it says
    /// it is ready. A port taken between the probe and the bind makes the
    /// server exit; then another port is tried.
    pub fn start() -> Nats {
        for _ in 0..5 {
            let port = free_port();
            let store = tempfile::tempdir().expect("a store directory");
            let mut child = Command::new(nats_binary())
                .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
                .arg(store.path())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("nats-server starts");
            let stderr = child.stderr.take().expect("piped stderr");
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        return;
                    }
                }
            });
            let mut log = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(10);
            let ready = loop {
                let left = deadline.saturating_duration_since(Instant::now());
                match rx.recv_timeout(left) {
                    Ok(line) => {
                        let done = line.contains("Server is ready");
                        log.push(line);
                        if done {
                            break true;
                        }
                    }
                    Err(_) => break false,
                }
            };
            let mut nats = Nats {
                child,
                port,
                _store: store,
            };
            if ready {
                // Keep draining its log so that it never blocks on stderr.
                std::thread::spawn(move || for _line in rx {});
                return nats;
            }
            let _ = nats.child.kill();
            let _ = nats.child.wait();
            eprintln!(
                "nats-server did not start on port {port}:\n{}",
                log.join("\n")
            );
        }
        panic!("nats-server did not start");
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Herald nodes sharing one NATS. Fields drop in order: nodes, then NATS.
pub struct Cluster {
    pub nodes: Vec<HeraldProcess>,
    pub nats: Nats,
}

impl Cluster {
    /// NATS and `n` nodes (`extra` added to each node's flags), every node ready.
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        assert!(
            herald_binary().exists(),
            "build herald first (cargo test --workspace does)"
        );
        let nats = Nats::start();
        let url = nats.url();
        let accounts = accounts();
        let mut nodes = Vec::new();
        for i in 0..n {
            let id = format!("t{i}");
            let mut args = vec!["--nats-url", &url, "--node-id", &id];
            args.extend(accounts.iter().map(String::as_str));
            args.extend_from_slice(extra);
            nodes.push(HeraldProcess::start(&args));
        }
        let cluster = Cluster { nodes, nats };
        for node in &cluster.nodes {
            wait_ready(node.admin);
        }
        cluster
    }

    /// `ws://…` of every node, comma-separated (loadgen's `--url`).
    pub fn urls(&self) -> String {
        let urls: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("ws://{}", n.addr))
            .collect();
        urls.join(",")
    }

    /// Every node's pid, comma-separated (loadgen's `--server-pid`).
    pub fn pids(&self) -> String {
        let pids: Vec<String> = self.nodes.iter().map(|n| n.pid().to_string()).collect();
        pids.join(",")
    }

    /// The sum over the nodes of the sample `name` of `/metrics`.
    pub fn metric_sum(&self, name: &str) -> f64 {
        self.nodes
            .iter()
            .map(|n| metric(&get(n.admin, "/metrics").1, name))
            .sum()
    }
}

/// Polls `GET /readyz` until 200; panics after [`READY_WAIT`].
fn wait_ready(admin: SocketAddr) {
    let deadline = Instant::now() + READY_WAIT;
    loop {
        if get(admin, "/readyz").0 == 200 {
            return;
        }
        assert!(Instant::now() < deadline, "node {admin} not ready in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `GET target` (HTTP/1.0, bounded): status code and body; `(0, "")` when
/// the listener cannot be reached.
pub fn get(addr: SocketAddr, target: &str) -> (u16, String) {
    let exchange = || -> std::io::Result<(u16, String)> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {target} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
        let mut reply = String::new();
        s.take(16 << 20).read_to_string(&mut reply)?;
        let status = reply
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = reply
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Ok((status, body))
    };
    exchange().unwrap_or((0, String::new()))
}

/// Runs loadgen with `args`, bounded by `limit` (killed by PID past it);
/// returns its exit status and summary line.
pub fn loadgen(args: &[String], limit: Duration) -> (std::process::ExitStatus, serde_json::Value) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("loadgen runs");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let status = crate::common::child_exit(&mut child, limit).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("loadgen {args:?} did not finish within {limit:?}")
    });
    let out = reader.join().expect("stdout reader");
    let summary = serde_json::from_str(out.trim())
        .unwrap_or_else(|e| panic!("the summary is not JSON ({e}): {out}"));
    (status, summary)
}

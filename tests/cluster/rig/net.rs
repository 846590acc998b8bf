//! How the test reaches the processes it runs: straight from the root
//! network namespace ([`Net::Root`], loopback), or from inside the `hub`
//! namespace of a [`Netns`] ([`Net::Namespace`]).
//!
//! # Network namespaces (partition tests)
//!
//! [`Netns::create`] builds, with `ip`, a `hub` namespace holding a bridge
//! (198.18.0.1 for nats-server, 198.18.0.2 for services the test forwards
//! in, such as the account database, 198.18.0.3 for the test's own
//! connections) and one namespace per node, each joined
//! to the bridge by a veth pair (node `i` at 198.18.0.(11+i)). Addresses come
//! from 198.18.0.0/15 (benchmarking, never routed) and no namespace has a
//! default route, so nothing in them can reach anything else. Nothing in
//! the root namespace is changed: no link, no address, no route (the design
//! note's §5.1 pitfall: a connect there may leave through the root default
//! route). A node is cut from NATS by a blackhole route inside its own
//! namespace ([`Netns::cut`]) and healed by deleting it ([`Netns::heal`]).
//!
//! The test's own sockets into the namespaces are created by one thread that
//! has `setns()`-ed into the hub ([`Net::connect`]); a socket stays in the
//! namespace it was made in, so tokio then drives it like any other. The
//! namespaces are deleted when the [`Netns`] is dropped, also on a panic,
//! after the processes in them were killed (their owners drop first); those
//! of an earlier test process that died without cleaning up are deleted at
//! the next [`Netns::create`].

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;

/// Prefix of every namespace this harness creates: `herald-t<pid>-<n>-…`.
const PREFIX: &str = "herald-t";
/// How long a connect into a namespace may take.
const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// Where the test's sockets come from (see the module doc).
#[derive(Clone)]
pub enum Net {
    Root,
    Namespace(Arc<NamespaceThread>),
}

impl Net {
    /// A TCP connection to `addr`, made in this network namespace.
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        match self {
            Net::Root => tokio::time::timeout(CONNECT_WAIT, TcpStream::connect(addr))
                .await
                .map_err(|_| std::io::ErrorKind::TimedOut)?,
            Net::Namespace(thread) => {
                let stream = thread
                    .run(move || {
                        let socket = socket2::Socket::new(
                            socket2::Domain::IPV4,
                            socket2::Type::STREAM,
                            None,
                        )?;
                        // Not the bridge's first address (nats-server's):
                        // a node cut from NATS must still answer the test.
                        socket.bind(&SocketAddr::new(Netns::CLIENT.into(), 0).into())?;
                        socket.connect_timeout(&addr.into(), CONNECT_WAIT)?;
                        let stream: std::net::TcpStream = socket.into();
                        stream.set_nonblocking(true)?;
                        Ok::<_, std::io::Error>(stream)
                    })
                    .await?;
                TcpStream::from_std(stream)
            }
        }
    }

    /// A listener on `addr` in this network namespace.
    pub async fn listen(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
        let listener = match self {
            Net::Root => std::net::TcpListener::bind(addr)?,
            Net::Namespace(thread) => {
                thread
                    .run(move || std::net::TcpListener::bind(addr))
                    .await?
            }
        };
        listener.set_nonblocking(true)?;
        tokio::net::TcpListener::from_std(listener)
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread living in one network namespace that runs jobs there.
pub struct NamespaceThread {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl NamespaceThread {
    /// A thread that has joined namespace `name` (`/run/netns/NAME`).
    fn start(name: &str) -> Result<NamespaceThread, String> {
        let file = std::fs::File::open(format!("/run/netns/{name}"))
            .map_err(|e| format!("cannot open namespace {name}: {e}"))?;
        let (jobs, queue) = mpsc::channel::<Job>();
        let (joined, outcome) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("netns-{name}"))
            .spawn(move || {
                // SAFETY: setns(2) on a namespace file we hold open; it moves
                // only this thread, which runs nothing but these jobs.
                let done = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                let _ = joined.send(if done == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error().to_string())
                });
                if done == 0 {
                    // Ends when the NamespaceThread (the sender) is dropped.
                    for job in queue {
                        job();
                    }
                }
            })
            .map_err(|e| e.to_string())?;
        outcome
            .recv()
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("setns into {name}: {e}"))?;
        Ok(NamespaceThread {
            jobs: Mutex::new(jobs),
        })
    }

    /// Runs `job` on the thread (inside the namespace) and returns its result.
    pub async fn run<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> T {
        let (reply, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = reply.send(job());
        });
        self.jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send(job)
            .expect("the namespace thread runs");
        result.await.expect("the namespace thread answers")
    }
}

/// A hub namespace with a bridge and one namespace per node (see the module doc).
pub struct Netns {
    hub: String,
    nodes: Vec<String>,
    net: Net,
}

impl Netns {
    /// nats-server's address on the hub's bridge.
    pub const NATS: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    /// The hub's address for services forwarded from the root namespace.
    pub const SERVICES: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    /// The source address of the test's own connections from the hub.
    pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);

    /// Node `i`'s address.
    pub fn node_ip(i: usize) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, 11 + i as u8)
    }

    /// Creates the hub and `nodes` node namespaces. `Err` says why network
    /// namespaces cannot be used here (not root, no `ip`), and the caller skips.
    pub fn create(nodes: usize) -> Result<Netns, String> {
        remove_stale();
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = format!("{PREFIX}{}-{n}", std::process::id());
        let hub = format!("{base}-hub");
        ip(&["netns", "add", &hub])?;
        // From here on, Drop deletes whatever was created.
        let mut netns = Netns {
            hub: hub.clone(),
            nodes: Vec::new(),
            net: Net::Root,
        };
        let bridge = format!("{}/24", Netns::NATS);
        let services = format!("{}/24", Netns::SERVICES);
        let client = format!("{}/24", Netns::CLIENT);
        netns.ip_in(&hub, &["link", "set", "lo", "up"])?;
        netns.ip_in(&hub, &["link", "add", "br0", "type", "bridge"])?;
        netns.ip_in(&hub, &["addr", "add", &bridge, "dev", "br0"])?;
        netns.ip_in(&hub, &["addr", "add", &services, "dev", "br0"])?;
        netns.ip_in(&hub, &["addr", "add", &client, "dev", "br0"])?;
        netns.ip_in(&hub, &["link", "set", "br0", "up"])?;
        for i in 0..nodes {
            let name = format!("{base}-n{i}");
            ip(&["netns", "add", &name])?;
            netns.nodes.push(name.clone());
            let port = format!("vn{i}");
            // Both ends are made inside namespaces: the hub end in the hub,
            // the other moved straight into the node's namespace.
            netns.ip_in(
                &hub,
                &[
                    "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &name,
                ],
            )?;
            netns.ip_in(&hub, &["link", "set", &port, "master", "br0"])?;
            netns.ip_in(&hub, &["link", "set", &port, "up"])?;
            let addr = format!("{}/24", Netns::node_ip(i));
            netns.ip_in(&name, &["link", "set", "lo", "up"])?;
            netns.ip_in(&name, &["addr", "add", &addr, "dev", "eth0"])?;
            netns.ip_in(&name, &["link", "set", "eth0", "up"])?;
            let routes = netns.ip_in(&name, &["route", "show", "default"])?;
            assert!(
                routes.trim().is_empty(),
                "{name} has a default route: {routes}"
            );
        }
        netns.net = Net::Namespace(Arc::new(NamespaceThread::start(&hub)?));
        Ok(netns)
    }

    /// The hub namespace's name.
    pub fn hub(&self) -> &str {
        &self.hub
    }

    /// Node `i`'s namespace.
    pub fn node(&self, i: usize) -> &str {
        &self.nodes[i]
    }

    /// How the test reaches the namespaces: from the hub.
    pub fn net(&self) -> Net {
        self.net.clone()
    }

    /// The command prefix that runs a program in namespace `name` (as the
    /// same process: `ip netns exec` execs it).
    pub fn wrapper(name: &str) -> Vec<String> {
        ["ip", "netns", "exec", name]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Cuts node `i`'s path to `addr`: a blackhole route in its namespace.
    pub fn cut(&self, i: usize, addr: Ipv4Addr) {
        let target = format!("{addr}/32");
        self.ip_in(&self.nodes[i], &["route", "add", "blackhole", &target])
            .expect("the blackhole route");
    }

    /// Undoes [`Netns::cut`].
    pub fn heal(&self, i: usize, addr: Ipv4Addr) {
        let target = format!("{addr}/32");
        self.ip_in(&self.nodes[i], &["route", "del", "blackhole", &target])
            .expect("the blackhole route removed");
    }

    /// Serves `target` (in the root namespace) on `listen` in the hub: each
    /// connection is copied both ways, until the test's runtime ends. For a
    /// database the nodes in namespaces must reach.
    pub async fn forward(&self, listen: SocketAddr, target: SocketAddr) {
        let listener = self
            .net
            .listen(listen)
            .await
            .expect("the forwarding listener");
        tokio::spawn(async move {
            while let Ok((mut inside, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut outside) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inside, &mut outside).await;
                    }
                });
            }
        });
    }

    /// Runs `ip -n NS ARGS…`; `Err` with its stderr when it fails.
    fn ip_in(&self, namespace: &str, args: &[&str]) -> Result<String, String> {
        let mut all = vec!["-n", namespace];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Node namespaces first (their veths go with them), then the hub.
        for name in self.nodes.iter().chain(std::iter::once(&self.hub)) {
            if let Err(error) = ip(&["netns", "del", name]) {
                eprintln!("cannot delete network namespace {name}: {error}");
            }
        }
    }
}

/// Runs `ip ARGS…`; `Err` with what it printed when it fails.
fn ip(args: &[&str]) -> Result<String, String> {
    let output = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run ip: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Deletes the namespaces of earlier test processes (named by their PID)
/// that are no longer running.
fn remove_stale() {
    let Ok(list) = ip(&["netns", "list"]) else {
        return;
    };
    for name in list
        .lines()
        .filter_map(|line| line.split_whitespace().next())
    {
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

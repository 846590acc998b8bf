//! Scenarios. Each has a coordinator half (`coord`, in the parent process:
//! phases, server probes, the summary) and a shard half (`shard`, in each
//! worker event loop: connections and verification).

pub mod churn;
pub mod connect;
pub mod fanout;
pub mod mesh;
pub mod soak;

use std::time::Duration;

use anyhow::{bail, Result};
use serde_json::{json, Map, Value};

use crate::cluster::Cluster;
use crate::shard::Ctx;
use crate::sys;
use crate::users::{authenticate_all, UserDir};
use crate::{Common, Scenario};

/// Runs a scenario from the parent process and prints the one summary line.
pub fn coordinate(mut s: Scenario) -> Result<()> {
    let started = sys::now_ns();
    if let Scenario::Churn(a) = &mut s {
        // The churn model lives in one event loop.
        a.common.procs = 1;
        a.common.threads = 1;
    }
    if let Scenario::Soak(a) = &mut s {
        a.common.connect_rate = a.ramp_per_sec;
        // Every waiting phase's bound covers the paced ramp (connects, then
        // follows, at `--ramp-per-sec`).
        a.common.phase_timeout += a.connections as f64 / a.ramp_per_sec.max(1.0);
    }
    let c = s.common().clone();
    if c.procs == 0 || c.threads == 0 {
        bail!("--procs and --threads must be at least 1");
    }
    let users = match &s {
        Scenario::Connect(a) => a.conns.div_ceil(a.sessions_per_user.max(1)),
        Scenario::Fanout(a) => a.followers + 1,
        Scenario::Mesh(a) => a.users,
        Scenario::Soak(a) => soak::Layout::of(a).users,
        Scenario::Xnode(a) => a.updaters + a.followers,
        Scenario::Churn(a) => a.users,
        Scenario::Worker => 0,
    };
    let users_file = if c.token_key.is_none() {
        let path = std::env::temp_dir().join(format!("loadgen-users-{}.txt", std::process::id()));
        let path = path.to_string_lossy().into_owned();
        let t0 = std::time::Instant::now();
        authenticate_all(
            c.server_addr()?,
            &c.server_key,
            c.seed,
            users,
            c.auth_threads,
            &path,
        )?;
        eprintln!(
            "authenticated {users} users over HTTP in {:.2}s",
            t0.elapsed().as_secs_f64()
        );
        Some(path)
    } else {
        None
    };
    let scenario_json = serde_json::to_value(&s)?;
    let mut cluster = Cluster::spawn(&scenario_json, c.procs, c.threads, users_file.clone())?;
    let probe = Probe {
        pids: c.server_pid.clone(),
        nats: c.nats_pid,
    };
    probe.settle();
    let server_before = probe.snap();
    let cpu_before = cluster.cpu_ns();
    let result = match &s {
        Scenario::Connect(a) => connect::coord(a, &mut cluster, &probe),
        Scenario::Fanout(a) => fanout::coord(a, &mut cluster, &probe),
        Scenario::Mesh(a) => mesh::coord(a, mesh::Graph::of(a), &mut cluster, &probe, false),
        Scenario::Soak(a) => soak::coord(a, &mut cluster, &probe),
        Scenario::Xnode(a) => mesh::xnode_coord(a, &mut cluster, &probe),
        Scenario::Churn(a) => churn::coord(a, &mut cluster),
        Scenario::Worker => Ok(json!({})),
    };
    let cpu_after = cluster.cpu_ns();
    let worker_hwm = cluster.worker_hwm_kib();
    let server_after = probe.snap();
    let fin = cluster.finish();
    if let Some(p) = &users_file {
        let _ = std::fs::remove_file(p);
    }
    let mut out = Map::new();
    out.insert("scenario".into(), json!(scenario_name(&s)));
    out.insert(
        "args".into(),
        scenario_json
            .as_object()
            .and_then(|o| o.values().next())
            .cloned()
            .unwrap_or(Value::Null),
    );
    let failed = result.as_ref().err().map(|e| format!("{e:#}"));
    match result {
        Ok(Value::Object(m)) => out.extend(m),
        Ok(v) => {
            out.insert("result".into(), v);
        }
        Err(_) => {
            out.insert("error".into(), json!(failed));
        }
    }
    out.insert(
        "loadgen_total".into(),
        json!({
            "cpu_s": (cpu_after - cpu_before) as f64 / 1e9,
            "procs": c.procs,
            "threads": c.threads,
            "worker_peak_rss_kib": worker_hwm,
            "wall_s": (sys::now_ns() - started) as f64 / 1e9,
        }),
    );
    if !c.server_pid.is_empty() || c.nats_pid.is_some() {
        out.insert(
            "server_total".into(),
            json!({"before": server_before, "after": server_after}),
        );
    }
    let checks_failed = matches!(s, Scenario::Soak(_))
        && out.get("checks_passed").and_then(Value::as_bool) != Some(true);
    println!("{}", Value::Object(out));
    fin?;
    if checks_failed && failed.is_none() {
        bail!("soak: a check failed (see checks in the summary)");
    }
    match failed {
        Some(e) => bail!("{e}"),
        None => Ok(()),
    }
}

fn scenario_name(s: &Scenario) -> &'static str {
    match s {
        Scenario::Connect(_) => "connect",
        Scenario::Fanout(_) => "fanout",
        Scenario::Mesh(_) => "mesh",
        Scenario::Soak(_) => "soak",
        Scenario::Xnode(_) => "xnode",
        Scenario::Churn(_) => "churn",
        Scenario::Worker => "worker",
    }
}

/// Worker side: the shard half of the scenario.
pub fn run_shard(s: Scenario, ctx: Ctx, users_file: Option<String>) -> Result<()> {
    match s {
        Scenario::Connect(a) => connect::shard(&a, ctx, users_file),
        Scenario::Fanout(a) => fanout::shard(&a, ctx, users_file),
        Scenario::Mesh(a) => mesh::shard(&a, mesh::Graph::of(&a), ctx, users_file, false),
        Scenario::Soak(a) => soak::shard(&a, ctx, users_file),
        Scenario::Xnode(a) => mesh::xnode_shard(&a, ctx, users_file),
        Scenario::Churn(a) => churn::shard(&a, ctx, users_file),
        Scenario::Worker => Ok(()),
    }
}

pub fn user_dir(c: &Common, n: usize, users_file: &Option<String>) -> Result<UserDir> {
    let dir = match (&c.token_key, users_file) {
        (Some(k), _) => UserDir::minted(c.seed, n, k),
        (None, Some(f)) => UserDir::from_file(f, c.seed)?,
        (None, None) => bail!("no token source"),
    };
    if dir.len() < n {
        bail!("{} users known, {n} needed", dir.len());
    }
    Ok(dir)
}

pub fn phase_timeout(c: &Common) -> Duration {
    Duration::from_secs_f64(c.phase_timeout.clamp(1.0, 86_400.0))
}

/// Reads the server's RSS and CPU: one process, or every node of a cluster
/// (summed, and each one), and the NATS server beside them.
pub struct Probe {
    pub pids: Vec<u32>,
    pub nats: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct ServerSnap {
    pub rss_kib: u64,
    pub cpu_us: u64,
    pub cpu_ns: u64,
    /// When the snap was taken (wall ns).
    pub at_ns: u64,
    /// CPU time the hypervisor took from this machine so far, all CPUs.
    pub steal_us: u64,
}

impl ServerSnap {
    fn of(pid: u32) -> Option<ServerSnap> {
        Some(ServerSnap {
            rss_kib: sys::rss_kib(pid)?,
            cpu_us: sys::process_utime_stime_us(pid)?,
            cpu_ns: sys::process_cpu_ns(pid)?,
            at_ns: sys::now_ns(),
            steal_us: sys::machine_steal_us().unwrap_or(0),
        })
    }
}

/// One reading of every probed process.
#[derive(Debug, Clone, Default)]
pub struct Snaps {
    /// Per server pid, in `--server-pid` order; empty without one.
    pub nodes: Vec<ServerSnap>,
    pub nats: Option<ServerSnap>,
}

impl Snaps {
    /// The nodes summed, as one server.
    fn total(&self) -> Option<ServerSnap> {
        let first = self.nodes.first()?;
        let mut t = *first;
        for n in &self.nodes[1..] {
            t.rss_kib += n.rss_kib;
            t.cpu_us += n.cpu_us;
            t.cpu_ns += n.cpu_ns;
        }
        Some(t)
    }
}

impl Probe {
    pub fn snap(&self) -> Value {
        let one = |pid: u32| {
            json!({
                "rss_kib": sys::rss_kib(pid),
                "utime_stime_s": sys::process_utime_stime_us(pid).map(|u| u as f64 / 1e6),
                "fds": sys::open_fds(pid),
            })
        };
        let mut v = match self.pids.as_slice() {
            [] => json!({}),
            [pid] => one(*pid),
            pids => json!({"nodes": pids.iter().map(|&p| one(p)).collect::<Vec<_>>()}),
        };
        if let (Some(pid), Value::Object(m)) = (self.nats, &mut v) {
            m.insert("nats".into(), one(pid));
        }
        v
    }

    /// Waits (at most 30 s) until the servers' open descriptors stop
    /// falling: sockets of a previous run may still be closing.
    pub fn settle(&self) {
        if self.pids.is_empty() {
            return;
        }
        let fds = || -> usize { self.pids.iter().filter_map(|&p| sys::open_fds(p)).sum() };
        let mut last = fds();
        let mut stable = 0;
        for _ in 0..300 {
            std::thread::sleep(Duration::from_millis(100));
            let now = fds();
            if now >= last {
                stable += 1;
                if stable >= 5 {
                    return;
                }
            } else {
                stable = 0;
            }
            last = now;
        }
    }

    /// Every probed process now; `None` when a server cannot be read (or
    /// none is probed).
    pub fn raw(&self) -> Option<Snaps> {
        let nodes = self
            .pids
            .iter()
            .map(|&p| ServerSnap::of(p))
            .collect::<Option<Vec<_>>>()?;
        let nats = self.nats.and_then(ServerSnap::of);
        if nodes.is_empty() && nats.is_none() {
            return None;
        }
        Some(Snaps { nodes, nats })
    }
}

/// Server RSS and CPU deltas between two readings, normalized by `per`:
/// the nodes summed (one server's fields), then with several nodes each
/// one under `nodes`, and the NATS server's under `nats`.
pub fn server_delta(a: &Option<Snaps>, b: &Option<Snaps>, per: u64, per_name: &str) -> Value {
    let (Some(a), Some(b)) = (a, b) else {
        return Value::Null;
    };
    let mut v = match (a.total(), b.total()) {
        (Some(x), Some(y)) => one_delta(x, y, per, per_name),
        _ => json!({}),
    };
    let Value::Object(m) = &mut v else {
        return v;
    };
    if a.nodes.len() > 1 && a.nodes.len() == b.nodes.len() {
        let nodes: Vec<Value> = a
            .nodes
            .iter()
            .zip(&b.nodes)
            .map(|(x, y)| one_delta(*x, *y, per, per_name))
            .collect();
        m.insert("nodes".into(), json!(nodes));
    }
    if let (Some(x), Some(y)) = (a.nats, b.nats) {
        m.insert("nats".into(), one_delta(x, y, 0, ""));
    }
    v
}

/// The NATS server's CPU per status change between two readings (cluster
/// mode: every change is one record in the log).
pub fn nats_per_change(a: &Option<Snaps>, b: &Option<Snaps>, changes: u64) -> Value {
    match (
        a.as_ref().and_then(|s| s.nats),
        b.as_ref().and_then(|s| s.nats),
    ) {
        (Some(x), Some(y)) => one_delta(x, y, changes, "change"),
        _ => Value::Null,
    }
}

fn one_delta(a: ServerSnap, b: ServerSnap, per: u64, per_name: &str) -> Value {
    let cpu_us = b.cpu_us.saturating_sub(a.cpu_us);
    let cpu_ns = b.cpu_ns.saturating_sub(a.cpu_ns);
    let rss = b.rss_kib as i64 - a.rss_kib as i64;
    let mut m = Map::new();
    m.insert("rss_before_kib".into(), json!(a.rss_kib));
    m.insert("rss_after_kib".into(), json!(b.rss_kib));
    m.insert("rss_growth_kib".into(), json!(rss));
    m.insert("cpu_utime_stime_ms".into(), json!(cpu_us as f64 / 1e3));
    m.insert("cpu_schedstat_ms".into(), json!(cpu_ns as f64 / 1e6));
    // Host contention: a share of the machine's CPU time that no
    // process here got. Runs with several percent are noisy.
    let cpu_available_us = b.at_ns.saturating_sub(a.at_ns) as f64 / 1e3 * sys::cpus() as f64;
    let steal_us = b.steal_us.saturating_sub(a.steal_us) as f64;
    m.insert(
        "machine_steal_pct".into(),
        json!(100.0 * steal_us / cpu_available_us.max(1.0)),
    );
    if per > 0 {
        m.insert(
            format!("rss_bytes_per_{per_name}"),
            json!((rss * 1024) as f64 / per as f64),
        );
        m.insert(
            format!("cpu_us_per_{per_name}"),
            json!(cpu_us as f64 / per as f64),
        );
        m.insert(
            format!("cpu_us_per_{per_name}_schedstat"),
            json!(cpu_ns as f64 / 1e3 / per as f64),
        );
    }
    Value::Object(m)
}

/// Loadgen CPU over a phase, per received event.
pub fn loadgen_delta(cpu_ns: u64, events: u64, frames: u64) -> Value {
    json!({
        "cpu_ms": cpu_ns as f64 / 1e6,
        "events": events,
        "frames": frames,
        "cpu_us_per_event": if events > 0 { cpu_ns as f64 / 1e3 / events as f64 } else { 0.0 },
        "cpu_us_per_frame": if frames > 0 { cpu_ns as f64 / 1e3 / frames as f64 } else { 0.0 },
    })
}

/// Sums one numeric field over replies.
pub fn sum(replies: &[crate::cluster::Reply], field: &str) -> u64 {
    replies
        .iter()
        .filter_map(|r| r.data.get(field).and_then(|v| v.as_u64()))
        .sum()
}

/// Full parse with Herald's decoder plus shape checks; returns an error text.
pub fn strict_check(payload: &[u8], scratch: &mut Vec<u8>) -> Option<String> {
    use herald::protocol::json::decode_server_message;
    use herald::protocol::message::ServerBody;
    scratch.clear();
    scratch.extend_from_slice(payload);
    let msg = match decode_server_message(scratch) {
        Ok(m) => m,
        Err(e) => return Some(format!("{e}: {}", String::from_utf8_lossy(payload))),
    };
    match msg.body {
        ServerBody::Event { joins, leaves } => {
            if !msg.cid.is_empty() {
                return Some("event with a cid".into());
            }
            if joins.is_empty() && leaves.is_empty() {
                return Some("event without joins or leaves".into());
            }
            if joins.len() > 1 || leaves.len() > 1 {
                return Some("event with several presences".into());
            }
            if let (Some(j), Some(l)) = (joins.first(), leaves.first()) {
                if j.session_id != l.session_id || j.user_id != l.user_id {
                    return Some("update event whose join and leave differ in session".into());
                }
            }
            // The fast scanner must agree with the full parse.
            let fast = crate::scan::presence_status(payload, false);
            let full = joins.first().map(|p| p.status.as_bytes());
            if fast != full && !payload.contains(&b'\\') {
                return Some(format!("scanner disagrees: {fast:?} vs {full:?}"));
            }
            None
        }
        _ => None,
    }
}

/// Counts of `--strict` checking, kept by every shard handler.
#[derive(Default)]
pub struct Strict {
    pub on: bool,
    pub errors: u64,
    pub first: Option<String>,
    scratch: Vec<u8>,
}

impl Strict {
    pub fn new(on: bool) -> Strict {
        Strict {
            on,
            ..Default::default()
        }
    }

    #[inline]
    pub fn check(&mut self, payload: &[u8]) {
        if !self.on {
            return;
        }
        if let Some(e) = strict_check(payload, &mut self.scratch) {
            self.errors += 1;
            self.first.get_or_insert(e);
        }
    }
}

/// Median of a list.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Local connection indices of shard `g` of `shards` for global ids `0..n`:
/// global id `i` lives in shard `i % shards` at local index `i / shards`.
pub fn local_count(n: usize, g: usize, shards: usize) -> usize {
    if g >= n {
        0
    } else {
        (n - g).div_ceil(shards)
    }
}

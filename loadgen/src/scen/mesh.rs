//! `mesh` (and `soak`): N users, one connection each, each following F
//! others (seeded random; `--lobby` = everyone). Then a total update rate R
//! spread over the users for T seconds. Each status is `"<user>:<seq>:<ns>"`;
//! every receiver checks, per followed user, that seqs arrive in order
//! without gaps, and after the window that the last seq of every followed
//! user arrived (bounded drain). `soak` adds reconnects and a report line
//! every `--report-every` seconds.

use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};

use super::{
    loadgen_delta, local_count, nats_per_change, phase_timeout, server_delta, sum, user_dir, Probe,
    Strict,
};
use crate::cluster::Cluster;
use crate::hist::Hist;
use crate::net::{CloseWhy, Handler, State};
use crate::scan::{classify, parse_stamp, presence_status, write_stamp, Kind, Stamp};
use crate::shard::Ctx;
use crate::sys::now_ns;
use crate::users::{mix, UserDir};
use crate::{MeshArgs, XnodeArgs};

/// `last` value of a pair whose first event is still to come (after a reconnect).
const FRESH: u32 = u32::MAX;

fn follows_f(a: &MeshArgs) -> usize {
    if a.lobby {
        a.users.saturating_sub(1)
    } else {
        a.follows.min(a.users.saturating_sub(1))
    }
}

/// Who follows whom, who updates, and which node each user connects to.
#[derive(Debug, Clone, Copy)]
pub enum Graph {
    /// `mesh`/`soak`: every user updates and follows `f` others (seeded; all
    /// others with `--lobby`), each on its own node ([`UserDir::node`]).
    Mesh { users: usize, f: usize },
    /// `xnode`: users `0..updaters` update, all on node `updater_node`;
    /// users `updaters..updaters + followers` follow `f` updaters each
    /// (seeded), all on node `follower_node`, and never update.
    Split {
        updaters: usize,
        followers: usize,
        f: usize,
        updater_node: usize,
        follower_node: usize,
    },
}

impl Graph {
    pub fn of(a: &MeshArgs) -> Graph {
        Graph::Mesh {
            users: a.users,
            f: follows_f(a),
        }
    }

    fn users(&self) -> usize {
        match *self {
            Graph::Mesh { users, .. } => users,
            Graph::Split {
                updaters,
                followers,
                ..
            } => updaters + followers,
        }
    }

    /// Users that update: `0..updaters()`.
    fn updaters(&self) -> usize {
        match *self {
            Graph::Mesh { users, .. } => users,
            Graph::Split { updaters, .. } => updaters,
        }
    }

    /// Follows per following user.
    fn f(&self) -> usize {
        match *self {
            Graph::Mesh { f, .. } | Graph::Split { f, .. } => f,
        }
    }

    fn follows(&self, seed: u64, user: usize) -> Vec<u32> {
        match *self {
            Graph::Mesh { users, f } => follows_of(seed, user, users, f),
            Graph::Split { updaters, f, .. } if user >= updaters => {
                follows_of(seed, user, updaters, f)
            }
            Graph::Split { .. } => Vec::new(),
        }
    }

    fn node(&self, users: &UserDir, user: usize, nodes: usize) -> usize {
        match *self {
            Graph::Mesh { .. } => users.node(user, nodes),
            Graph::Split {
                updaters,
                updater_node,
                follower_node,
                ..
            } => {
                if user < updaters {
                    updater_node
                } else {
                    follower_node
                }
            }
        }
    }

    /// Followers of an average update.
    fn fanout(&self) -> f64 {
        match *self {
            Graph::Mesh { f, .. } => f as f64,
            Graph::Split {
                updaters,
                followers,
                f,
                ..
            } => (followers * f) as f64 / updaters.max(1) as f64,
        }
    }
}

/// `xnode` as a mesh of its own graph (see [`Graph::Split`]).
fn xnode_mesh(a: &XnodeArgs) -> (MeshArgs, Graph) {
    let f = a.follows.min(a.updaters);
    let mesh = MeshArgs {
        common: a.common.clone(),
        users: a.updaters + a.followers,
        follows: f,
        lobby: false,
        rate: a.rate,
        drain: a.drain,
        reconnect_rate: 0.0,
        report_every: 0.0,
    };
    let graph = Graph::Split {
        updaters: a.updaters,
        followers: a.followers,
        f,
        updater_node: a.updater_node,
        follower_node: a.follower_node,
    };
    (mesh, graph)
}

pub fn xnode_coord(a: &XnodeArgs, cl: &mut Cluster, probe: &Probe) -> Result<Value> {
    let nodes = a.common.server_addrs()?.len();
    if a.updater_node >= nodes || a.follower_node >= nodes {
        anyhow::bail!(
            "--updater-node and --follower-node are indices into the {nodes} --url servers"
        );
    }
    if a.updaters == 0 || a.followers == 0 {
        anyhow::bail!("--updaters and --followers must be at least 1");
    }
    let (mesh, graph) = xnode_mesh(a);
    let mut v = coord(&mesh, graph, cl, probe, false)?;
    if let Value::Object(m) = &mut v {
        m.insert("updaters".into(), json!(a.updaters));
        m.insert("followers".into(), json!(a.followers));
        m.insert("updater_node".into(), json!(a.updater_node));
        m.insert("follower_node".into(), json!(a.follower_node));
        m.insert("same_node".into(), json!(a.updater_node == a.follower_node));
    }
    Ok(v)
}

pub fn xnode_shard(a: &XnodeArgs, ctx: Ctx, users_file: Option<String>) -> Result<()> {
    let (mesh, graph) = xnode_mesh(a);
    shard(&mesh, graph, ctx, users_file, false)
}

pub fn coord(
    a: &MeshArgs,
    graph: Graph,
    cl: &mut Cluster,
    probe: &Probe,
    soak: bool,
) -> Result<Value> {
    let t = phase_timeout(&a.common);
    let f = graph.f();
    let duration = a
        .common
        .duration
        .unwrap_or(if soak { 60.0 } else { 5.0 })
        .clamp(0.1, 30.0 * 86_400.0);
    cl.collect("ready", t)?;
    let s0 = probe.raw();
    let t0 = std::time::Instant::now();
    cl.send("connect", Value::Null)?;
    let r = cl.collect("connected", t)?;
    let connect_secs = t0.elapsed().as_secs_f64();
    let connected = sum(&r, "ok");
    let first_error = r
        .iter()
        .find_map(|x| x.data.get("first_error").filter(|v| !v.is_null()).cloned());
    std::thread::sleep(Duration::from_millis(500));
    let s1 = probe.raw();
    let t1 = std::time::Instant::now();
    cl.send("follow", Value::Null)?;
    let fr = cl.collect("followed", t + Duration::from_secs(10))?;
    let follow_secs = t1.elapsed().as_secs_f64();
    let followed_ids = sum(&fr, "ids");
    std::thread::sleep(Duration::from_millis(500));
    let s2 = probe.raw();
    let cpu0 = cl.cpu_ns();
    let start = now_ns() + 200_000_000;
    cl.send("run", json!({"start": start, "duration": duration}))?;
    // Collect "ran" from every shard, printing soak ticks as they come.
    let mut finals = vec![0u32; graph.users()];
    let mut ran = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs_f64(duration) + t;
    let mut ticks: std::collections::BTreeMap<u64, (u64, Vec<Value>)> = Default::default();
    let mut updates_sent = 0u64;
    while ran < cl.shards {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("timed out waiting for the run to end");
        }
        let Some(msg) = cl.next(Duration::from_millis(500))? else {
            continue;
        };
        match msg.kind.as_str() {
            "ran" => {
                ran += 1;
                updates_sent += msg.data.get("sent").and_then(|v| v.as_u64()).unwrap_or(0);
                if let Some(seqs) = msg.data.get("seqs").and_then(|v| v.as_array()) {
                    for (j, s) in seqs.iter().enumerate() {
                        let u = msg.shard + j * cl.shards;
                        if u < finals.len() {
                            finals[u] = s.as_u64().unwrap_or(0) as u32;
                        }
                    }
                }
            }
            "tick" => {
                let n = msg.data.get("n").and_then(|v| v.as_u64()).unwrap_or(0);
                let e = ticks.entry(n).or_default();
                e.0 += 1;
                e.1.push(msg.data);
                if e.0 as usize == cl.shards {
                    if let Some((_, v)) = ticks.remove(&n) {
                        print_tick(n, &v, start);
                    }
                }
            }
            "progress" => {}
            other => anyhow::bail!("unexpected '{other}' during the run"),
        }
    }
    cl.send("expect", json!({"finals": finals}))?;
    let v = cl.collect(
        "verified",
        t + Duration::from_secs_f64(a.drain.clamp(0.0, 3600.0)),
    )?;
    let cpu1 = cl.cpu_ns();
    let s3 = probe.raw();
    let mut hist = Hist::new();
    for x in &v {
        hist.merge_report(&x.data);
    }
    cl.send("close", Value::Null)?;
    let c = cl.collect("closed", t)?;
    let delivered = sum(&v, "delivered");
    let in_window = sum(&v, "in_window");
    let events = sum(&v, "events");
    let frames = sum(&v, "frames");
    let expected_deliveries: u64 = sum(&v, "expected");
    Ok(json!({
        "users": graph.users(),
        "follows": f,
        "rate": a.rate,
        "duration": duration,
        "connected": connected,
        "first_error": first_error,
        "connect_per_sec": connected as f64 / connect_secs.max(1e-9),
        "follow_requests": sum(&fr, "sent"),
        "followed_ids": followed_ids,
        "follow_ids_per_sec": followed_ids as f64 / follow_secs.max(1e-9),
        "follow_errors": sum(&fr, "errors"),
        "updates_sent": updates_sent,
        "asked_deliveries_per_sec": updates_sent as f64 * graph.fanout() / duration,
        "expected_deliveries": expected_deliveries,
        "delivered": delivered,
        "delivered_per_sec_in_window": in_window as f64 / duration,
        "delivered_per_sec_total": delivered as f64 / duration,
        "self_delivered": sum(&v, "self_delivered"),
        "missing": sum(&v, "missing"),
        "duplicate": sum(&v, "dup"),
        "coalesced": sum(&v, "coalesced"),
        "out_of_order": sum(&v, "ooo"),
        "unexpected": sum(&v, "unexpected"),
        "leave_events": sum(&v, "leaves"),
        "errors": sum(&v, "errors"),
        "server_closes": sum(&c, "server_closes"),
        "close_reasons": c.iter().filter_map(|x| x.data.get("close_reason").filter(|v| !v.is_null()).cloned()).collect::<Vec<_>>(),
        "dropped": sum(&c, "dropped"),
        "reconnects": sum(&c, "reconnects"),
        "strict_errors": sum(&v, "strict_errors"),
        "strict_first": v.iter().find_map(|x| x.data.get("strict_first").filter(|v| !v.is_null()).cloned()),
        "latency": hist.summary_us(),
        "server_connect": server_delta(&s0, &s1, connected, "conn"),
        "server_follow": server_delta(&s0, &s2, connected, "conn"),
        "server_run": server_delta(&s2, &s3, delivered, "delivery"),
        "nats_run": nats_per_change(&s2, &s3, updates_sent),
        "loadgen_run": loadgen_delta(cpu1 - cpu0, events, frames),
    }))
}

fn print_tick(n: u64, v: &[Value], start: u64) {
    let f = |k: &str| -> u64 {
        v.iter()
            .filter_map(|x| x.get(k).and_then(|y| y.as_u64()))
            .sum()
    };
    let mut h = Hist::new();
    for x in v {
        h.merge_report(x);
    }
    let secs = x_secs(v);
    eprintln!(
        "[{:.0}s] #{n} open={} delivered={} ({:.0}/s) missing={} dup={} ooo={} closes={} reconnects={} p50={:.2}ms p99={:.2}ms max={:.2}ms",
        (now_ns().saturating_sub(start)) as f64 / 1e9,
        f("open"),
        f("delivered"),
        f("delivered") as f64 / secs.max(1e-9),
        f("missing"),
        f("dup"),
        f("ooo"),
        f("closes"),
        f("reconnects"),
        h.quantile(0.5) as f64 / 1e6,
        h.quantile(0.99) as f64 / 1e6,
        h.max as f64 / 1e6
    );
}

fn x_secs(v: &[Value]) -> f64 {
    v.first()
        .and_then(|x| x.get("secs"))
        .and_then(|s| s.as_f64())
        .unwrap_or(1.0)
}

/// The users `i` follows: `f` distinct others of users `0..n`, seeded
/// (`i` may lie outside `0..n`).
pub fn follows_of(seed: u64, i: usize, n: usize, f: usize) -> Vec<u32> {
    let others = if i < n { n - 1 } else { n };
    if f >= others {
        return (0..n as u32).filter(|&u| u as usize != i).collect();
    }
    let mut state = mix(seed ^ 0x666f_6c6c_6f77 ^ mix(i as u64));
    let mut next = move || {
        state = mix(state);
        state
    };
    let mut out: Vec<u32> = Vec::with_capacity(f);
    if f * 3 < n {
        let mut tries = 0;
        while out.len() < f && tries < f * 100 {
            tries += 1;
            let u = (next() % n as u64) as u32;
            if u as usize != i && !out.contains(&u) {
                out.push(u);
            }
        }
    } else {
        let mut all: Vec<u32> = (0..n as u32).filter(|&u| u as usize != i).collect();
        for k in 0..f {
            let r = k + (next() % (all.len() - k) as u64) as usize;
            all.swap(k, r);
        }
        all.truncate(f);
        out = all;
    }
    out.sort_unstable();
    out
}

struct H {
    own: Vec<u32>,
    off: Vec<u32>,
    fol: Vec<u32>,
    last: Vec<u32>,
    own_last: Vec<u32>,
    window_end: u64,
    delivered: u64,
    in_window: u64,
    self_delivered: u64,
    seqs: Seqs,
    unexpected: u64,
    leaves: u64,
    other: u64,
    errors: u64,
    replies: u64,
    events: u64,
    closes: u64,
    close_reason: Option<String>,
    reopen: Vec<usize>,
    opened: Vec<usize>,
    hist: Hist,
    ihist: Hist,
    strict: Strict,
}

/// Per-pair sequence anomalies.
#[derive(Default)]
struct Seqs {
    dup: u64,
    ooo: u64,
    /// Statuses never received, the next event's leave not naming the last
    /// one received: lost.
    missing: u64,
    /// Statuses skipped by a node that read only the latest (cluster mode's
    /// documented coalescing): the next event's leave names the last status
    /// the follower received.
    coalesced: u64,
}

impl Seqs {
    /// Checks `seq` (of event `payload`) against the pair's `last`; true
    /// when it is new (in order, possibly after a gap).
    #[inline]
    fn check(&mut self, last: &mut u32, seq: u32, payload: &[u8]) -> bool {
        let l = *last;
        if l == FRESH || seq == l.wrapping_add(1) {
            *last = seq;
            true
        } else if seq > l {
            let skipped = (seq - l - 1) as u64;
            let leave = presence_status(payload, true).and_then(parse_stamp);
            if leave.is_some_and(|st| st.seq == l) {
                self.coalesced += skipped;
            } else {
                self.missing += skipped;
            }
            *last = seq;
            true
        } else {
            if seq == l {
                self.dup += 1;
            } else {
                self.ooo += 1;
            }
            false
        }
    }
}

impl Handler for H {
    #[inline]
    fn on_text(&mut self, conn: usize, payload: &[u8], now: u64) {
        self.strict.check(payload);
        match classify(payload) {
            Kind::Event => {
                self.events += 1;
                let Some(s) = presence_status(payload, false) else {
                    // A leave-only event (a reconnecting user's old session).
                    self.leaves += 1;
                    return;
                };
                let Some(st) = parse_stamp(s) else {
                    self.other += 1;
                    return;
                };
                if st.user == self.own[conn] {
                    if self.seqs.check(&mut self.own_last[conn], st.seq, payload) {
                        self.self_delivered += 1;
                    }
                    return;
                }
                let (a, b) = (self.off[conn] as usize, self.off[conn + 1] as usize);
                let Ok(k) = self.fol[a..b].binary_search(&st.user) else {
                    self.unexpected += 1;
                    return;
                };
                if self.seqs.check(&mut self.last[a + k], st.seq, payload) {
                    self.delivered += 1;
                    if now <= self.window_end {
                        self.in_window += 1;
                    }
                    let lat = now.saturating_sub(st.sent_ns);
                    self.hist.record(lat);
                    self.ihist.record(lat);
                }
            }
            Kind::Reply { error, .. } => {
                self.replies += 1;
                if error {
                    self.errors += 1;
                }
            }
            Kind::Other => self.other += 1,
        }
    }

    fn on_open(&mut self, conn: usize, _now: u64) {
        self.opened.push(conn);
    }

    fn on_close(&mut self, conn: usize, why: &CloseWhy, _now: u64) {
        self.closes += 1;
        if self.close_reason.is_none() {
            self.close_reason = Some(format!("{why:?}"));
        }
        self.reopen.push(conn);
    }
}

/// `status_follow` requests for `fol`, 100 ids each; request `k` has cid
/// `*cid + k + 1` (`cid` is advanced past them).
pub(crate) fn follow_requests(
    users: &crate::users::UserDir,
    fol: &[u32],
    cid: &mut u64,
) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for chunk in fol.chunks(100) {
        let mut m = Vec::with_capacity(40 + chunk.len() * 39);
        m.extend_from_slice(b"{\"status_follow\":{\"user_ids\":[");
        for (i, u) in chunk.iter().enumerate() {
            if i > 0 {
                m.push(b',');
            }
            m.push(b'"');
            m.extend_from_slice(users.id(*u as usize).as_bytes());
            m.push(b'"');
        }
        *cid += 1;
        m.extend_from_slice(format!("]}},\"cid\":\"{cid}\"}}").as_bytes());
        out.push(m);
    }
    out
}

pub fn shard(
    a: &MeshArgs,
    graph: Graph,
    mut ctx: Ctx,
    users_file: Option<String>,
    soak: bool,
) -> Result<()> {
    let t = phase_timeout(&a.common);
    let reconnect = soak || a.reconnect_rate > 0.0;
    let n_users = graph.users();
    let f = graph.f();
    let n = local_count(n_users, ctx.shard, ctx.shards);
    let users = user_dir(&a.common, n_users, &users_file)?;
    ctx.net.set_conns(n);
    let nodes = ctx.net.nodes();
    let mut list = Vec::with_capacity(n);
    let mut own = Vec::with_capacity(n);
    let mut off = vec![0u32];
    let mut fol = Vec::with_capacity(n * f);
    for j in 0..n {
        let user = ctx.shard + j * ctx.shards;
        list.push((
            j,
            graph.node(&users, user, nodes),
            users.ws_path(user, false)?,
        ));
        own.push(user as u32);
        fol.extend(graph.follows(a.common.seed, user));
        off.push(fol.len() as u32);
    }
    let pairs = fol.len();
    let mut h = H {
        own,
        off,
        fol,
        last: vec![0; pairs],
        own_last: vec![0; n],
        window_end: u64::MAX,
        delivered: 0,
        in_window: 0,
        self_delivered: 0,
        seqs: Seqs::default(),
        unexpected: 0,
        leaves: 0,
        other: 0,
        errors: 0,
        replies: 0,
        events: 0,
        closes: 0,
        close_reason: None,
        reopen: Vec::new(),
        opened: Vec::new(),
        hist: Hist::new(),
        ihist: Hist::new(),
        strict: Strict::new(a.common.strict),
    };
    let mut seq = vec![0u32; n];
    let mut cid = 0u64;
    let mut scratch = Vec::with_capacity(128);
    let mut events0 = 0u64;
    let mut frames0 = 0u64;
    let mut reconnects = 0u64;
    ctx.out.send("ready", Value::Null);
    loop {
        let cmd = ctx.next_cmd(&mut h, Duration::from_secs(86_400 * 7))?;
        match cmd.cmd.as_str() {
            "connect" => {
                let r = ctx.connect_all(&mut h, &list, &a.common)?;
                h.opened.clear();
                ctx.out.send("connected", serde_json::to_value(&r)?);
            }
            "follow" => {
                let r0 = h.replies;
                let e0 = h.errors;
                let mut sent = 0u64;
                let mut ids = 0u64;
                for j in 0..n {
                    let (x, y) = (h.off[j] as usize, h.off[j + 1] as usize);
                    for m in follow_requests(&users, &h.fol[x..y], &mut cid) {
                        if ctx.net.send_text(j, &m) {
                            sent += 1;
                        }
                    }
                    if ctx.net.conns[j].state == State::Open {
                        ids += (y - x) as u64;
                    }
                    if j % 256 == 255 {
                        ctx.pump(&mut h, Duration::ZERO)?;
                        ctx.progress("follow", h.replies - r0, sent);
                    }
                }
                let deadline = now_ns() + t.as_nanos() as u64;
                ctx.run_until(&mut h, deadline, |_, h| h.replies - r0 >= sent)?;
                ctx.out.send(
                    "followed",
                    json!({"sent": sent, "ids": ids, "replies": h.replies - r0, "errors": h.errors - e0}),
                );
            }
            "run" => {
                let start = cmd
                    .data
                    .get("start")
                    .and_then(|v| v.as_u64())
                    .unwrap_or_else(now_ns);
                let duration = cmd
                    .data
                    .get("duration")
                    .and_then(|v| v.as_f64())
                    .unwrap_or(5.0);
                let end = start + (duration * 1e9) as u64;
                h.window_end = end;
                events0 = h.events;
                frames0 = ctx.net.stats.text_in;
                let mut all: Vec<usize> = (0..n).collect();
                let mut st = mix(a.common.seed ^ ctx.shard as u64 ^ 0x0072_756e);
                for k in (1..all.len()).rev() {
                    st = mix(st);
                    all.swap(k, (st % (k as u64 + 1)) as usize);
                }
                // This shard's updaters (every user of a mesh), shuffled.
                let order: Vec<usize> = all
                    .iter()
                    .copied()
                    .filter(|&j| (h.own[j] as usize) < graph.updaters())
                    .collect();
                let rate = a.rate.max(0.0) * order.len() as f64 / graph.updaters().max(1) as f64;
                let rec_rate = a.reconnect_rate.max(0.0) * n as f64 / n_users.max(1) as f64;
                let mut rec_order = all;
                rec_order.reverse();
                let u = order.len();
                let (mut sent, mut rr, mut rec_done, mut rec_rr) = (0u64, 0usize, 0u64, 0usize);
                let report_ns = (a.report_every.max(0.0) * 1e9) as u64;
                let mut next_report = if report_ns > 0 {
                    start + report_ns
                } else {
                    u64::MAX
                };
                let mut tick_no = 0u64;
                let mut last_tick = (start, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
                let total_local = (duration * rate) as u64;
                for _ in 0..u64::MAX {
                    let now = now_ns();
                    if (now >= end && sent >= total_local) || ctx.exit {
                        break;
                    }
                    if now >= start && n > 0 {
                        let el = (now - start) as f64 / 1e9;
                        let due = ((el * rate) as u64).min(total_local);
                        while sent < due && u > 0 {
                            let j = order[rr % u];
                            rr += 1;
                            sent += 1;
                            seq[j] += 1;
                            scratch.clear();
                            scratch.extend_from_slice(b"{\"status_update\":{\"status\":\"");
                            write_stamp(
                                &mut scratch,
                                Stamp {
                                    user: h.own[j],
                                    seq: seq[j],
                                    sent_ns: now_ns(),
                                },
                            );
                            scratch.extend_from_slice(b"\"}}");
                            if !ctx.net.send_text(j, &scratch) {
                                seq[j] -= 1; // not open (reconnecting): no update happened
                            }
                        }
                        let rdue = (el * rec_rate) as u64;
                        while rec_done < rdue {
                            let j = rec_order[rec_rr % n];
                            rec_rr += 1;
                            rec_done += 1;
                            ctx.net.close(j, true, true);
                            h.reopen.push(j);
                        }
                    }
                    // Reopen closed connections (soak, or with --reconnect-rate), and follow again once open.
                    if !reconnect {
                        h.reopen.clear();
                    }
                    for j in std::mem::take(&mut h.reopen) {
                        let (x, y) = (h.off[j] as usize, h.off[j + 1] as usize);
                        h.last[x..y].fill(FRESH);
                        h.own_last[j] = FRESH;
                        let src = ctx.source_for(j);
                        if ctx.net.open(j, src, list[j].1, &list[j].2).is_ok() {
                            reconnects += 1;
                        }
                    }
                    for j in std::mem::take(&mut h.opened) {
                        let (x, y) = (h.off[j] as usize, h.off[j + 1] as usize);
                        for m in follow_requests(&users, &h.fol[x..y], &mut cid) {
                            ctx.net.send_text(j, &m);
                        }
                    }
                    if now >= next_report {
                        tick_no += 1;
                        next_report += report_ns;
                        let (t0, d0, m0, du0, o0, c0, r0) = last_tick;
                        ctx.out.send(
                            "tick",
                            json!({"n": tick_no, "secs": (now - t0) as f64 / 1e9, "open": ctx.net.open,
                                "delivered": h.delivered - d0, "missing": h.seqs.missing - m0, "dup": h.seqs.dup - du0,
                                "ooo": h.seqs.ooo - o0, "closes": h.closes - c0, "reconnects": reconnects - r0,
                                "hist": h.ihist.to_wire()}),
                        );
                        h.ihist = Hist::new();
                        last_tick = (
                            now,
                            h.delivered,
                            h.seqs.missing,
                            h.seqs.dup,
                            h.seqs.ooo,
                            h.closes,
                            reconnects,
                        );
                    }
                    let next_due = if rate > 0.0 {
                        start + (((sent + 1) as f64 / rate) * 1e9) as u64
                    } else {
                        end
                    };
                    let wait = next_due
                        .min(end)
                        .min(next_report)
                        .saturating_sub(now_ns())
                        .clamp(0, 10_000_000);
                    ctx.pump(&mut h, Duration::from_nanos(wait))?;
                }
                ctx.out.send("ran", json!({"sent": sent, "seqs": seq}));
            }
            "expect" => {
                let finals: Vec<u32> = cmd
                    .data
                    .get("finals")
                    .and_then(|v| serde_json::from_value(v.clone()).ok())
                    .unwrap_or_default();
                let drain_end = now_ns() + (a.drain.clamp(0.0, 3600.0) * 1e9) as u64;
                let tail = |h: &H| -> (u64, u64) {
                    let mut missing = 0u64;
                    let mut expected = 0u64;
                    for j in 0..n {
                        let (x, y) = (h.off[j] as usize, h.off[j + 1] as usize);
                        for p in x..y {
                            let fin = finals.get(h.fol[p] as usize).copied().unwrap_or(0);
                            expected += fin as u64;
                            let l = h.last[p];
                            if l != FRESH && fin > l {
                                missing += (fin - l) as u64;
                            }
                        }
                        let fin = finals.get(h.own[j] as usize).copied().unwrap_or(0);
                        let l = h.own_last[j];
                        if l != FRESH && fin > l {
                            missing += (fin - l) as u64;
                        }
                    }
                    (missing, expected)
                };
                let mut next_check = 0u64;
                ctx.run_until(&mut h, drain_end, |_, h| {
                    let now = now_ns();
                    if now < next_check {
                        return false;
                    }
                    next_check = now + 50_000_000;
                    tail(h).0 == 0
                })?;
                let (tail_missing, expected) = tail(&h);
                ctx.out.send(
                    "verified",
                    json!({"delivered": h.delivered, "in_window": h.in_window, "self_delivered": h.self_delivered,
                        "expected": expected,
                        "missing": h.seqs.missing + tail_missing, "dup": h.seqs.dup, "ooo": h.seqs.ooo,
                        "coalesced": h.seqs.coalesced,
                        "unexpected": h.unexpected, "leaves": h.leaves, "other": h.other, "errors": h.errors,
                        "events": h.events - events0, "frames": ctx.net.stats.text_in - frames0,
                        "strict_errors": h.strict.errors, "strict_first": h.strict.first,
                        "hist": h.hist.to_wire()}),
                );
            }
            "close" => {
                for j in 0..n {
                    ctx.net.close(j, false, true);
                }
                let st = ctx.net.stats;
                ctx.out.send(
                    "closed",
                    json!({"server_closes": st.server_closes, "dropped": st.dropped, "reconnects": reconnects,
                        "close_reason": h.close_reason, "net": st}),
                );
            }
            "exit" => return Ok(()),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follow_sets_are_distinct_and_exclude_self() {
        for (n, f) in [(1000, 20), (100, 50), (10, 9), (1000, 999)] {
            for i in [0usize, 7, n - 1] {
                let v = follows_of(3, i, n, f);
                assert_eq!(v.len(), f);
                assert!(!v.contains(&(i as u32)));
                let mut d = v.clone();
                d.dedup();
                assert_eq!(d.len(), f);
            }
        }
    }
}

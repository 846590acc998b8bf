//! `soak`: long game-like traffic over a cluster's nodes, every event
//! verified. Owns the traffic model (who has which devices, who is
//! offline, who follows whom, when statuses change, reconnects and
//! refollows), the run's phases and report lines, and the final comparison
//! of every live view with `GET /v2/status`. The per-event rules live in
//! [`check`]; connections, processes, users, histograms and the status
//! API client are the shared loadgen machinery.
//!
//! Layout: `--connections N` sessions; users `0..U` with `U = N / (1 +
//! two_devices)`; session `s < U` is the first device of user `s`, session
//! `s ≥ U` the second device of user `s - U`. Session `s` lives on shard
//! `s % shards`; each user's sessions go to its node ([`UserDir::node`]).

pub mod check;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use herald::protocol::json::decode_server_message;
use herald::protocol::message::{Presence, ServerBody};
use serde_json::{json, Map, Value};

use self::check::{Counts, Outcome, St, View, P};
use super::{local_count, phase_timeout, sum, user_dir, Probe};
use crate::cluster::Cluster;
use crate::hist::Hist;
use crate::net::{CloseWhy, Handler, State};
use crate::scan::{parse_stamp, write_stamp, Stamp};
use crate::shard::Ctx;
use crate::sys::{self, now_ns};
use crate::users::{mix, UserDir};
use crate::SoakArgs;

/// Who the sessions are (see the module doc).
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub sessions: usize,
    pub users: usize,
}

impl Layout {
    pub fn of(a: &SoakArgs) -> Layout {
        let frac = a.two_devices.clamp(0.0, 1.0);
        let users = ((a.connections as f64 / (1.0 + frac)).ceil() as usize).min(a.connections);
        Layout {
            sessions: a.connections,
            users,
        }
    }

    fn user_of(&self, session: usize) -> usize {
        if session < self.users {
            session
        } else {
            session - self.users
        }
    }
}

/// Whether user `u` appears offline (seeded, `--offline` of the users).
fn offline(seed: u64, u: usize, frac: f64) -> bool {
    (mix(seed ^ 0x6f66_666c ^ mix(u as u64)) % 1_000_000) < (frac.clamp(0.0, 1.0) * 1e6) as u64
}

/// One friend of user `u` (≠ `u`, not in `taken`): random, but a
/// candidate on `u`'s own node is kept only one time in four, so most
/// friends live on other nodes. `None` when none was found (bounded).
fn draw_friend(
    next: &mut impl FnMut() -> u64,
    u: usize,
    users: usize,
    taken: &[u32],
    node: &impl Fn(usize) -> usize,
    nodes: usize,
) -> Option<u32> {
    let home = node(u);
    for _ in 0..200 {
        let c = (next() % users as u64) as usize;
        if c == u || taken.contains(&(c as u32)) {
            continue;
        }
        if nodes > 1 && node(c) == home && !next().is_multiple_of(4) {
            continue;
        }
        return Some(c as u32);
    }
    None
}

/// User `u`'s friends: `f` distinct others (seeded by `u`; both devices of
/// a user follow the same friends).
fn friends_of(
    seed: u64,
    u: usize,
    users: usize,
    f: usize,
    node: &impl Fn(usize) -> usize,
    nodes: usize,
) -> Vec<u32> {
    let f = f.min(users.saturating_sub(1));
    let mut state = mix(seed ^ 0x0066_7269_656e_0064 ^ mix(u as u64));
    let mut next = move || {
        state = mix(state);
        state
    };
    let mut out = Vec::with_capacity(f);
    for _ in 0..f * 4 {
        if out.len() >= f {
            break;
        }
        if let Some(c) = draw_friend(&mut next, u, users, &out, node, nodes) {
            out.push(c);
        }
    }
    out
}

enum FState {
    /// The connection is not open: followed again once it is.
    Waiting,
    /// Follow sent with this cid; stamps of events that came before its
    /// snapshot, `(session, join)` (`None` for a leave).
    Pending {
        cid: u64,
        early: Vec<(u128, Option<St>)>,
    },
    Live,
    /// Unfollow sent with this cid; removed at its ack.
    Leaving {
        cid: u64,
    },
}

struct Follow {
    user: u32,
    state: FState,
    view: View,
}

/// One local session (device slot).
struct Slot {
    /// Global session ordinal (the stamps' slot).
    ordinal: u32,
    user: u32,
    status: bool,
    /// Last counter sent.
    counter: u32,
    follows: Vec<Follow>,
    own: View,
    /// Unplanned closes and failed reopens since the session last opened.
    failures: u32,
}

/// When a session closed by the server or the network tries again: after
/// 1 s, doubling per failure up to 30 s, spread by ±25 %, as a game client
/// backs off, so a node that restarts is not met by every session at once.
fn retry_at(now: u64, conn: usize, failures: u32) -> u64 {
    let base_ms = 1000u64 << failures.saturating_sub(1).min(5);
    let base_ms = base_ms.min(30_000);
    let spread = mix(now ^ mix(conn as u64)) % (base_ms / 2 + 1);
    now + (base_ms * 3 / 4 + spread) * 1_000_000
}

struct H {
    slots: Vec<Slot>,
    /// User id (as u128) → user index, for the users this shard follows or is.
    user_of: HashMap<u128, u32>,
    /// The reverse: user index → id.
    id_of: HashMap<u32, u128>,
    /// Follows in `FState::Pending` (kept, not counted: a count over every
    /// follow after every poll starved the event loop).
    pending: u64,
    counts: Counts,
    events: u64,
    /// Events of a user the session neither follows nor is.
    unexpected: u64,
    /// Events before a snapshot or after an unfollow was sent.
    ignored: u64,
    snapshots: u64,
    errors: u64,
    decode_errors: u64,
    first_error: Option<String>,
    examples: Vec<String>,
    unplanned: u64,
    close_reasons: BTreeMap<String, u64>,
    opened: Vec<usize>,
    /// `(conn, when)`: closed by the server or a network error; reopened then.
    reopen: Vec<(usize, u64)>,
    hist: Hist,
    window: Hist,
    /// `LOADGEN_SOAK_DROP=N`: forget every Nth event (a self-test: the
    /// checks must then fail).
    drop_every: u64,
    scratch: Vec<u8>,
}

fn presence(p: &Presence) -> P {
    P {
        session: p.session_id.0.as_u128(),
        status: St::parse(&p.status),
    }
}

impl H {
    fn note(&mut self, s: String) {
        if self.examples.len() < 10 {
            self.examples.push(s);
        }
    }

    fn on_event(&mut self, conn: usize, joins: &[Presence], leaves: &[Presence], now: u64) {
        self.events += 1;
        if self.drop_every > 0 && self.events.is_multiple_of(self.drop_every) {
            return;
        }
        if joins.len() > 1 || leaves.len() > 1 {
            self.counts.malformed += 1;
        }
        let (j, l) = (joins.first(), leaves.first());
        let Some(subject) = j.or(l) else {
            self.counts.malformed += 1;
            return;
        };
        let Some(&u) = self.user_of.get(&subject.user_id.0.as_u128()) else {
            self.unexpected += 1;
            return;
        };
        let (jp, lp) = (j.map(presence), l.map(presence));
        let before = self.counts;
        let slot = &mut self.slots[conn];
        let outcome = if u == slot.user {
            slot.own.apply(jp, lp, true, &mut self.counts)
        } else {
            let Some(f) = slot.follows.iter_mut().find(|f| f.user == u) else {
                self.unexpected += 1;
                return;
            };
            match &mut f.state {
                FState::Live => f.view.apply(jp, lp, false, &mut self.counts),
                FState::Pending { early, .. } => {
                    if let Some(p) = jp.or(lp) {
                        early.push((p.session, jp.map(|j| j.status)));
                    }
                    self.ignored += 1;
                    return;
                }
                FState::Waiting | FState::Leaving { .. } => {
                    self.ignored += 1;
                    return;
                }
            }
        };
        if self.counts.failures() > before.failures() {
            let what = format!(
                "session {}: event of user {u} join {:?} leave {:?} broke a rule ({:?})",
                self.slots[conn].ordinal,
                j.map(|p| p.status.to_string()),
                l.map(|p| p.status.to_string()),
                outcome
            );
            self.note(what);
        }
        if outcome != Outcome::Skipped {
            if let Some(st) = j.and_then(|p| parse_stamp(p.status.as_bytes())) {
                let lat = now.saturating_sub(st.sent_ns);
                self.hist.record(lat);
                self.window.record(lat);
            }
        }
    }

    /// Session `conn`'s connection is gone: its follows start over (sent
    /// again once it reopens), unfollows in flight are done.
    fn forget_follows(&mut self, conn: usize) {
        let slot = &mut self.slots[conn];
        slot.follows
            .retain(|f| !matches!(f.state, FState::Leaving { .. }));
        for f in &mut slot.follows {
            if matches!(f.state, FState::Pending { .. }) {
                self.pending -= 1;
            }
            f.state = FState::Waiting;
        }
        slot.own = View::default();
    }

    fn remember(&mut self, id: u128, user: u32) {
        self.user_of.insert(id, user);
        self.id_of.insert(user, id);
    }

    fn on_snapshot(&mut self, conn: usize, cid: u64, presences: &[Presence]) {
        let slot = &mut self.slots[conn];
        for f in &mut slot.follows {
            let FState::Pending { cid: c, early } = &f.state else {
                continue;
            };
            if *c != cid {
                continue;
            }
            let id = self.id_of.get(&f.user).copied();
            let mine: Vec<P> = presences
                .iter()
                .filter(|p| Some(p.user_id.0.as_u128()) == id)
                .map(presence)
                .collect();
            f.view.snapshot(&mine, early, &mut self.counts);
            f.state = FState::Live;
            self.pending -= 1;
            self.snapshots += 1;
        }
    }
}

impl Handler for H {
    fn on_text(&mut self, conn: usize, payload: &[u8], now: u64) {
        self.scratch.clear();
        self.scratch.extend_from_slice(payload);
        let msg = match decode_server_message(&mut self.scratch) {
            Ok(m) => m,
            Err(e) => {
                self.decode_errors += 1;
                let what = format!(
                    "undecodable frame: {e}: {}",
                    String::from_utf8_lossy(payload)
                );
                self.note(what);
                return;
            }
        };
        let cid: u64 = msg.cid.parse().unwrap_or(0);
        match msg.body {
            ServerBody::Event { joins, leaves } => self.on_event(conn, &joins, &leaves, now),
            ServerBody::Status(presences) => self.on_snapshot(conn, cid, &presences),
            ServerBody::Ack => self.slots[conn]
                .follows
                .retain(|f| !matches!(f.state, FState::Leaving { cid: c } if c == cid)),
            ServerBody::Error { code, message } => {
                self.errors += 1;
                self.first_error
                    .get_or_insert_with(|| format!("error {code}: {message}"));
            }
            ServerBody::Pong => {}
        }
    }

    fn on_open(&mut self, conn: usize, _now: u64) {
        self.slots[conn].failures = 0;
        self.opened.push(conn);
    }

    fn on_close(&mut self, conn: usize, why: &CloseWhy, now: u64) {
        self.unplanned += 1;
        let reason = match why {
            CloseWhy::ServerClose { code, reason } => format!("server close {code} {reason}"),
            CloseWhy::Dropped(e) => format!("dropped: {e}"),
            CloseWhy::ConnectFailed(e) => format!("connect failed: {e}"),
        };
        let reason: String = reason.chars().take(120).collect();
        *self.close_reasons.entry(reason).or_default() += 1;
        self.forget_follows(conn);
        let slot = &mut self.slots[conn];
        slot.failures += 1;
        self.reopen.push((conn, retry_at(now, conn, slot.failures)));
    }
}

/// Sends follow requests for every `Waiting` follow of `j` (100 ids each).
fn send_follows(ctx: &mut Ctx, h: &mut H, users: &UserDir, j: usize, cid: &mut u64) {
    let slot = &mut h.slots[j];
    let waiting: Vec<u32> = slot
        .follows
        .iter()
        .filter(|f| matches!(f.state, FState::Waiting))
        .map(|f| f.user)
        .collect();
    let first = *cid;
    let reqs = super::mesh::follow_requests(users, &waiting, cid);
    let mut sent_ok = Vec::with_capacity(reqs.len());
    for m in &reqs {
        sent_ok.push(ctx.net.send_text(j, m));
    }
    for f in &mut slot.follows {
        if !matches!(f.state, FState::Waiting) {
            continue;
        }
        let Some(k) = waiting.iter().position(|&u| u == f.user) else {
            continue;
        };
        if sent_ok.get(k / 100).copied().unwrap_or(false) {
            f.state = FState::Pending {
                cid: first + (k / 100) as u64 + 1,
                early: Vec::new(),
            };
            h.pending += 1;
        }
    }
}

/// Counters every tick and the final report carry.
fn counters(h: &H, ctx: &Ctx) -> Map<String, Value> {
    let mut m = Map::new();
    if let Ok(Value::Object(c)) = serde_json::to_value(h.counts) {
        m.extend(c);
    }
    m.insert("events".into(), json!(h.events));
    m.insert("unexpected".into(), json!(h.unexpected));
    m.insert("ignored".into(), json!(h.ignored));
    m.insert("snapshots".into(), json!(h.snapshots));
    m.insert("errors".into(), json!(h.errors));
    m.insert("decode_errors".into(), json!(h.decode_errors));
    m.insert("unplanned_disconnects".into(), json!(h.unplanned));
    m.insert("open".into(), json!(ctx.net.open));
    m
}

pub fn shard(a: &SoakArgs, mut ctx: Ctx, users_file: Option<String>) -> Result<()> {
    let t = phase_timeout(&a.common);
    let lay = Layout::of(a);
    let users = user_dir(&a.common, lay.users, &users_file)?;
    let n = local_count(lay.sessions, ctx.shard, ctx.shards);
    ctx.net.set_conns(n);
    let nodes = ctx.net.nodes();
    let node = |u: usize| users.node(u, nodes);
    let id128 = |u: usize| -> Result<u128> {
        herald::ids::parse_uuid(&users.id(u))
            .map(|x| x.as_u128())
            .ok_or_else(|| anyhow!("user {u}: id is not a UUID"))
    };
    let mut h = H {
        slots: Vec::with_capacity(n),
        user_of: HashMap::new(),
        id_of: HashMap::new(),
        pending: 0,
        counts: Counts::default(),
        events: 0,
        unexpected: 0,
        ignored: 0,
        snapshots: 0,
        errors: 0,
        decode_errors: 0,
        first_error: None,
        examples: Vec::new(),
        unplanned: 0,
        close_reasons: BTreeMap::new(),
        opened: Vec::new(),
        reopen: Vec::new(),
        hist: Hist::new(),
        window: Hist::new(),
        drop_every: std::env::var("LOADGEN_SOAK_DROP")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        scratch: Vec::with_capacity(4096),
    };
    let mut list = Vec::with_capacity(n);
    for j in 0..n {
        let s = ctx.shard + j * ctx.shards;
        let u = lay.user_of(s);
        let status = !offline(a.common.seed, u, a.offline);
        let friends = friends_of(a.common.seed, u, lay.users, a.follows, &node, nodes);
        h.remember(id128(u)?, u as u32);
        for &f in &friends {
            h.remember(id128(f as usize)?, f);
        }
        h.slots.push(Slot {
            ordinal: s as u32,
            user: u as u32,
            status,
            counter: 0,
            follows: friends
                .into_iter()
                .map(|user| Follow {
                    user,
                    state: FState::Waiting,
                    view: View::default(),
                })
                .collect(),
            own: View::default(),
            failures: 0,
        });
        list.push((j, node(u), users.ws_path(u, status)?));
    }
    let mut cid = 0u64;
    let mut rng = mix(a.common.seed ^ 0x736f_616b ^ mix(ctx.shard as u64));
    let mut next = move || {
        rng = mix(rng);
        rng
    };
    let (mut reconnects, mut refollows, mut updates) = (0u64, 0u64, 0u64);
    let mut stopped = false;
    ctx.out.send("ready", Value::Null);
    loop {
        let cmd = ctx.next_cmd(&mut h, Duration::from_secs(86_400 * 31))?;
        match cmd.cmd.as_str() {
            "connect" => {
                let r = ctx.connect_all(&mut h, &list, &a.common)?;
                ctx.out.send("connected", serde_json::to_value(&r)?);
            }
            "follow" => {
                // The sessions opened so far follow their friends, paced
                // like the connects.
                let rate = a.ramp_per_sec.max(1.0) / ctx.shards as f64;
                let start = now_ns();
                let opened = std::mem::take(&mut h.opened);
                let total = opened.len() as u64;
                for (k, &j) in opened.iter().enumerate() {
                    if ctx.stop {
                        break;
                    }
                    let due = start + (k as f64 / rate * 1e9) as u64;
                    let wait = due.saturating_sub(now_ns());
                    if wait > 0 {
                        ctx.pump(&mut h, Duration::from_nanos(wait.min(50_000_000)))?;
                    }
                    send_follows(&mut ctx, &mut h, &users, j, &mut cid);
                    ctx.progress("follow", k as u64, total);
                }
                let deadline = if ctx.stop {
                    now_ns()
                } else {
                    now_ns() + t.as_nanos() as u64
                };
                ctx.run_until(&mut h, deadline, |_, h| h.pending == 0)?;
                ctx.out.send(
                    "followed",
                    json!({"sessions": total, "snapshots": h.snapshots, "pending": h.pending, "errors": h.errors}),
                );
            }
            "run" => {
                let get = |k: &str| cmd.data.get(k).and_then(Value::as_f64);
                let start = cmd
                    .data
                    .get("start")
                    .and_then(Value::as_u64)
                    .unwrap_or_else(now_ns);
                let end = start + (get("duration").unwrap_or(60.0) * 1e9) as u64;
                let report_ns = (a.report_every.max(1.0) * 1e9) as u64;
                let online: Vec<usize> = (0..n).filter(|&j| h.slots[j].status).collect();
                let mut order = online.clone();
                for k in (1..order.len()).rev() {
                    order.swap(k, (next() % (k as u64 + 1)) as usize);
                }
                let upd_rate = order.len() as f64 / a.status_every_sec.max(0.1);
                let rec_rate = n as f64 * a.reconnect_pct_per_min.max(0.0) / 100.0 / 60.0;
                let ref_rate = n as f64 * a.refollow_pct_per_min.max(0.0) / 100.0 / 60.0;
                let (mut upd_done, mut rec_done, mut ref_done, mut rr) = (0u64, 0u64, 0u64, 0usize);
                let mut next_report = start + report_ns;
                let mut tick = 0u64;
                let mut last_tick = start;
                let mut last_events = 0u64;
                for _ in 0..u64::MAX {
                    while let Some(c) = ctx.try_cmd() {
                        if c.cmd == "stop" || c.cmd == "exit" {
                            stopped = true;
                        }
                    }
                    let now = now_ns();
                    if now >= end || stopped || ctx.stop || ctx.exit {
                        break;
                    }
                    if now >= start && n > 0 {
                        let el = (now - start) as f64 / 1e9;
                        let due = (el * upd_rate) as u64;
                        while upd_done < due && !order.is_empty() {
                            upd_done += 1;
                            let j = order[rr % order.len()];
                            rr += 1;
                            if ctx.net.conns[j].state != State::Open {
                                continue;
                            }
                            let slot = &mut h.slots[j];
                            slot.counter += 1;
                            let mut m = Vec::with_capacity(96);
                            m.extend_from_slice(b"{\"status_update\":{\"status\":\"");
                            write_stamp(
                                &mut m,
                                Stamp {
                                    user: slot.ordinal,
                                    seq: slot.counter,
                                    sent_ns: now_ns(),
                                },
                            );
                            m.extend_from_slice(b"\"}}");
                            if ctx.net.send_text(j, &m) {
                                updates += 1;
                            } else {
                                h.slots[j].counter -= 1;
                            }
                        }
                        // Planned reconnects: close, reopen, follow again.
                        while rec_done < (el * rec_rate) as u64 {
                            rec_done += 1;
                            let j = (next() % n as u64) as usize;
                            if ctx.net.conns[j].state != State::Open {
                                continue;
                            }
                            ctx.net.close(j, true, true);
                            h.forget_follows(j);
                            let src = ctx.source_for(j);
                            if let Err(e) = ctx.net.open(j, src, list[j].1, &list[j].2) {
                                h.errors += 1;
                                h.first_error.get_or_insert_with(|| format!("reopen: {e}"));
                            }
                            reconnects += 1;
                        }
                        // Refollows: unfollow one live friend, follow another user.
                        while ref_done < (el * ref_rate) as u64 {
                            ref_done += 1;
                            let j = (next() % n as u64) as usize;
                            if ctx.net.conns[j].state != State::Open {
                                continue;
                            }
                            let slot = &h.slots[j];
                            let live: Vec<usize> = (0..slot.follows.len())
                                .filter(|&k| matches!(slot.follows[k].state, FState::Live))
                                .collect();
                            if live.is_empty() {
                                continue;
                            }
                            let k = live[(next() % live.len() as u64) as usize];
                            let taken: Vec<u32> = slot.follows.iter().map(|f| f.user).collect();
                            let u = slot.user as usize;
                            let Some(new) =
                                draw_friend(&mut next, u, lay.users, &taken, &node, nodes)
                            else {
                                continue;
                            };
                            cid += 1;
                            let old = slot.follows[k].user as usize;
                            let m = format!(
                                "{{\"status_unfollow\":{{\"user_ids\":[\"{}\"]}},\"cid\":\"{cid}\"}}",
                                users.id(old)
                            );
                            if !ctx.net.send_text(j, m.as_bytes()) {
                                continue;
                            }
                            h.remember(id128(new as usize)?, new);
                            let slot = &mut h.slots[j];
                            slot.follows[k].state = FState::Leaving { cid };
                            slot.follows.push(Follow {
                                user: new,
                                state: FState::Waiting,
                                view: View::default(),
                            });
                            send_follows(&mut ctx, &mut h, &users, j, &mut cid);
                            refollows += 1;
                        }
                    }
                    let now = now_ns();
                    let due: Vec<usize> = h
                        .reopen
                        .iter()
                        .filter(|r| r.1 <= now)
                        .map(|r| r.0)
                        .collect();
                    h.reopen.retain(|r| r.1 > now);
                    for j in due {
                        let src = ctx.source_for(j);
                        if ctx.net.open(j, src, list[j].1, &list[j].2).is_err() {
                            h.slots[j].failures += 1;
                            h.reopen.push((j, retry_at(now, j, h.slots[j].failures)));
                        }
                    }
                    for j in std::mem::take(&mut h.opened) {
                        send_follows(&mut ctx, &mut h, &users, j, &mut cid);
                    }
                    if now >= next_report {
                        tick += 1;
                        next_report += report_ns;
                        let mut m = counters(&h, &ctx);
                        m.insert("n".into(), json!(tick));
                        m.insert("secs".into(), json!((now - last_tick) as f64 / 1e9));
                        m.insert("window_events".into(), json!(h.events - last_events));
                        m.insert("hist".into(), serde_json::to_value(h.window.to_wire())?);
                        ctx.out.send("tick", Value::Object(m));
                        h.window = Hist::new();
                        last_tick = now;
                        last_events = h.events;
                    }
                    ctx.pump(&mut h, Duration::from_millis(5))?;
                }
                ctx.out.send(
                    "ran",
                    json!({"updates": updates, "reconnects": reconnects, "refollows": refollows, "stopped": stopped}),
                );
            }
            "quiesce" => {
                // No traffic: let the last events arrive, then compare every
                // live view with the log, retrying while they settle.
                let drain_end = now_ns() + (a.drain.clamp(0.0, 3600.0) * 1e9) as u64;
                ctx.run_until(&mut h, drain_end, |_, _| false)?;
                let settle_end = now_ns() + (a.settle.clamp(0.0, 3600.0) * 1e9) as u64;
                let admin = crate::Common {
                    url: a.status_url.clone(),
                    ..a.common.clone()
                }
                .server_addr()?;
                let mut cmp = (0u64, 0u64, Vec::new());
                let mut fetch_error = None;
                for _ in 0..1000 {
                    let (wanted, ids) = followed_users(&h, &ctx, &users);
                    match fetch_truth(&mut ctx, &mut h, admin, &a.http_key, ids) {
                        Ok(truth) => {
                            fetch_error = None;
                            cmp = compare(&h, &ctx, &users, &wanted, truth);
                        }
                        Err(e) => fetch_error = Some(format!("{e:#}")),
                    }
                    if (cmp.1 == 0 && fetch_error.is_none()) || now_ns() >= settle_end {
                        break;
                    }
                    ctx.run_until(&mut h, now_ns() + 1_000_000_000, |_, _| false)?;
                }
                let mut m = counters(&h, &ctx);
                m.insert("views_checked".into(), json!(cmp.0));
                m.insert("view_mismatch".into(), json!(cmp.1));
                m.insert("truth_error".into(), json!(fetch_error));
                m.insert("pending_follows".into(), json!(h.pending));
                m.insert("first_error".into(), json!(h.first_error));
                let mut ex = h.examples.clone();
                ex.extend(cmp.2);
                m.insert("examples".into(), json!(ex));
                m.insert("close_reasons".into(), json!(h.close_reasons));
                m.insert("hist".into(), serde_json::to_value(h.hist.to_wire())?);
                ctx.out.send("verified", Value::Object(m));
            }
            "close" => {
                for j in 0..n {
                    ctx.net.close(j, false, true);
                }
                ctx.out.send("closed", json!({"net": ctx.net.stats}));
            }
            "exit" => return Ok(()),
            _ => {}
        }
    }
}

/// The users this worker's open sessions follow live, sorted, with their ids.
fn followed_users(h: &H, ctx: &Ctx, users: &UserDir) -> (Vec<u32>, Vec<String>) {
    let mut wanted: Vec<u32> = Vec::new();
    for (j, s) in h.slots.iter().enumerate() {
        if ctx.net.conns[j].state != State::Open {
            continue;
        }
        wanted.extend(
            s.follows
                .iter()
                .filter(|f| matches!(f.state, FState::Live))
                .map(|f| f.user),
        );
    }
    wanted.sort_unstable();
    wanted.dedup();
    let ids = wanted
        .iter()
        .map(|&u| users.id(u as usize).into_owned())
        .collect();
    (wanted, ids)
}

/// `GET /v2/status` for `ids`, asked from another thread while this worker
/// keeps reading its sockets. At 100,000 connections the questions take
/// longer than the nodes' pong wait, and a worker that stopped reading for
/// that long had its sessions closed for "ping timeout" in the middle of
/// the comparison: the log then differed from views that had not read the
/// leaves yet.
fn fetch_truth(
    ctx: &mut Ctx,
    h: &mut H,
    admin: std::net::SocketAddr,
    http_key: &str,
    ids: Vec<String>,
) -> Result<Vec<super::churn::views::Presences>> {
    let key = http_key.to_owned();
    let asking = std::thread::Builder::new()
        .name("soak-status".into())
        .spawn(move || super::churn::views::fetch_status(admin, &key, &ids))?;
    while !asking.is_finished() {
        ctx.pump(h, Duration::from_millis(20))?;
    }
    asking
        .join()
        .map_err(|_| anyhow!("the GET /v2/status thread panicked"))?
}

/// Every live follow of every open session against `truth`, the answer of
/// `GET /v2/status` for `wanted`: `(views checked, mismatches, examples)`.
fn compare(
    h: &H,
    ctx: &Ctx,
    users: &UserDir,
    wanted: &[u32],
    truth: Vec<super::churn::views::Presences>,
) -> (u64, u64, Vec<String>) {
    let mut by_user: HashMap<u32, Vec<(u128, St)>> = HashMap::with_capacity(wanted.len());
    for (u, t) in wanted.iter().zip(truth) {
        let mut v: Vec<(u128, St)> = t
            .iter()
            .map(|(sid, st)| {
                let sid = herald::ids::parse_uuid(sid)
                    .map(|x| x.as_u128())
                    .unwrap_or(0);
                (sid, St::parse(st))
            })
            .collect();
        v.sort_by_key(|s| s.0);
        by_user.insert(*u, v);
    }
    let (mut checked, mut bad, mut ex) = (0u64, 0u64, Vec::new());
    for (j, s) in h.slots.iter().enumerate() {
        if ctx.net.conns[j].state != State::Open {
            continue;
        }
        for f in s.follows.iter().filter(|f| matches!(f.state, FState::Live)) {
            checked += 1;
            let view = f.view.sorted();
            let truth = by_user.get(&f.user).map(Vec::as_slice).unwrap_or_default();
            if view.as_slice() != truth {
                bad += 1;
                if ex.len() < 5 {
                    ex.push(format!(
                        "session {}: view of user {} ({}) is {view:?}, the log has {truth:?}",
                        s.ordinal,
                        f.user,
                        users.id(f.user as usize)
                    ));
                }
            }
        }
    }
    (checked, bad, ex)
}

/// One sample of the servers for a report line.
struct Sample {
    at: Instant,
    node_rss_kib: Vec<u64>,
    nats_cpu_us: Option<u64>,
    nats_rss_kib: Option<u64>,
}

fn sample(probe: &Probe) -> Sample {
    Sample {
        at: Instant::now(),
        node_rss_kib: probe
            .pids
            .iter()
            .map(|&p| sys::rss_kib(p).unwrap_or(0))
            .collect(),
        nats_cpu_us: probe.nats.and_then(sys::process_utime_stime_us),
        nats_rss_kib: probe.nats.and_then(sys::rss_kib),
    }
}

fn total(v: &[Value], k: &str) -> u64 {
    v.iter()
        .filter_map(|x| x.get(k).and_then(Value::as_u64))
        .sum()
}

pub fn coord(a: &SoakArgs, cl: &mut Cluster, probe: &Probe) -> Result<Value> {
    sys::catch_sigint();
    let t = phase_timeout(&a.common);
    let lay = Layout::of(a);
    if lay.sessions == 0 {
        bail!("--connections must be at least 1");
    }
    let per_proc = lay.sessions.div_ceil(a.common.procs);
    if per_proc > 19_500 {
        bail!(
            "{per_proc} connections per process: at most 19,500 fit under a 20,000-file limit; raise --procs"
        );
    }
    let duration = a
        .common
        .duration
        .unwrap_or(600.0)
        .clamp(1.0, 30.0 * 86_400.0);
    let started = Instant::now();
    cl.collect("ready", t)?;
    let s_start = sample(probe);
    cl.send("connect", Value::Null)?;
    let r = cl.collect("connected", t)?;
    let connected = sum(&r, "ok");
    let connect_secs = r
        .iter()
        .filter_map(|x| x.data.get("secs").and_then(Value::as_f64))
        .fold(0.0, f64::max);
    let connect_failed = sum(&r, "failed") + sum(&r, "timed_out");
    let first_connect_error = r
        .iter()
        .find_map(|x| x.data.get("first_error").filter(|v| !v.is_null()).cloned());
    eprintln!(
        "soak: {connected} of {} sessions open in {connect_secs:.1}s; following",
        lay.sessions
    );
    cl.send("follow", Value::Null)?;
    let fr = cl.collect("followed", t)?;
    eprintln!(
        "soak: {} snapshots, {} follows pending; running {duration:.0}s (Ctrl-C stops it with the summary so far)",
        sum(&fr, "snapshots"),
        sum(&fr, "pending")
    );
    let start = now_ns() + 100_000_000;
    cl.send("run", json!({"start": start, "duration": duration}))?;
    let run_started = Instant::now();
    let mut ticks: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    let mut ran: Vec<Value> = Vec::new();
    let mut last = sample(probe);
    let mut samples: Vec<Sample> = Vec::new();
    let mut worst_p99_ms = 0.0f64;
    let mut windows = 0u64;
    let mut interrupted = false;
    let deadline = Instant::now() + Duration::from_secs_f64(duration) + t;
    while ran.len() < cl.shards {
        if Instant::now() > deadline {
            bail!("timed out waiting for the run to end");
        }
        if sys::interrupted() && !interrupted {
            interrupted = true;
            eprintln!("soak: interrupted; stopping and checking what ran");
            cl.send("stop", Value::Null)?;
        }
        let Some(msg) = cl.next(Duration::from_millis(200))? else {
            continue;
        };
        match msg.kind.as_str() {
            "ran" => ran.push(msg.data),
            "tick" => {
                let n = msg.data.get("n").and_then(Value::as_u64).unwrap_or(0);
                let e = ticks.entry(n).or_default();
                e.push(msg.data);
                if e.len() < cl.shards {
                    continue;
                }
                let Some(v) = ticks.remove(&n) else { continue };
                let now = sample(probe);
                let secs = now.at.duration_since(last.at).as_secs_f64().max(1e-3);
                let mut hist = Hist::new();
                for x in &v {
                    hist.merge_report(x);
                }
                let p99 = hist.quantile(0.99) as f64 / 1e6;
                if hist.n > 0 {
                    worst_p99_ms = worst_p99_ms.max(p99);
                }
                windows += 1;
                let nats_cpu = match (last.nats_cpu_us, now.nats_cpu_us) {
                    (Some(a), Some(b)) => {
                        format!("{:.0}%", b.saturating_sub(a) as f64 / 1e4 / secs)
                    }
                    _ => "-".into(),
                };
                let anomalies: u64 = [
                    "missing",
                    "duplicate",
                    "out_of_order",
                    "wrong_leave",
                    "snapshot_behind",
                    "malformed",
                    "unexpected",
                    "decode_errors",
                ]
                .iter()
                .map(|k| total(&v, k))
                .sum();
                eprintln!(
                    "[{:>5.0}s] open={} events/s={:.0} p50={:.1}ms p99={:.1}ms max={:.1}ms anomalies={} coalesced={} errors={} unplanned_disconnects={} nodes_rss={}MiB nats cpu={} rss={}MiB mem_available={}MiB",
                    run_started.elapsed().as_secs_f64(),
                    total(&v, "open"),
                    total(&v, "window_events") as f64 / secs,
                    hist.quantile(0.5) as f64 / 1e6,
                    p99,
                    hist.max as f64 / 1e6,
                    anomalies,
                    total(&v, "coalesced"),
                    total(&v, "errors"),
                    total(&v, "unplanned_disconnects"),
                    now.node_rss_kib.iter().sum::<u64>() / 1024,
                    nats_cpu,
                    now.nats_rss_kib.map_or("-".into(), |k| (k / 1024).to_string()),
                    sys::mem_available_kib().map_or("-".into(), |k| (k / 1024).to_string()),
                );
                samples.push(sample(probe));
                last = now;
            }
            "progress" => {}
            other => bail!("unexpected '{other}' during the run"),
        }
    }
    let run_secs = run_started.elapsed().as_secs_f64();
    cl.send("quiesce", Value::Null)?;
    let v = cl.collect(
        "verified",
        t + Duration::from_secs_f64(a.drain.clamp(0.0, 3600.0) + a.settle.clamp(0.0, 3600.0)),
    )?;
    let s_end = sample(probe);
    cl.send("close", Value::Null)?;
    cl.collect("closed", t)?;
    let data: Vec<Value> = v.iter().map(|x| x.data.clone()).collect();
    let mut hist = Hist::new();
    for x in &data {
        hist.merge_report(x);
    }
    let c = |k: &str| total(&data, k);
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for x in &data {
        if let Some(m) = x.get("close_reasons").and_then(Value::as_object) {
            for (k, n) in m {
                *reasons.entry(k.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
    }
    let examples: Vec<Value> = data
        .iter()
        .flat_map(|x| {
            x.get("examples")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default()
        })
        .take(10)
        .collect();
    let truth_error = data
        .iter()
        .find_map(|x| x.get("truth_error").filter(|v| !v.is_null()).cloned());
    // RSS per node at the start of the last 20 minutes of the run, and at the end.
    let cut = s_end
        .at
        .checked_sub(Duration::from_secs(1200))
        .unwrap_or(s_start.at);
    let from = samples
        .iter()
        .find(|s| s.at >= cut)
        .map(|s| &s.node_rss_kib)
        .unwrap_or(&s_start.node_rss_kib);
    let checks = json!({
        "all_connected": connect_failed == 0 && connected == lay.sessions as u64,
        "no_missing": c("missing") == 0,
        "no_duplicate": c("duplicate") == 0,
        "no_out_of_order": c("out_of_order") == 0,
        "leaves_name_previous_status": c("wrong_leave") == 0,
        "snapshots_agree": c("snapshot_behind") == 0 && c("pending_follows") == 0,
        "no_coalesced": c("coalesced") == 0,
        "no_unexpected_events": c("unexpected") == 0 && c("malformed") == 0 && c("decode_errors") == 0,
        "no_errors": c("errors") == 0,
        "no_unplanned_disconnects": c("unplanned_disconnects") == 0,
        "final_views_equal": truth_error.is_none() && c("view_mismatch") == 0 && c("views_checked") > 0,
        "events_verified": c("applied") > 0,
    });
    let passed = checks
        .as_object()
        .is_some_and(|m| m.values().all(|b| b.as_bool() == Some(true)));
    let mut out = json!({
        "connections": lay.sessions,
        "users": lay.users,
        "nodes": a.common.server_addrs()?.len(),
        "duration": duration,
        "run_s": run_secs,
        "interrupted": interrupted,
        "wall_s": started.elapsed().as_secs_f64(),
        "connected": connected,
        "connect_failed": connect_failed,
        "first_connect_error": first_connect_error,
        "connect_s": connect_secs,
        "updates": total(&ran, "updates"),
        "reconnects": total(&ran, "reconnects"),
        "refollows": total(&ran, "refollows"),
        "events": c("events"),
        "applied": c("applied"),
        "missing": c("missing"),
        "duplicate": c("duplicate"),
        "out_of_order": c("out_of_order"),
        "wrong_leave": c("wrong_leave"),
        "coalesced": c("coalesced"),
        "snapshot_behind": c("snapshot_behind"),
        "snapshot_repeats": c("snapshot_repeats"),
        "snapshots": c("snapshots"),
        "pending_follows": c("pending_follows"),
        "own_unknown": c("own_unknown"),
        "malformed": c("malformed"),
        "decode_errors": c("decode_errors"),
        "unexpected": c("unexpected"),
    });
    let tail = json!({
        "ignored": c("ignored"),
        "errors": c("errors"),
        "first_error": data.iter().find_map(|x| x.get("first_error").filter(|v| !v.is_null()).cloned()),
        "unplanned_disconnects": c("unplanned_disconnects"),
        "close_reasons": reasons,
        "views_checked": c("views_checked"),
        "view_mismatch": c("view_mismatch"),
        "truth_error": truth_error,
        "examples": examples,
        "latency": hist.summary_us(),
        "windows": windows,
        "worst_window_p99_ms": worst_p99_ms,
        "node_rss_kib": {
            "run_start": s_start.node_rss_kib,
            "last_20min_start": from,
            "end": s_end.node_rss_kib,
        },
        "nats_rss_kib": {"start": s_start.nats_rss_kib, "end": s_end.nats_rss_kib},
        "mem_available_kib_end": sys::mem_available_kib(),
        "checks": checks,
        "checks_passed": passed,
    });
    if let (Value::Object(m), Value::Object(t)) = (&mut out, tail) {
        m.extend(t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_gives_a_fraction_of_users_two_devices() {
        let mut a = crate::SoakArgs {
            common: crate::unreachable_common().clone(),
            connections: 1100,
            follows: 20,
            status_every_sec: 120.0,
            offline: 0.1,
            two_devices: 0.1,
            reconnect_pct_per_min: 2.0,
            refollow_pct_per_min: 2.0,
            ramp_per_sec: 5000.0,
            drain: 5.0,
            settle: 10.0,
            status_url: String::new(),
            http_key: String::new(),
            report_every: 10.0,
        };
        let l = Layout::of(&a);
        assert_eq!((l.sessions, l.users), (1100, 1000));
        assert_eq!(l.user_of(1050), 50);
        a.two_devices = 0.0;
        assert_eq!(Layout::of(&a).users, 1100);
    }

    #[test]
    fn most_friends_live_on_other_nodes() {
        let node = |u: usize| u % 3;
        let (mut other, mut all) = (0, 0);
        for u in 0..300 {
            let f = friends_of(1, u, 3000, 20, &node, 3);
            assert_eq!(f.len(), 20);
            assert!(!f.contains(&(u as u32)));
            let mut d = f.clone();
            d.sort_unstable();
            d.dedup();
            assert_eq!(d.len(), 20);
            other += f.iter().filter(|&&x| node(x as usize) != node(u)).count();
            all += f.len();
        }
        assert!(other * 10 > all * 8, "{other} of {all} on other nodes");
    }
}

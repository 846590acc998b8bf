//! `churn`: a seeded random mix of connect, disconnect, follow, unfollow and
//! update over a small pool of users, in one event loop, with every frame
//! fully parsed and recorded. After a drain, a model of §6 of the protocol
//! reference checks every delivery.
//!
//! The model. Each session `p` generates a list of events, known from what
//! we sent because the server handles one session's requests in order:
//! `status=true` connect → join `""`; update with a status → join (+ leave
//! of the previous status); update without one → leave (if it had one);
//! disconnect → leave (if it had one). Statuses are unique (`c<n>`), so a
//! received event names its subject session and index. For a receiver `r`
//! and subject `p` of user `X`, `r`'s interest in `X` is a list of
//! intervals (follow sent → snapshot received → unfollow sent → ack), plus
//! the self-follow from connect to close. Then:
//! * **mandatory**: an event sent after the snapshot arrived and at least
//!   `--grace` before the interval ended (unfollow or close) must arrive;
//! * **allowed**: an event sent at most `--grace` before the follow was sent
//!   and before the unfollow was acked may arrive (§6.4: in-flight events
//!   may arrive around the snapshot and may repeat what it shows);
//! * anything else is **unexpected**; per (r, p) indices must strictly
//!   increase (else **duplicate** or **out of order**); a mandatory event
//!   not received is **missing**.
//!
//! Snapshots are checked too: a listed presence must hold a status `p`
//! really had around the follow, and a presence whose status was settled
//! (acked before the follow was sent, unchanged until the snapshot arrived)
//! must be listed.
//!
//! The `""` join of a `status=true` connect is not unique; it is resolved by
//! session id, and at most one `status=true` session per user may be
//! unresolved at a time.
//!
//! Views (`views`): every follower's view of each user it follows is rebuilt
//! from its snapshot and the events after it; each leave must name the
//! status the view holds (else a gap), coalesced skips are counted apart,
//! and with `--status-url` the final views must equal the status API's
//! answer (the log, in cluster mode), which must equal the model.

pub(crate) mod views;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use herald::protocol::json::decode_server_message;
use herald::protocol::message::{Presence, ServerBody};
use serde_json::{json, Value};

use super::{phase_timeout, user_dir};
use crate::cluster::Cluster;
use crate::net::{CloseWhy, Handler, State};
use crate::shard::Ctx;
use crate::sys::now_ns;
use crate::users::mix;
use crate::ChurnArgs;

pub fn coord(a: &ChurnArgs, cl: &mut Cluster) -> Result<Value> {
    let t = phase_timeout(&a.common);
    cl.collect("ready", t)?;
    let cpu0 = cl.cpu_ns();
    cl.send("run", Value::Null)?;
    let duration = a.common.duration.unwrap_or(10.0);
    let r = cl.collect(
        "checked",
        t + Duration::from_secs_f64(duration + a.drain + 30.0),
    )?;
    let cpu1 = cl.cpu_ns();
    let mut out = r.into_iter().next().map(|x| x.data).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut out {
        m.insert("loadgen_cpu_ms".into(), json!((cpu1 - cpu0) as f64 / 1e6));
    }
    Ok(out)
}

#[derive(Debug, Clone)]
struct Ev {
    join: Option<String>,
    leave: Option<String>,
    sent: u64,
    acked: Option<u64>,
}

#[derive(Debug, Clone, Copy)]
struct Interval {
    fs: u64,
    fr: Option<u64>,
    us: Option<u64>,
    ua: Option<u64>,
}

#[derive(Debug, Clone)]
struct Receipt {
    at: u64,
    /// Arrival order among the receiver's frames (events and replies).
    ord: u64,
    user: Option<usize>,
    session_id: String,
    join: Option<String>,
    leave: Option<String>,
}

#[derive(Debug, Clone)]
struct Snap {
    fs: u64,
    fr: u64,
    /// Arrival order (see [`Receipt::ord`]).
    ord: u64,
    users: Vec<usize>,
    presences: Vec<(Option<usize>, String, String)>,
}

#[derive(Debug)]
enum Pending {
    Update(Option<usize>),
    Follow(Vec<usize>, u64),
    Unfollow(Vec<usize>),
}

#[derive(Debug)]
struct Sess {
    user: usize,
    status_true: bool,
    conn_sent: u64,
    open_at: Option<u64>,
    closed_at: Option<u64>,
    server_closed: Option<String>,
    events: Vec<Ev>,
    cur: Option<String>,
    session_id: Option<String>,
    follows: HashMap<usize, Vec<Interval>>,
    receipts: Vec<Receipt>,
    snaps: Vec<Snap>,
    pending: HashMap<u64, Pending>,
}

impl Sess {
    fn following(&self, x: usize) -> bool {
        self.follows
            .get(&x)
            .and_then(|v| v.last())
            .is_some_and(|i| i.us.is_none())
    }
}

#[derive(Default)]
struct Model {
    sessions: Vec<Sess>,
    user_of_id: HashMap<String, usize>,
    session_of_id: HashMap<String, usize>,
    status_of: HashMap<String, (usize, usize)>,
    decode_errors: u64,
    decode_first: Option<String>,
    errors: u64,
    error_first: Option<String>,
    unmatched_replies: u64,
    session_conflicts: u64,
    warm_open: usize,
    warm: bool,
    /// Self-test of the checker (`LOADGEN_CHURN_DROP=N`): forget every Nth event.
    drop_every: u64,
    seen: u64,
    /// Frames received so far (events and replies), for [`Receipt::ord`].
    arrivals: u64,
}

impl Model {
    /// The session and event a received event is (`None` when its status
    /// names no session).
    fn resolve(&self, r: &Receipt) -> Option<(usize, usize)> {
        match (&r.join, &r.leave) {
            (Some(j), _) if !j.is_empty() => self.status_of.get(j).copied(),
            (Some(_), _) => self.session_of_id.get(&r.session_id).map(|&p| (p, 0)),
            (None, Some(l)) if !l.is_empty() => self.status_of.get(l).map(|&(p, k)| (p, k + 1)),
            (None, Some(_)) => self.session_of_id.get(&r.session_id).map(|&p| (p, 1)),
            (None, None) => None,
        }
    }

    /// The session and event whose status a snapshot lists.
    fn resolve_listed(&self, session_id: &str, status: &str) -> Option<(usize, usize)> {
        if status.is_empty() {
            self.session_of_id.get(session_id).map(|&p| (p, 0))
        } else {
            self.status_of.get(status).copied()
        }
    }

    /// The unresolved `status=true` session of `user`, if any.
    fn unresolved_status_session(&self, user: usize) -> Option<usize> {
        self.sessions.iter().position(|s| {
            s.user == user
                && s.status_true
                && s.session_id.is_none()
                && s.open_at.is_some()
                && s.server_closed.is_none()
        })
    }

    fn learn_session(&mut self, p: usize, sid: &str) {
        match self.session_of_id.get(sid) {
            Some(&q) if q != p => self.session_conflicts += 1,
            Some(_) => {}
            None => {
                self.session_of_id.insert(sid.to_owned(), p);
                self.sessions[p].session_id = Some(sid.to_owned());
            }
        }
    }

    fn on_presence_seen(
        &mut self,
        user: Option<usize>,
        sid: &str,
        join: Option<&str>,
        leave: Option<&str>,
    ) {
        if self.session_of_id.contains_key(sid) {
            return;
        }
        if let Some(s) = join
            .filter(|s| !s.is_empty())
            .or(leave.filter(|s| !s.is_empty()))
        {
            if let Some(&(p, _)) = self.status_of.get(s) {
                self.learn_session(p, sid);
            }
        } else if join == Some("") {
            if let Some(p) = user.and_then(|u| self.unresolved_status_session(u)) {
                self.learn_session(p, sid);
            }
        }
    }
}

impl Handler for Model {
    fn on_open(&mut self, conn: usize, now: u64) {
        if self.warm {
            self.warm_open += 1;
            return;
        }
        let s = &mut self.sessions[conn];
        s.open_at = Some(now);
        if s.status_true {
            // Acknowledged when the session gets its own join: only then is
            // it certainly in effect (in cluster mode, once in the log).
            s.events.push(Ev {
                join: Some(String::new()),
                leave: None,
                sent: s.conn_sent,
                acked: None,
            });
            s.cur = Some(String::new());
        }
    }

    fn on_text(&mut self, conn: usize, payload: &[u8], now: u64) {
        if self.warm {
            return;
        }
        self.arrivals += 1;
        let ord = self.arrivals;
        let mut buf = payload.to_vec();
        let msg = match decode_server_message(&mut buf) {
            Ok(m) => m,
            Err(e) => {
                self.decode_errors += 1;
                self.decode_first
                    .get_or_insert_with(|| format!("{e}: {}", String::from_utf8_lossy(payload)));
                return;
            }
        };
        let presence = |m: &Model, p: &Presence| -> (Option<usize>, String, String) {
            let uid = p.user_id.to_string();
            (
                m.user_of_id.get(&uid).copied(),
                p.session_id.to_string(),
                p.status.to_string(),
            )
        };
        match msg.body {
            ServerBody::Event { joins, leaves } => {
                let j = joins.first().map(|p| presence(self, p));
                let l = leaves.first().map(|p| presence(self, p));
                let Some(base) = j.clone().or(l.clone()) else {
                    return;
                };
                self.seen += 1;
                if self.drop_every > 0 && self.seen.is_multiple_of(self.drop_every) {
                    return; // self-test: pretend this delivery was lost
                }
                let jr = j.as_ref().map(|x| x.2.clone());
                let lr = l.as_ref().map(|x| x.2.clone());
                self.on_presence_seen(base.0, &base.1, jr.as_deref(), lr.as_deref());
                if jr.as_deref() == Some("") && self.session_of_id.get(&base.1) == Some(&conn) {
                    let own = &mut self.sessions[conn];
                    if let Some(ev) = own.events.first_mut().filter(|_| own.status_true) {
                        ev.acked.get_or_insert(now);
                    }
                }
                self.sessions[conn].receipts.push(Receipt {
                    at: now,
                    ord,
                    user: base.0,
                    session_id: base.1,
                    join: jr,
                    leave: lr,
                });
            }
            body => {
                let cid: u64 = msg.cid.parse().unwrap_or(0);
                let Some(pend) = self.sessions[conn].pending.remove(&cid) else {
                    self.unmatched_replies += 1;
                    return;
                };
                if let ServerBody::Error { code, message } = &body {
                    self.errors += 1;
                    self.error_first
                        .get_or_insert_with(|| format!("{code} {message}"));
                }
                match (pend, body) {
                    (Pending::Update(Some(k)), _) => {
                        self.sessions[conn].events[k].acked = Some(now)
                    }
                    (Pending::Update(None), _) => {}
                    (Pending::Follow(users, fs), ServerBody::Status(ps)) => {
                        let presences: Vec<_> = ps.iter().map(|p| presence(self, p)).collect();
                        for (u, sid, st) in &presences {
                            self.on_presence_seen(*u, sid, Some(st), None);
                        }
                        let s = &mut self.sessions[conn];
                        for u in &users {
                            if let Some(i) = s.follows.get_mut(u).and_then(|v| v.last_mut()) {
                                if i.fr.is_none() && i.fs == fs {
                                    i.fr = Some(now);
                                }
                            }
                        }
                        s.snaps.push(Snap {
                            fs,
                            fr: now,
                            ord,
                            users,
                            presences,
                        });
                    }
                    (Pending::Follow(..), _) => {}
                    (Pending::Unfollow(users), _) => {
                        let s = &mut self.sessions[conn];
                        for u in users {
                            if let Some(i) = s.follows.get_mut(&u).and_then(|v| v.last_mut()) {
                                if i.us.is_some() && i.ua.is_none() {
                                    i.ua = Some(now);
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn on_close(&mut self, conn: usize, why: &CloseWhy, now: u64) {
        if self.warm {
            return;
        }
        let s = &mut self.sessions[conn];
        if s.closed_at.is_none() {
            s.closed_at = Some(now);
            s.server_closed = Some(match why {
                CloseWhy::ServerClose { code, reason } => format!("close {code} {reason}"),
                CloseWhy::Dropped(e) => format!("dropped: {e}"),
                CloseWhy::ConnectFailed(e) => format!("connect failed: {e}"),
            });
            if let Some(prev) = s.cur.take() {
                s.events.push(Ev {
                    join: None,
                    leave: Some(prev),
                    sent: now,
                    acked: None,
                });
            }
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = mix(self.0);
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
}

pub fn shard(a: &ChurnArgs, mut ctx: Ctx, users_file: Option<String>) -> Result<()> {
    let users = user_dir(&a.common, a.users, &users_file)?;
    let duration = a.common.duration.unwrap_or(10.0).clamp(0.1, 86_400.0);
    let grace = (a.grace.clamp(0.0, 60.0) * 1e9) as u64;
    let drop_every = std::env::var("LOADGEN_CHURN_DROP")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut m = Model {
        warm: true,
        drop_every,
        ..Default::default()
    };
    for i in 0..a.users {
        m.user_of_id.insert(users.id(i).into_owned(), i);
    }
    ctx.out.send("ready", Value::Null);
    let cmd = ctx.next_cmd(&mut m, Duration::from_secs(86_400))?;
    if cmd.cmd != "run" {
        return Ok(());
    }
    // Warm-up: every pool user connects once, so the server knows them all.
    ctx.net.set_conns(a.users);
    let nodes = ctx.net.nodes();
    let list: Vec<(usize, usize, String)> = (0..a.users)
        .map(|i| Ok((i, users.node(i, nodes), users.ws_path(i, false)?)))
        .collect::<Result<_>>()?;
    let warm = ctx.connect_all(&mut m, &list, &a.common)?;
    for i in 0..a.users {
        ctx.net.close(i, true, false);
    }
    let until = now_ns() + 300_000_000;
    ctx.run_until(&mut m, until, |_, _| false)?;
    m.warm = false;
    ctx.net.set_conns(0);

    let mut rng = Rng(mix(a.common.seed ^ 0x0063_6875_726e));
    let start = now_ns();
    let end = start + (duration * 1e9) as u64;
    let rate = a.rate.clamp(1.0, 100_000.0);
    let mut ops = 0u64;
    let mut counts = [0u64; 6];
    let mut cid = 0u64;
    let mut status_no = 0u64;
    let max_sessions = a.max_sessions.max(2);
    for _ in 0..u64::MAX {
        let now = now_ns();
        if now >= end || ctx.exit {
            break;
        }
        let due = ((now - start) as f64 / 1e9 * rate) as u64;
        while ops < due {
            ops += 1;
            cid += 1;
            let now = now_ns();
            let live: Vec<usize> = (0..m.sessions.len())
                .filter(|&p| {
                    let s = &m.sessions[p];
                    s.closed_at.is_none()
                        && s.open_at.is_some_and(|o| now - o > 20_000_000)
                        && (!s.status_true || s.session_id.is_some())
                })
                .collect();
            let open_or_connecting = m.sessions.iter().filter(|s| s.closed_at.is_none()).count();
            let w_connect = if open_or_connecting < max_sessions / 2 {
                40
            } else if open_or_connecting < max_sessions {
                10
            } else {
                0
            };
            let weights = [w_connect, if live.len() > 2 { 8 } else { 0 }, 25, 10, 35];
            let total: u64 = weights.iter().sum();
            let mut pick = rng.next() % total.max(1);
            let mut op = 0;
            for (i, w) in weights.iter().enumerate() {
                if pick < *w {
                    op = i;
                    break;
                }
                pick -= w;
            }
            if op != 0 && live.is_empty() {
                continue;
            }
            match op {
                0 => {
                    let user = rng.below(a.users);
                    let status_true = rng.chance(50)
                        && m.unresolved_status_session(user).is_none()
                        && !m.sessions.iter().any(|s| {
                            s.user == user
                                && s.status_true
                                && s.session_id.is_none()
                                && s.closed_at.is_none()
                        });
                    let p = m.sessions.len();
                    ctx.net.set_conns(p + 1);
                    m.sessions.push(Sess {
                        user,
                        status_true,
                        conn_sent: now,
                        open_at: None,
                        closed_at: None,
                        server_closed: None,
                        events: Vec::new(),
                        cur: None,
                        session_id: None,
                        follows: HashMap::new(),
                        receipts: Vec::new(),
                        snaps: Vec::new(),
                        pending: HashMap::new(),
                    });
                    let src = ctx.source_for(p);
                    let node = if a.spread_sessions {
                        rng.below(nodes)
                    } else {
                        users.node(user, nodes)
                    };
                    if ctx
                        .net
                        .open(p, src, node, &users.ws_path(user, status_true)?)
                        .is_err()
                    {
                        m.sessions[p].closed_at = Some(now);
                    }
                    counts[0] += 1;
                }
                1 => {
                    let p = live[rng.below(live.len())];
                    ctx.net.close(p, true, false);
                    let s = &mut m.sessions[p];
                    s.closed_at = Some(now_ns());
                    if let Some(prev) = s.cur.take() {
                        s.events.push(Ev {
                            join: None,
                            leave: Some(prev),
                            sent: now_ns(),
                            acked: None,
                        });
                    }
                    counts[1] += 1;
                }
                2 => {
                    let p = live[rng.below(live.len())];
                    let k = 1 + rng.below(5);
                    let own = m.sessions[p].user;
                    let mut targets: Vec<usize> = (0..k)
                        .map(|_| rng.below(a.users))
                        .filter(|&u| u != own)
                        .collect();
                    targets.sort_unstable();
                    targets.dedup();
                    if targets.is_empty() {
                        continue;
                    }
                    let mut msg = String::from("{\"status_follow\":{\"user_ids\":[");
                    for (i, u) in targets.iter().enumerate() {
                        if i > 0 {
                            msg.push(',');
                        }
                        msg.push('"');
                        msg.push_str(&users.id(*u));
                        msg.push('"');
                    }
                    msg.push_str(&format!("]}},\"cid\":\"{cid}\"}}"));
                    let fs = now_ns();
                    let s = &mut m.sessions[p];
                    for &u in &targets {
                        if !s.following(u) {
                            s.follows.entry(u).or_default().push(Interval {
                                fs,
                                fr: None,
                                us: None,
                                ua: None,
                            });
                        }
                    }
                    s.pending.insert(cid, Pending::Follow(targets, fs));
                    ctx.net.send_text(p, msg.as_bytes());
                    counts[2] += 1;
                }
                3 => {
                    let p = live[rng.below(live.len())];
                    let s = &mut m.sessions[p];
                    let mut followed: Vec<usize> = s
                        .follows
                        .keys()
                        .copied()
                        .filter(|&u| s.following(u))
                        .collect();
                    followed.sort_unstable();
                    if followed.is_empty() {
                        continue;
                    }
                    let k = 1 + rng.below(3.min(followed.len()));
                    let mut targets = Vec::new();
                    for _ in 0..k {
                        let u = followed[rng.below(followed.len())];
                        if !targets.contains(&u) {
                            targets.push(u);
                        }
                    }
                    let us = now_ns();
                    let mut msg = String::from("{\"status_unfollow\":{\"user_ids\":[");
                    for (i, u) in targets.iter().enumerate() {
                        if i > 0 {
                            msg.push(',');
                        }
                        msg.push('"');
                        msg.push_str(&users.id(*u));
                        msg.push('"');
                        if let Some(iv) = s.follows.get_mut(u).and_then(|v| v.last_mut()) {
                            iv.us = Some(us);
                        }
                    }
                    msg.push_str(&format!("]}},\"cid\":\"{cid}\"}}"));
                    s.pending.insert(cid, Pending::Unfollow(targets));
                    ctx.net.send_text(p, msg.as_bytes());
                    counts[3] += 1;
                }
                _ => {
                    let p = live[rng.below(live.len())];
                    let offline = rng.chance(15);
                    let s = &mut m.sessions[p];
                    let sent = now_ns();
                    let (msg, ev) = if offline {
                        let ev = s.cur.take().map(|prev| Ev {
                            join: None,
                            leave: Some(prev),
                            sent,
                            acked: None,
                        });
                        (format!("{{\"status_update\":{{}},\"cid\":\"{cid}\"}}"), ev)
                    } else {
                        status_no += 1;
                        let st = format!("c{status_no}");
                        let ev = Ev {
                            join: Some(st.clone()),
                            leave: s.cur.replace(st.clone()),
                            sent,
                            acked: None,
                        };
                        m.status_of.insert(st.clone(), (p, s.events.len()));
                        (
                            format!(
                                "{{\"status_update\":{{\"status\":\"{st}\"}},\"cid\":\"{cid}\"}}"
                            ),
                            Some(ev),
                        )
                    };
                    let idx = ev.map(|e| {
                        s.events.push(e);
                        s.events.len() - 1
                    });
                    s.pending.insert(cid, Pending::Update(idx));
                    ctx.net.send_text(p, msg.as_bytes());
                    counts[4] += 1;
                }
            }
        }
        let next = start + ((ops + 1) as f64 / rate * 1e9) as u64;
        let wait = next.min(end).saturating_sub(now_ns()).min(10_000_000);
        ctx.pump(&mut m, Duration::from_nanos(wait))?;
        if ops.is_multiple_of(50) {
            ctx.progress("churn ops", ops, (duration * rate) as u64);
        }
    }
    // Drain: every reply in, then quiet for a while (bounded).
    let drain_end = now_ns() + (a.drain.clamp(0.0, 600.0) * 1e9) as u64;
    let open_sessions: Vec<usize> = (0..m.sessions.len())
        .filter(|&p| ctx.net.conns[p].state == State::Open)
        .collect();
    ctx.run_until(&mut m, drain_end, |_, m| {
        open_sessions
            .iter()
            .all(|&p| m.sessions[p].pending.is_empty() || m.sessions[p].closed_at.is_some())
    })?;
    let quiet_end = (now_ns() + grace.max(500_000_000)).min(drain_end.max(now_ns() + 500_000_000));
    ctx.run_until(&mut m, quiet_end, |_, _| false)?;
    let pending_left: usize = m
        .sessions
        .iter()
        .filter(|s| s.closed_at.is_none())
        .map(|s| s.pending.len())
        .sum();
    // The log's answer, and every follower's final view against it: once
    // they agree, or when `--settle` is up.
    let mut truth = Value::Null;
    if let Some(url) = &a.status_url {
        let server = crate::Common {
            url: url.clone(),
            ..a.common.clone()
        }
        .server_addr()?;
        let settle_end = now_ns() + (a.settle.clamp(0.0, 600.0) * 1e9) as u64;
        for round in 1..=10_000u64 {
            let (answer, compared) = match views::fetch_truth(server, &a.http_key, &users, a.users)
            {
                Ok(t) => {
                    let c = views::compare(&m, &views::build(&m), &t);
                    (Ok(()), c)
                }
                Err(e) => (Err(format!("{e:#}")), views::Compared::default()),
            };
            let agreed = answer.is_ok() && compared.view_mismatch + compared.truth_mismatch == 0;
            if agreed || now_ns() >= settle_end {
                truth = json!({
                    "error": answer.err(),
                    "rounds": round,
                    "views_checked": compared.views_checked,
                    "view_mismatch": compared.view_mismatch,
                    "truth_mismatch": compared.truth_mismatch,
                    "examples": compared.examples,
                });
                break;
            }
            let until = now_ns() + 300_000_000;
            ctx.run_until(&mut m, until, |_, _| false)?;
        }
    }
    let report = check(&m, grace, &views::build(&m));
    let net = ctx.net.stats;
    for p in 0..m.sessions.len() {
        ctx.net.close(p, true, false);
    }
    let mut out = json!({
        "users": a.users,
        "duration": duration,
        "ops": ops,
        "op_counts": {"connect": counts[0], "disconnect": counts[1], "follow": counts[2], "unfollow": counts[3], "update": counts[4]},
        "sessions": m.sessions.len(),
        "warmup_connected": warm.ok,
        "connect_failed": m.sessions.iter().filter(|s| s.open_at.is_none()).count(),
        "server_closed": m.sessions.iter().filter_map(|s| s.server_closed.clone()).collect::<Vec<_>>(),
        "replies_missing": pending_left,
        "unmatched_replies": m.unmatched_replies,
        "errors": m.errors,
        "error_first": m.error_first,
        "decode_errors": m.decode_errors,
        "decode_first": m.decode_first,
        "session_id_conflicts": m.session_conflicts,
        "ground_truth": truth,
        "net": net,
    });
    if let (Value::Object(o), Value::Object(r)) = (&mut out, report) {
        o.extend(r);
    }
    ctx.out.send("checked", out);
    let _ = ctx.next_cmd(&mut m, Duration::from_secs(60));
    Ok(())
}

/// The model check over everything recorded.
fn check(m: &Model, grace: u64, views: &views::Views) -> Value {
    let mut received = 0u64;
    let mut mandatory_total = 0u64;
    let mut coalesced_skipped = 0u64;
    let (mut missing, mut dup, mut ooo, mut unexpected, mut unresolved, mut shape) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut examples: Vec<String> = Vec::new();
    let note = |v: &mut Vec<String>, s: String| {
        if v.len() < 10 {
            v.push(s);
        }
    };
    for (ri, r) in m.sessions.iter().enumerate() {
        let Some(open_at) = r.open_at else { continue };
        let own = Interval {
            fs: r.conn_sent,
            fr: Some(open_at),
            us: None,
            ua: None,
        };
        let intervals = |x: usize| -> Vec<Interval> {
            let mut v = r.follows.get(&x).cloned().unwrap_or_default();
            if x == r.user {
                v.push(own);
            }
            v
        };
        let end_of = |i: &Interval| -> u64 {
            i.us.unwrap_or(u64::MAX)
                .min(r.closed_at.unwrap_or(u64::MAX))
        };
        let mandatory = |p: usize, k: usize, ev: &Ev| -> bool {
            if p == ri && k == 0 && r.status_true {
                return true; // own connect join (§6.1)
            }
            let x = m.sessions[p].user;
            intervals(x).iter().any(|i| {
                i.fr.is_some_and(|fr| ev.sent >= fr) && ev.sent.saturating_add(grace) <= end_of(i)
            })
        };
        let allowed = |p: usize, ev: &Ev| -> bool {
            let x = m.sessions[p].user;
            if p == ri {
                return true;
            }
            intervals(x).iter().any(|i| {
                let upper = if i.us.is_some() {
                    i.ua.or(r.closed_at).unwrap_or(u64::MAX)
                } else {
                    u64::MAX
                };
                ev.sent.saturating_add(grace) >= i.fs && ev.sent <= upper
            })
        };
        // Receipts, per subject, in arrival order.
        let mut got: HashMap<usize, Vec<usize>> = HashMap::new();
        for rc in &r.receipts {
            received += 1;
            let Some((p, k)) = m.resolve(rc) else {
                unresolved += 1;
                note(
                    &mut examples,
                    format!("session {ri}: unresolved event {rc:?}"),
                );
                continue;
            };
            let Some(ev) = m.sessions.get(p).and_then(|s| s.events.get(k)) else {
                unexpected += 1;
                note(
                    &mut examples,
                    format!("session {ri}: event {k} of session {p} never happened: {rc:?}"),
                );
                continue;
            };
            let coalesced = views.arrived_coalesced.contains(&(ri, p, k));
            if ev.join != rc.join
                || (ev.leave != rc.leave && !coalesced)
                || rc.user != Some(m.sessions[p].user)
            {
                shape += 1;
                note(&mut examples, format!("session {ri}: event {k} of {p} has the wrong shape: got {rc:?}, model {ev:?}"));
            }
            if !allowed(p, ev) {
                unexpected += 1;
                note(&mut examples, format!("session {ri}: unexpected event {k} of session {p} (user {}) at +{}ms: {ev:?}", m.sessions[p].user, rc.at.saturating_sub(ev.sent) / 1_000_000));
            }
            let list = got.entry(p).or_default();
            if let Some(&last) = list.last() {
                if k == last || list.contains(&k) {
                    dup += 1;
                    note(
                        &mut examples,
                        format!("session {ri}: duplicate event {k} of session {p}"),
                    );
                } else if k < last {
                    ooo += 1;
                    note(
                        &mut examples,
                        format!("session {ri}: event {k} of session {p} after {last}"),
                    );
                }
            }
            list.push(k);
        }
        // Mandatory events not received.
        for (p, s) in m.sessions.iter().enumerate() {
            if s.open_at.is_none() {
                continue;
            }
            if s.user != r.user && !r.follows.contains_key(&s.user) {
                continue;
            }
            for (k, ev) in s.events.iter().enumerate() {
                // A server-side close's leave has an approximate time: never mandatory.
                if s.server_closed.is_some() && k + 1 == s.events.len() && ev.join.is_none() {
                    continue;
                }
                if mandatory(p, k, ev) {
                    mandatory_total += 1;
                    if got.get(&p).is_some_and(|v| v.contains(&k)) {
                        continue;
                    }
                    if views.skipped.contains(&(ri, p, k)) {
                        coalesced_skipped += 1;
                    } else {
                        missing += 1;
                        let closed = r
                            .closed_at
                            .map(|c| {
                                format!(
                                    ", receiver closed +{} ms after it",
                                    c.saturating_sub(ev.sent) / 1_000_000
                                )
                            })
                            .unwrap_or_default();
                        note(&mut examples, format!("session {ri} (user {}): missing event {k} of session {p} (user {}){closed}: {ev:?}", r.user, s.user));
                    }
                }
            }
        }
    }
    // Snapshots.
    let (mut snaps, mut snap_stale, mut snap_missing, mut snap_unexpected) =
        (0u64, 0u64, 0u64, 0u64);
    let mut snap_lagging = 0u64;
    for (ri, r) in m.sessions.iter().enumerate() {
        for sn in &r.snaps {
            snaps += 1;
            let mut listed = Vec::new();
            for (u, sid, st) in &sn.presences {
                if !u.is_some_and(|u| sn.users.contains(&u)) {
                    snap_unexpected += 1;
                    note(
                        &mut examples,
                        format!("session {ri}: snapshot lists a user not asked for: {u:?} {sid}"),
                    );
                    continue;
                }
                let Some((p, k)) = m.resolve_listed(sid, st) else {
                    snap_stale += 1;
                    note(
                        &mut examples,
                        format!("session {ri}: snapshot status {st:?} of {sid} unknown"),
                    );
                    continue;
                };
                listed.push(p);
                let evs = &m.sessions[p].events;
                let set_ok = evs.get(k).is_some_and(|e| e.sent <= sn.fr);
                let still = evs
                    .get(k + 1)
                    .is_none_or(|e| e.sent.saturating_add(grace) >= sn.fs);
                if !set_ok || !still {
                    snap_stale += 1;
                    note(&mut examples, format!("session {ri}: snapshot shows {st:?} of session {p}, not current around the follow"));
                }
            }
            for &x in &sn.users {
                for (p, s) in m.sessions.iter().enumerate() {
                    if s.user != x || listed.contains(&p) || s.server_closed.is_some() {
                        continue;
                    }
                    // Settled: the last event acked before the follow was sent sets a status,
                    // nothing newer was sent before the snapshot came, and the session was open.
                    let Some(k) = s
                        .events
                        .iter()
                        .rposition(|e| e.acked.is_some_and(|a| a <= sn.fs))
                    else {
                        continue;
                    };
                    let settled = s.events[k].join.is_some()
                        && s.events.get(k + 1).is_none_or(|e| e.sent > sn.fr)
                        && s.closed_at.is_none_or(|c| c > sn.fr);
                    if !settled {
                        continue;
                    }
                    // A replica behind the log (cluster mode: the follower's
                    // node had not read the record yet) omits it, and the
                    // event follows: the view still converges.
                    let caught_up = r.receipts.iter().any(|rc| {
                        rc.ord > sn.ord && m.resolve(rc).is_some_and(|(q, j)| q == p && j >= k)
                    });
                    if caught_up {
                        snap_lagging += 1;
                    } else {
                        snap_missing += 1;
                        note(&mut examples, format!("session {ri}: snapshot omits session {p} (user {x}) with status {:?}", s.events[k].join));
                    }
                }
            }
        }
    }
    examples.extend(
        views
            .examples
            .iter()
            .take(10 - examples.len().min(10))
            .cloned(),
    );
    json!({
        "received_events": received,
        "mandatory_events": mandatory_total,
        "missing": missing,
        "gaps": views.gaps,
        "snapshot_behind": views.snapshot_behind,
        "coalesced_events": views.coalesced_events,
        "coalesced_skipped": coalesced_skipped,
        "duplicate": dup,
        "out_of_order": ooo,
        "unexpected": unexpected,
        "unresolved": unresolved,
        "wrong_shape": shape,
        "snapshots": snaps,
        "snapshot_stale": snap_stale,
        "snapshot_missing": snap_missing,
        "snapshot_lagging": snap_lagging,
        "snapshot_unexpected": snap_unexpected,
        "examples": examples,
    })
}

//! `fanout`: N followers of one leader (user 0, global connection 0). Each
//! round the leader sets its status to `"0:<round>:<ns>"`; a round ends when
//! every follower has that event. Per round: time from the send to the last
//! delivery, p50/p99 of per-follower latency, deliveries per second.

use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};

use super::{
    loadgen_delta, local_count, median, nats_per_change, phase_timeout, server_delta, sum,
    user_dir, Probe, Strict,
};
use crate::cluster::Cluster;
use crate::hist::{us, Hist, HistWire};
use crate::net::{CloseWhy, Handler};
use crate::scan::{classify, parse_stamp, presence_status, write_stamp, Kind, Stamp};
use crate::shard::Ctx;
use crate::sys::now_ns;
use crate::FanoutArgs;

pub fn coord(a: &FanoutArgs, cl: &mut Cluster, probe: &Probe) -> Result<Value> {
    let t = phase_timeout(&a.common);
    cl.collect("ready", t)?;
    let s0 = probe.raw();
    let t0 = std::time::Instant::now();
    cl.send("connect", Value::Null)?;
    let r = cl.collect("connected", t)?;
    let connect_secs = t0.elapsed().as_secs_f64();
    let connected = sum(&r, "ok");
    let failed = sum(&r, "failed");
    let first_error = r
        .iter()
        .find_map(|x| x.data.get("first_error").filter(|v| !v.is_null()).cloned());
    let t1 = std::time::Instant::now();
    cl.send("follow", Value::Null)?;
    let f = cl.collect("followed", t + Duration::from_secs(10))?;
    let follow_secs = t1.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    let s1 = probe.raw();
    let cpu0 = cl.cpu_ns();
    let mut rounds = Vec::new();
    let mut to_last = Vec::new();
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    let mut rates = Vec::new();
    let mut all = Hist::new();
    let mut delivered = 0u64;
    let mut missing = 0u64;
    for k in 1..=a.rounds {
        cl.send("round", json!({"k": k}))?;
        let rs = cl.collect("round", t)?;
        let mut h = Hist::new();
        for x in &rs {
            h.merge_report(&x.data);
        }
        let got = sum(&rs, "got");
        let expected = sum(&rs, "expected");
        delivered += got;
        missing += expected.saturating_sub(got);
        let last_ms = h.max as f64 / 1e6;
        let rate = if h.max > 0 {
            got as f64 / (h.max as f64 / 1e9)
        } else {
            0.0
        };
        eprintln!(
            "round {k}: {got}/{expected} delivered, last after {last_ms:.2} ms, p50 {:.2} ms, p99 {:.2} ms, {rate:.0}/s",
            h.quantile(0.5) as f64 / 1e6,
            h.quantile(0.99) as f64 / 1e6
        );
        to_last.push(last_ms);
        p50s.push(h.quantile(0.5) as f64 / 1e6);
        p99s.push(h.quantile(0.99) as f64 / 1e6);
        rates.push(rate);
        rounds.push(json!({"k": k, "got": got, "expected": expected, "last_ms": last_ms,
            "p50_ms": h.quantile(0.5) as f64 / 1e6, "p99_ms": h.quantile(0.99) as f64 / 1e6, "per_sec": rate}));
        all.merge(&h);
        std::thread::sleep(Duration::from_millis(a.pause_ms.min(60_000)));
    }
    let s2 = probe.raw();
    let cpu1 = cl.cpu_ns();
    cl.send("close", Value::Null)?;
    let c = cl.collect("closed", t)?;
    let events = sum(&c, "events");
    let frames = sum(&c, "frames_in_rounds");
    Ok(json!({
        "followers": a.followers,
        "rounds": a.rounds,
        "connected": connected,
        "connect_failed": failed,
        "first_error": first_error,
        "connect_per_sec": connected as f64 / connect_secs.max(1e-9),
        "follow_secs": follow_secs,
        "follow_errors": sum(&f, "errors"),
        "median_last_delivery_ms": median(&mut to_last),
        "median_p50_ms": median(&mut p50s),
        "median_p99_ms": median(&mut p99s),
        "median_deliveries_per_sec": median(&mut rates),
        "delivered": delivered,
        "missing": missing,
        "duplicate": sum(&c, "dup"),
        "out_of_order": sum(&c, "ooo"),
        "other_events": sum(&c, "other"),
        "errors": sum(&c, "errors"),
        "server_closes": sum(&c, "server_closes"),
        "dropped": sum(&c, "dropped"),
        "strict_errors": sum(&c, "strict_errors"),
        "latency_all_rounds": all.summary_us(),
        "per_round": rounds,
        "server_connect": server_delta(&s0, &s1, connected, "conn"),
        "server_rounds": server_delta(&s1, &s2, delivered, "delivery"),
        "nats_rounds": nats_per_change(&s1, &s2, a.rounds as u64),
        "loadgen_rounds": loadgen_delta(cpu1 - cpu0, events, frames),
    }))
}

struct H {
    leader: Option<usize>,
    last: Vec<u32>,
    got: Vec<u32>,
    hist: Vec<Hist>,
    dup: u64,
    ooo: u64,
    other: u64,
    errors: u64,
    replies: u64,
    self_events: u64,
    events: u64,
    strict: Strict,
}

impl Handler for H {
    #[inline]
    fn on_text(&mut self, conn: usize, payload: &[u8], now: u64) {
        self.strict.check(payload);
        match classify(payload) {
            Kind::Event => {
                self.events += 1;
                let Some(st) = presence_status(payload, false).and_then(parse_stamp) else {
                    self.other += 1;
                    return;
                };
                if st.user != 0 {
                    self.other += 1;
                    return;
                }
                if Some(conn) == self.leader {
                    self.self_events += 1;
                    return;
                }
                let last = &mut self.last[conn];
                if st.seq <= *last {
                    if st.seq == *last {
                        self.dup += 1;
                    } else {
                        self.ooo += 1;
                    }
                    return;
                }
                *last = st.seq;
                let k = st.seq as usize;
                if k < self.got.len() {
                    self.got[k] += 1;
                    self.hist[k].record(now.saturating_sub(st.sent_ns));
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
    fn on_close(&mut self, _conn: usize, _why: &CloseWhy, _now: u64) {}
}

pub fn shard(a: &FanoutArgs, mut ctx: Ctx, users_file: Option<String>) -> Result<()> {
    let t = phase_timeout(&a.common);
    let total = a.followers + 1;
    let n = local_count(total, ctx.shard, ctx.shards);
    let users = user_dir(&a.common, total, &users_file)?;
    ctx.net.set_conns(n);
    let leader = if ctx.shard == 0 && n > 0 {
        Some(0usize)
    } else {
        None
    };
    let nodes = ctx.net.nodes();
    let mut list = Vec::with_capacity(n);
    for j in 0..n {
        let user = ctx.shard + j * ctx.shards;
        list.push((j, users.node(user, nodes), users.ws_path(user, user == 0)?));
    }
    let follow_msg = format!(
        "{{\"status_follow\":{{\"user_ids\":[\"{}\"]}},\"cid\":\"1\"}}",
        users.id(0)
    );
    drop(users);
    let rounds = a.rounds as usize;
    let mut h = H {
        leader,
        last: vec![0; n],
        got: vec![0; rounds + 1],
        hist: (0..=rounds).map(|_| Hist::new()).collect(),
        dup: 0,
        ooo: 0,
        other: 0,
        errors: 0,
        replies: 0,
        self_events: 0,
        events: 0,
        strict: Strict::new(a.common.strict),
    };
    let mut frames_at_rounds = 0u64;
    let mut frames_in_rounds = 0u64;
    let mut events_at_rounds = 0u64;
    let mut scratch = Vec::with_capacity(128);
    ctx.out.send("ready", Value::Null);
    loop {
        let cmd = ctx.next_cmd(&mut h, Duration::from_secs(86_400 * 7))?;
        match cmd.cmd.as_str() {
            "connect" => {
                let r = ctx.connect_all(&mut h, &list, &a.common)?;
                ctx.out.send("connected", serde_json::to_value(&r)?);
            }
            "follow" => {
                let r0 = h.replies;
                let mut sent = 0u64;
                for j in 0..n {
                    if Some(j) != leader && ctx.net.send_text(j, follow_msg.as_bytes()) {
                        sent += 1;
                    }
                }
                let deadline = now_ns() + t.as_nanos() as u64;
                ctx.run_until(&mut h, deadline, |_, h| h.replies - r0 >= sent)?;
                ctx.out.send(
                    "followed",
                    json!({"sent": sent, "replies": h.replies - r0, "errors": h.errors}),
                );
                frames_at_rounds = ctx.net.stats.text_in;
                events_at_rounds = h.events;
            }
            "round" => {
                let k = cmd.data.get("k").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
                if let (Some(l), true) = (leader, k >= 1) {
                    scratch.clear();
                    scratch.extend_from_slice(b"{\"status_update\":{\"status\":\"");
                    write_stamp(
                        &mut scratch,
                        Stamp {
                            user: 0,
                            seq: k as u32,
                            sent_ns: now_ns(),
                        },
                    );
                    scratch.extend_from_slice(b"\"}}");
                    ctx.net.send_text(l, &scratch);
                }
                let deadline = now_ns() + (a.round_timeout.clamp(0.1, 3600.0) * 1e9) as u64;
                // Followers whose connection is open (a failed connect is reported, not waited for).
                let expected = (0..n)
                    .filter(|&j| {
                        Some(j) != leader && ctx.net.conns[j].state == crate::net::State::Open
                    })
                    .count() as u32;
                ctx.run_until(&mut h, deadline, |_, h| {
                    k >= h.got.len() || h.got[k] >= expected
                })?;
                let (got, wire) = if k < h.got.len() {
                    (h.got[k], h.hist[k].to_wire())
                } else {
                    (0, HistWire::default())
                };
                frames_in_rounds = ctx.net.stats.text_in - frames_at_rounds;
                ctx.out.send(
                    "round",
                    json!({"k": k, "got": got, "expected": expected, "max_us": us(wire.max), "hist": wire}),
                );
            }
            "close" => {
                for j in 0..n {
                    ctx.net.close(j, false, true);
                }
                let st = ctx.net.stats;
                ctx.out.send(
                    "closed",
                    json!({"dup": h.dup, "ooo": h.ooo, "other": h.other, "errors": h.errors,
                        "self_events": h.self_events, "events": h.events - events_at_rounds,
                        "frames_in_rounds": frames_in_rounds,
                        "server_closes": st.server_closes, "dropped": st.dropped,
                        "strict_errors": h.strict.errors, "strict_first": h.strict.first, "net": st}),
                );
            }
            "exit" => return Ok(()),
            _ => {}
        }
    }
}

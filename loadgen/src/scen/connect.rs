//! `connect`: N idle connections, one user each. Connect rate, and server
//! RSS growth per connection once everything is connected and settled.

use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};

use super::{
    loadgen_delta, local_count, phase_timeout, server_delta, sum, user_dir, Probe, Strict,
};
use crate::cluster::Cluster;
use crate::net::{CloseWhy, Handler};
use crate::scan::{classify, Kind};
use crate::shard::Ctx;
use crate::users::minted_user_id;
use crate::ConnectArgs;

pub fn coord(a: &ConnectArgs, cl: &mut Cluster, probe: &Probe) -> Result<Value> {
    let t = phase_timeout(&a.common);
    cl.collect("ready", t)?;
    let s0 = probe.raw();
    let cpu0 = cl.cpu_ns();
    let t0 = std::time::Instant::now();
    cl.send("connect", Value::Null)?;
    let r = cl.collect("connected", t)?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = cl.cpu_ns();
    let ok = sum(&r, "ok");
    let failed = sum(&r, "failed");
    let first_error = r
        .iter()
        .find_map(|x| x.data.get("first_error").filter(|v| !v.is_null()).cloned());
    std::thread::sleep(Duration::from_secs_f64(a.settle.clamp(0.0, 3600.0)));
    let s1 = probe.raw();
    let mut follow = Value::Null;
    if a.follows > 0 {
        let t1 = std::time::Instant::now();
        cl.send("follow", Value::Null)?;
        let f = cl.collect("followed", t + Duration::from_secs(10))?;
        let secs = t1.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs_f64(a.settle.clamp(0.0, 3600.0)));
        let s2 = probe.raw();
        let ids = sum(&f, "ids");
        follow = json!({
            "requests": sum(&f, "sent"),
            "replies": sum(&f, "replies"),
            "errors": sum(&f, "errors"),
            "ids": ids,
            "secs": secs,
            "ids_per_sec": ids as f64 / secs.max(1e-9),
            "snapshot_presences": sum(&f, "presences"),
            "server": server_delta(&s1, &s2, ids, "follow"),
        });
    }
    if a.hold > 0.0 {
        eprintln!("holding {ok} connections for {}s", a.hold);
        std::thread::sleep(Duration::from_secs_f64(a.hold.min(86_400.0)));
    }
    cl.send("close", Value::Null)?;
    let closed = cl.collect("closed", t)?;
    std::thread::sleep(Duration::from_secs(1));
    let s2 = probe.raw();
    Ok(json!({
        "conns": a.conns,
        "status": a.status,
        "connected": ok,
        "failed": failed,
        "first_error": first_error,
        "connect_secs": secs,
        "connect_per_sec": ok as f64 / secs.max(1e-9),
        "server_closed_during_hold": sum(&closed, "server_closes") + sum(&closed, "dropped"),
        "events_received": sum(&closed, "events"),
        "strict_errors": sum(&closed, "strict_errors"),
        "server_connect": server_delta(&s0, &s1, ok, "conn"),
        "follow": follow,
        "server_after_close": server_delta(&s0, &s2, 0, "conn"),
        "loadgen_connect": loadgen_delta(cpu1 - cpu0, ok, ok),
    }))
}

struct H {
    events: u64,
    replies: u64,
    errors: u64,
    /// Presences listed by follow snapshots.
    presences: u64,
    strict: Strict,
}

impl Handler for H {
    fn on_text(&mut self, _conn: usize, payload: &[u8], _now: u64) {
        self.strict.check(payload);
        match classify(payload) {
            Kind::Event => self.events += 1,
            Kind::Reply {
                snapshot, error, ..
            } => {
                self.replies += 1;
                self.errors += error as u64;
                if snapshot {
                    self.presences += serde_json::from_slice::<Value>(payload)
                        .ok()
                        .and_then(|v| v["status"]["presences"].as_array().map(Vec::len))
                        .unwrap_or(0) as u64;
                }
            }
            Kind::Other => self.replies += 1,
        }
    }
    fn on_close(&mut self, _conn: usize, _why: &CloseWhy, _now: u64) {}
}

pub fn shard(a: &ConnectArgs, mut ctx: Ctx, users_file: Option<String>) -> Result<()> {
    let t = phase_timeout(&a.common);
    let n = local_count(a.conns, ctx.shard, ctx.shards);
    let per_user = a.sessions_per_user.max(1);
    let users = user_dir(&a.common, a.conns.div_ceil(per_user), &users_file)?;
    ctx.net.set_conns(n);
    let nodes = ctx.net.nodes();
    let mut list = Vec::with_capacity(n);
    for j in 0..n {
        let user = (ctx.shard + j * ctx.shards) / per_user;
        list.push((j, users.node(user, nodes), users.ws_path(user, a.status)?));
    }
    drop(users);
    let mut h = H {
        events: 0,
        replies: 0,
        errors: 0,
        presences: 0,
        strict: Strict::new(a.common.strict),
    };
    // Follow requests (of at most 100 ids) per local connection.
    let mut follows: Vec<Vec<String>> = Vec::new();
    if a.follows > 0 {
        let seed = a.follow_seed.unwrap_or(a.common.seed);
        let m = a.follow_users.unwrap_or(a.conns).max(1);
        let mut cid = 0u64;
        for j in 0..n {
            let c = ctx.shard + j * ctx.shards;
            let ids: Vec<String> = (0..a.follows)
                .map(|k| minted_user_id(seed, (c * a.follows + k) % m))
                .collect();
            follows.push(
                ids.chunks(100)
                    .map(|chunk| {
                        cid += 1;
                        format!(
                            "{{\"status_follow\":{{\"user_ids\":[\"{}\"]}},\"cid\":\"{cid}\"}}",
                            chunk.join("\",\"")
                        )
                    })
                    .collect(),
            );
        }
    }
    ctx.out.send("ready", Value::Null);
    loop {
        let cmd = ctx.next_cmd(&mut h, Duration::from_secs(86_400 * 7))?;
        match cmd.cmd.as_str() {
            "connect" => {
                let r = ctx.connect_all(&mut h, &list, &a.common)?;
                ctx.out.send("connected", serde_json::to_value(&r)?);
            }
            "follow" => {
                let (r0, e0, p0) = (h.replies, h.errors, h.presences);
                let (mut sent, mut ids) = (0u64, 0u64);
                let start = crate::sys::now_ns();
                let deadline = start + t.as_nanos() as u64;
                // This shard's share of --follow-rate (requests per second).
                let rate = a.follow_rate.max(0.0) / ctx.shards.max(1) as f64;
                let mut issued = 0u64;
                for (j, reqs) in follows.iter().enumerate() {
                    for m in reqs {
                        while rate > 0.0
                            && (crate::sys::now_ns() - start) as f64 / 1e9 * rate < issued as f64
                            && crate::sys::now_ns() < deadline
                        {
                            ctx.pump(&mut h, Duration::from_millis(1))?;
                        }
                        issued += 1;
                        if ctx.net.send_text(j, m.as_bytes()) {
                            sent += 1;
                        }
                    }
                    if ctx.net.conns[j].state == crate::net::State::Open {
                        ids += a.follows as u64;
                    }
                    if j % 256 == 255 {
                        ctx.pump(&mut h, Duration::ZERO)?;
                    }
                }
                ctx.run_until(&mut h, deadline, |_, h| h.replies - r0 >= sent)?;
                ctx.out.send(
                    "followed",
                    json!({"sent": sent, "ids": ids, "replies": h.replies - r0,
                           "errors": h.errors - e0, "presences": h.presences - p0}),
                );
            }
            "close" => {
                let open = ctx.net.open as u64;
                for j in 0..n {
                    ctx.net.close(j, false, true);
                }
                let st = ctx.net.stats;
                ctx.out.send(
                    "closed",
                    json!({"open_at_close": open, "server_closes": st.server_closes, "dropped": st.dropped,
                           "events": h.events, "replies": h.replies, "pings": st.pings,
                           "strict_errors": h.strict.errors, "strict_first": h.strict.first}),
                );
            }
            "exit" => return Ok(()),
            _ => {}
        }
    }
}

//! Million-session engine runs on the real shard threads, without sockets.
//!
//! * `fanout`: N sessions (default 1,000,000, spread over the shards by user
//!   hash) follow one user; each round times one status change from the
//!   moment it is handed to the owner shard until every follower's outbox
//!   holds the frame and its writer has been woken. Median of the rounds.
//! * `memory`: N sessions each following F users (default 50); reports the
//!   process RSS before and after, and per session.
//!
//! `cargo bench --bench engine_scale -- [fanout|memory] [--sessions N]
//! [--follows F] [--rounds R] [--shards S]`. Prints one JSON line per result.

mod support;

use std::sync::Arc;
use std::task::Waker;
use std::time::{Duration, Instant};

use herald::engine::{Engine, EngineConfig, EngineHandle, Outbox, ShardStart};
use herald::ids::UserId;
use herald::protocol::Format;
use support::{drain, follow, spec, update, user, WakeCounter};

struct Options {
    scenario: String,
    sessions: usize,
    follows: usize,
    rounds: usize,
    shards: usize,
}

fn options() -> Options {
    let mut options = Options {
        scenario: "all".into(),
        sessions: 1_000_000,
        follows: 50,
        rounds: 10,
        shards: std::thread::available_parallelism().map_or(2, |n| n.get()),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1).and_then(|v| v.parse::<usize>().ok());
        match (args[i].as_str(), value) {
            ("--sessions", Some(v)) => options.sessions = v,
            ("--follows", Some(v)) => options.follows = v,
            ("--rounds", Some(v)) => options.rounds = v.max(1),
            ("--shards", Some(v)) => options.shards = v.max(1),
            ("fanout" | "memory" | "all", _) => {
                options.scenario = args[i].clone();
                i += 1;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    options
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// CPU time (ns) of the engine's shard threads so far, from their schedstat:
/// beside the wall time, it shows the work when the machine is busy.
fn shard_cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .flatten()
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.starts_with("herald-shard"))
        })
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            stat.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum()
}

/// Starts the engine with `users` known users (0..users).
fn start(shards: usize, users: usize) -> Engine {
    let directory: Vec<(UserId, Option<Arc<str>>)> =
        (0..users as u64).map(|i| (user(i), None)).collect();
    let config = EngineConfig {
        shards,
        // No keepalive pings during a run: a ping would take the waker a
        // round registered, and its sweep would compete with the rounds.
        ping_period_sec: 3600,
        pong_wait_sec: 7200,
        ..EngineConfig::default()
    };
    let on_start: ShardStart = Arc::new(|_| {});
    match Engine::start(config, Arc::new(directory), None, on_start) {
        Ok(engine) => engine,
        Err(error) => panic!("cannot start the engine: {error}"),
    }
}

/// Connects sessions for users `1..=n` on their home shards; each runs
/// `request_for(i)` once connected. Works in batches of 1,000 sessions per
/// shard and waits for each round of batches, so messages between shards
/// never pile up (a burst of queued requests would inflate the RSS figures).
/// Returns the outboxes.
fn connect_sessions(
    engine: &EngineHandle,
    n: usize,
    request_for: impl Fn(u64) -> Option<herald::protocol::Request> + Send + Sync + 'static,
) -> Vec<Arc<Outbox>> {
    const BATCH: usize = 1_000;
    let shards = engine.router().shards();
    let mut per_shard: Vec<Vec<(UserId, u64)>> = vec![Vec::new(); shards];
    for i in 1..=n as u64 {
        let u = user(i);
        per_shard[engine.router().shard_of_user(u)].push((u, i));
    }
    let request_for = Arc::new(request_for);
    let mut outboxes = Vec::with_capacity(n);
    let rounds = per_shard
        .iter()
        .map(|users| users.len().div_ceil(BATCH))
        .max()
        .unwrap_or(0);
    for round in 0..rounds {
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for (shard, users) in per_shard.iter().enumerate() {
            let batch: Vec<(UserId, u64)> = users
                .iter()
                .skip(round * BATCH)
                .take(BATCH)
                .copied()
                .collect();
            let (done_tx, request_for) = (done_tx.clone(), request_for.clone());
            engine.run_on(shard, move |ctx| {
                let mut made = Vec::with_capacity(batch.len());
                for (u, i) in batch {
                    let (session, outbox) = spec(u, Format::Json);
                    let (key, _) = ctx.shard.borrow_mut().connect(session);
                    if let Some(request) = request_for(i) {
                        ctx.shard.borrow_mut().dispatch(key, request);
                    }
                    made.push(outbox);
                }
                let _ = done_tx.send(made);
            });
        }
        drop(done_tx);
        outboxes.extend(done_rx.iter().flatten());
        wait_until("inboxes to drain", Duration::from_secs(60), || {
            engine.inbox_depths().iter().all(|d| *d == 0)
        });
    }
    outboxes
}

/// Waits (bounded) until `done()` holds.
fn wait_until(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_micros(200));
    }
}

fn fanout(options: &Options) {
    let engine = start(options.shards, options.sessions + 1);
    let handle = engine.handle().clone();
    let leader = user(0);
    let followers = connect_sessions(&handle, options.sessions, move |_| Some(follow(&[leader])));
    wait_until("follows", Duration::from_secs(600), || {
        handle.stats().follow_edges >= options.sessions as i64
    });
    let (leader_spec, leader_outbox) = spec(leader, Format::Json);
    let owner = handle.router().shard_of_user(leader);
    let (tx, rx) = std::sync::mpsc::channel();
    handle.run_on(owner, move |ctx| {
        let _ = tx.send(ctx.shard.borrow_mut().connect(leader_spec).0);
    });
    let leader_key = rx.recv().expect("leader connected");

    // One waker per follower, as each connection has its own writer task:
    // a wake touches that follower's own memory, not one shared counter.
    let wakes: Vec<Arc<WakeCounter>> = (0..followers.len())
        .map(|_| Arc::new(WakeCounter::default()))
        .collect();
    let wakers: Vec<Waker> = wakes.iter().map(|w| Waker::from(w.clone())).collect();
    let leader_waker = Waker::from(Arc::new(WakeCounter::default()));
    let count_wakes = || -> u64 {
        wakes
            .iter()
            .map(|w| w.0.load(std::sync::atomic::Ordering::Relaxed))
            .sum()
    };
    let mut times = Vec::new();
    let mut cpu_times = Vec::new();
    for round in 0..options.rounds {
        for (outbox, waker) in followers.iter().zip(&wakers) {
            drain(outbox, waker);
        }
        drain(&leader_outbox, &leader_waker);
        let wakes_before = count_wakes();
        let target = handle.stats().deliveries + options.sessions as u64;
        let cpu_before = shard_cpu_ns();
        let started = Instant::now();
        handle.run_on(owner, move |ctx| {
            ctx.shard
                .borrow_mut()
                .dispatch(leader_key, update(&format!("round {round}")));
        });
        wait_until("deliveries", Duration::from_secs(60), || {
            handle.stats().deliveries >= target
        });
        let elapsed = started.elapsed();
        cpu_times.push((shard_cpu_ns() - cpu_before) as f64 / 1e6);
        let woken = count_wakes() - wakes_before;
        assert!(
            woken >= options.sessions as u64,
            "every follower's writer was woken ({woken})"
        );
        times.push(elapsed.as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    cpu_times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{{\"bench\":\"engine_scale/fanout\",\"sessions\":{},\"shards\":{},\"rounds\":{},\"median_ms\":{:.2},\"min_ms\":{:.2},\"max_ms\":{:.2},\"median_shard_cpu_ms\":{:.2}}}",
        options.sessions,
        options.shards,
        options.rounds,
        median,
        times[0],
        times[times.len() - 1],
        cpu_times[cpu_times.len() / 2]
    );
    handle.begin_shutdown();
    engine.join();
}

fn memory(options: &Options) {
    let users = options.sessions + 1;
    let rss_start = rss_bytes();
    let engine = start(options.shards, users);
    let handle = engine.handle().clone();
    wait_until("directory", Duration::from_secs(60), || {
        rss_bytes() > rss_start
    });
    std::thread::sleep(Duration::from_millis(500));
    let rss_before = rss_bytes();
    let follows = options.follows;
    let started = Instant::now();
    let outboxes = connect_sessions(&handle, options.sessions, move |i| {
        // F distinct pseudo-random users other than the session's own.
        let mut state = i.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1;
        let mut picked = Vec::with_capacity(follows);
        while picked.len() < follows {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let target = state % users as u64;
            if target != i && !picked.contains(&user(target)) {
                picked.push(user(target));
            }
        }
        Some(follow(&picked))
    });
    let expected = (options.sessions * follows) as i64;
    wait_until("follows", Duration::from_secs(1200), || {
        handle.stats().follow_edges >= expected
    });
    let setup_secs = started.elapsed().as_secs_f64();
    let waker = Waker::from(Arc::new(WakeCounter::default()));
    for outbox in &outboxes {
        drain(outbox, &waker);
    }
    std::thread::sleep(Duration::from_secs(1));
    let rss_after = rss_bytes();
    let per_session = (rss_after.saturating_sub(rss_before)) as f64 / options.sessions as f64;
    println!(
        "{{\"bench\":\"engine_scale/memory\",\"sessions\":{},\"follows_each\":{},\"shards\":{},\"rss_before_mb\":{:.1},\"rss_after_mb\":{:.1},\"bytes_per_session\":{:.0},\"setup_s\":{:.1}}}",
        options.sessions,
        follows,
        options.shards,
        rss_before as f64 / 1e6,
        rss_after as f64 / 1e6,
        per_session,
        setup_secs
    );
    drop(outboxes);
    handle.begin_shutdown();
    engine.join();
}

fn main() {
    let options = options();
    if matches!(options.scenario.as_str(), "fanout" | "all") {
        fanout(&options);
    }
    if matches!(options.scenario.as_str(), "memory" | "all") {
        memory(&options);
    }
}

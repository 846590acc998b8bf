//! Engine benches on one standalone shard (no threads, no sockets):
//! fan-out of one change, follow/unfollow throughput, snapshots.
//!
//! `HERALD_BENCH_QUICK=1` skips the million-session case (CI's regression
//! check uses it); `cargo bench --bench engine` runs everything.

mod support;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use herald::engine::{EngineConfig, EngineHandle, Shard};
use herald::ids::UserId;
use herald::protocol::{Format, RequestBody};
use support::{drain, follow, request, spec, update, user, FanoutShard, WakeCounter};

fn quick() -> bool {
    std::env::var_os("HERALD_BENCH_QUICK").is_some()
}

/// One status change to N followers on one shard: encode once, then one
/// outbox push and one writer wake per follower.
fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout/shard");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500));
    let sizes: &[usize] = if quick() {
        &[1_000, 100_000]
    } else {
        &[1_000, 100_000, 1_000_000]
    };
    for &followers in sizes {
        let mut bench = FanoutShard::new(followers, |_| Format::Json);
        group.throughput(Throughput::Elements(followers as u64));
        group.bench_function(BenchmarkId::from_parameter(followers), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for i in 0..iters {
                    let started = Instant::now();
                    bench.shard.dispatch(
                        bench.leader,
                        update(if i % 2 == 0 { "in lobby" } else { "in match" }),
                    );
                    total += started.elapsed();
                    let frames = bench.drain_all();
                    assert!(frames > followers, "every follower got the event");
                }
                total
            })
        });
    }
    group.finish();
}

/// Fan-out to a mixed audience: half JSON, half protobuf. Each format is
/// encoded once per change, whatever the number of followers.
fn fanout_mixed_formats(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout/mixed-formats");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500));
    let followers = 100_000;
    let mut bench = FanoutShard::new(followers, |i| {
        if i % 2 == 0 {
            Format::Json
        } else {
            Format::Protobuf
        }
    });
    group.throughput(Throughput::Elements(followers as u64));
    group.bench_function(BenchmarkId::from_parameter(followers), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let before =
                    [Format::Json, Format::Protobuf].map(herald::engine::event::encode_count);
                let started = Instant::now();
                bench.shard.dispatch(bench.leader, update("mixed"));
                total += started.elapsed();
                let after =
                    [Format::Json, Format::Protobuf].map(herald::engine::event::encode_count);
                assert_eq!(
                    [after[0] - before[0], after[1] - before[1]],
                    [1, 1],
                    "one encode per format"
                );
                bench.drain_all();
            }
            total
        })
    });
    group.finish();
}

/// A shard with `users` known users and one follower session.
fn follower_shard(
    users: u64,
) -> (
    Shard,
    herald::engine::SessionKey,
    Vec<UserId>,
    std::task::Waker,
) {
    let config = EngineConfig {
        shards: 1,
        pin_threads: false,
        ..EngineConfig::default()
    };
    let handle = EngineHandle::standalone(config);
    let mut shard = Shard::new(0, handle.clone(), handle.shard_stats(0));
    let ids: Vec<UserId> = (1..=users).map(user).collect();
    for id in &ids {
        shard.register_id(*id);
    }
    let (follower, _outbox) = spec(user(0), Format::Json);
    let (key, _) = shard.connect(follower);
    let waker = std::task::Waker::from(std::sync::Arc::new(WakeCounter::default()));
    (shard, key, ids, waker)
}

/// `status_follow` of 100 ids then `status_unfollow` of the same 100.
fn follow_unfollow(c: &mut Criterion) {
    let mut group = c.benchmark_group("follow");
    group.sample_size(20);
    let (mut shard, key, ids, _waker) = follower_shard(100_000);
    let batches: Vec<(herald::protocol::Request, herald::protocol::Request)> = ids
        .chunks(100)
        .map(|chunk| {
            let unfollow = request(RequestBody::StatusUnfollow {
                user_ids: chunk.iter().map(UserId::to_string).collect(),
            });
            (follow(chunk), unfollow)
        })
        .collect();
    group.throughput(Throughput::Elements(100));
    let mut next = 0;
    group.bench_function("follow+unfollow/100-ids", |b| {
        b.iter(|| {
            let (f, u) = &batches[next % batches.len()];
            next += 1;
            shard.dispatch(key, f.clone());
            shard.dispatch(key, u.clone())
        })
    });
    group.finish();
}

/// `status_follow` of 100 users who are all online: the snapshot reply with
/// 100 presences, encoded.
fn snapshot(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot");
    group.sample_size(20);
    let (mut shard, key, _ids, waker) = follower_shard(0);
    let mut online = Vec::new();
    for i in 1..=100 {
        let (member, _) = spec(user(1_000 + i), Format::Json);
        let (session, _) = shard.connect(member);
        shard.dispatch(session, update("in lobby with a longer status text"));
        online.push(user(1_000 + i));
    }
    let follow_all = follow(&online);
    let unfollow_all = request(RequestBody::StatusUnfollow {
        user_ids: online.iter().map(UserId::to_string).collect(),
    });
    let (probe, outbox) = spec(user(5), Format::Json);
    let (probe_key, _) = shard.connect(probe);
    let _ = key;
    group.throughput(Throughput::Elements(100));
    group.bench_function("follow-100-online", |b| {
        b.iter(|| {
            shard.dispatch(probe_key, follow_all.clone());
            shard.dispatch(probe_key, unfollow_all.clone());
            drain(&outbox, &waker)
        })
    });
    group.finish();
}

criterion_group!(
    benches,
    fanout,
    fanout_mixed_formats,
    follow_unfollow,
    snapshot
);
criterion_main!(benches);

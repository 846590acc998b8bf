//! The `herald` binary as a process (issue 5): memory returns to its
//! baseline after many connect/follow/close cycles, acknowledged accounts
//! survive `kill -9` in the middle of an authenticate storm, and a second
//! signal during shutdown exits at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_and_gauges_return_to_baseline_after_connect_follow_close_cycles() {
    const USERS: usize = 300;
    const FOLLOWS: usize = 20;
    const CYCLES: usize = 8;
    let herald = HeraldProcess::start(&["--shards", "2"]);
    let tokens = default_tokens();
    // The same users every cycle: what they leave behind (their ids are
    // known once seen in a token) is not a leak; anything else is.
    let users: Vec<User> = (0..USERS)
        .map(|i| mint_user(&tokens, uuid::Uuid::new_v4(), &format!("c{i}")))
        .collect();

    let cycle = |n: usize| {
        let users = users.clone();
        let addr = herald.addr;
        async move {
            let mut sessions = Vec::with_capacity(USERS);
            for user in &users {
                sessions.push(connect(addr, user, true).await);
            }
            for (i, session) in sessions.iter_mut().enumerate() {
                let ids: Vec<&str> = (1..=FOLLOWS)
                    .map(|k| users[(i + k) % USERS].id.as_str())
                    .collect();
                session
                    .send_json(json!({"status_follow": {"user_ids": ids}, "cid": "f"}))
                    .await;
                // Events of other sessions may come first; the reply has the cid.
                session
                    .next_matching("the follow reply", |v| v["cid"] == "f")
                    .await;
                session
                    .send_json(
                        json!({"status_update": {"status": format!("cycle {n}")}, "cid": "u"}),
                    )
                    .await;
            }
            for session in &mut sessions {
                session
                    .next_matching("the update ack", |v| v["cid"] == "u")
                    .await;
            }
            for (i, mut session) in sessions.into_iter().enumerate() {
                if i % 2 == 0 {
                    session.close(1000).await;
                }
            }
        }
    };
    let admin = herald.admin;
    let settle = move || async move {
        scrape_until(admin, "every session gone", |text| {
            metric(text, "herald_sessions") == 0.0
                && metric(text, "herald_follow_edges") == 0.0
                && metric(text, "herald_users_online") == 0.0
        })
        .await;
    };
    // Warm-up: allocator pools, tables and buffers reach their working size.
    cycle(0).await;
    settle().await;
    cycle(1).await;
    settle().await;
    let baseline = herald.rss_kib();
    for n in 2..2 + CYCLES {
        cycle(n).await;
        settle().await;
    }
    let after = herald.rss_kib();
    // Each cycle moves about 300 sessions and 6,000 follow edges (several
    // MB); a leak of even a fraction of that per cycle would pass the bound.
    let growth = after.saturating_sub(baseline);
    assert!(
        growth < 8 * 1024,
        "RSS grew by {growth} KiB over {CYCLES} cycles ({baseline} -> {after} KiB)"
    );
    assert_eq!(herald.sessions_gauge().await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_acknowledged_before_kill_9_exist_after_restart() {
    const WORKERS: usize = 16;
    const KILL_AFTER: usize = 300;
    let herald = HeraldProcess::start(&["--shards", "2"]);
    let addr = herald.addr;
    let acknowledged = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let killed = Arc::new(AtomicBool::new(false));

    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (acknowledged, killed) = (acknowledged.clone(), killed.clone());
        workers.push(tokio::spawn(async move {
            for i in 0..100_000 {
                if killed.load(Ordering::Acquire) {
                    return;
                }
                let id = format!("storm-{w}-{i}");
                let body = json!({ "id": id }).to_string();
                let request = http_bytes(
                    "POST",
                    "/v2/account/authenticate/custom?create=true",
                    &[
                        ("Authorization", DEFAULT_KEY_AUTH),
                        ("Content-Type", "application/json"),
                    ],
                    body.as_bytes(),
                );
                match try_http_exchange(addr, &request).await {
                    Some(reply) if reply.status == 200 => {
                        let user = user_of(&reply, &id);
                        acknowledged.lock().expect("lock").push((id, user.id));
                    }
                    Some(reply) => {
                        assert!(
                            killed.load(Ordering::Acquire),
                            "{id} got {} before the kill: {}",
                            reply.status,
                            reply.body
                        );
                    }
                    // Refused, reset or cut short: the server is gone.
                    None => {
                        assert!(
                            killed.load(Ordering::Acquire),
                            "{id} failed before the kill"
                        );
                        return;
                    }
                }
            }
            panic!("the storm outlived its bound");
        }));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while acknowledged.lock().expect("lock").len() < KILL_AFTER {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the storm was too slow"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Requests are in flight on every worker right now.
    killed.store(true, Ordering::Release);
    let herald = herald.kill_and_restart();
    for worker in workers {
        worker.await.expect("a storm worker");
    }

    let acknowledged = acknowledged.lock().expect("lock").clone();
    assert!(acknowledged.len() >= KILL_AFTER);
    for (id, user_id) in &acknowledged {
        let reply = http_post(
            herald.addr,
            "/v2/account/authenticate/custom?create=false",
            Some(DEFAULT_KEY_AUTH),
            &json!({ "id": id }).to_string(),
        )
        .await;
        assert_eq!(
            reply.status, 200,
            "{id} was acknowledged before the kill and is gone: {}",
            reply.body
        );
        assert_eq!(&user_of(&reply, id).id, user_id, "{id} has a new user id");
    }
}

/// A second signal exits at once (code 1) if shutdown is still running,
/// which Herald's shutdown rarely is: even with a session whose socket
/// cannot take its close frame it ends in well under a second, so the two
/// signals are sent back to back. Either way the process must end promptly
/// by itself, never hang or die of the signal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_signals_in_a_row_end_the_process_promptly() {
    let mut herald = HeraldProcess::start(&["--shards", "2", "--shutdown-grace-sec", "60"]);
    let writer = herald.user("writer").await;
    let stuck = herald.user("stuck").await;
    let mut writer_session = herald.connect(&writer, false).await;
    let target = format!("/ws?status=false&token={}", stuck.token);
    let mut raw = RawClient::connect_small_buffer(herald.addr, &target).await;
    raw.send_text(&json!({"status_follow": {"user_ids": [writer.id]}, "cid": "1"}).to_string())
        .await;
    assert_eq!(raw.recv_json().await["cid"], "1");
    writer_session.assert_open("1").await;

    herald.signal(libc::SIGTERM);
    herald.signal(libc::SIGINT);
    let status = herald.wait_for_exit(WAIT);
    match status.code() {
        Some(0) => herald.log_fields("shutdown complete"),
        Some(1) => herald.log_fields("second signal: exiting now"),
        _ => panic!("herald ended with {status:?}"),
    };
    drop(raw);
}

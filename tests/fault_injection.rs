//! Shards never die (issue 5, §8): with the test-only `fault-injection`
//! feature, the status `herald:fault-injection:panic` panics inside the
//! handling of a request. That session is closed; the process stays up, and
//! sessions on the same shard and on the other shard keep getting events.
//!
//! Built only with the feature (see `[[test]]` in Cargo.toml):
//! `cargo test --features fault-injection --test fault_injection`.
//! tests/run-all.sh runs it in the dev profile (its own output directory), so the
//! feature never reaches the `herald` binary the other suites use.

mod common;

use herald::engine::routing::Router;
use herald::ids::UserId;
use serde_json::{json, Value};

use common::*;

const SHARDS: usize = 2;
/// The status that panics (`FAULT_PANIC` in engine::commands::status_update).
const FAULT_PANIC: &str = "herald:fault-injection:panic";

/// A user (token minted with the default key) whose home is `shard`.
fn user_on_shard(name: &str, shard: usize) -> User {
    let tokens = default_tokens();
    let router = Router::new(SHARDS);
    loop {
        let id = uuid::Uuid::new_v4();
        if router.shard_of_user(UserId(id)) == shard {
            return mint_user(&tokens, id, name);
        }
    }
}

/// Whether `message` is an event whose `list` ("joins" or "leaves") has
/// `user` with `status`.
fn lists(message: &Value, list: &str, user: &User, status: &str) -> bool {
    message["status_presence_event"][list]
        .as_array()
        .is_some_and(|list| {
            list.iter()
                .any(|p| p["user_id"] == user.id.as_str() && p["status"] == status)
        })
}

fn joins(message: &Value, user: &User, status: &str) -> bool {
    lists(message, "joins", user, status)
}

fn leaves(message: &Value, user: &User, status: &str) -> bool {
    lists(message, "leaves", user, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_one_sessions_handling_closes_only_that_session() {
    let mut herald = HeraldProcess::start(&["--shards", "2"]);
    let poison = user_on_shard("poison", 0);
    let writers = [user_on_shard("writer0", 0), user_on_shard("writer1", 1)];
    let followers = [user_on_shard("follower0", 0), user_on_shard("follower1", 1)];
    // Each one's sessions are registered once connected (a token-only user
    // is known from then on, so it can be followed).
    let mut poisoned = herald.connect(&poison, false).await;
    let mut writer_sessions = Vec::new();
    for writer in &writers {
        writer_sessions.push(herald.connect(writer, false).await);
    }
    let ids = [
        poison.id.as_str(),
        writers[0].id.as_str(),
        writers[1].id.as_str(),
    ];
    let mut follower_sessions = Vec::new();
    for follower in &followers {
        let mut session = herald.connect(follower, false).await;
        session.follow("f", &ids).await;
        follower_sessions.push(session);
    }
    poisoned.set_status("1", "before").await;
    for session in &mut follower_sessions {
        session
            .next_matching("the poisoned user's join", |m| joins(m, &poison, "before"))
            .await;
    }

    // The poison request: its session ends, with or without a close frame,
    // and without an answer to the request.
    poisoned
        .send_json(json!({"status_update": {"status": FAULT_PANIC}, "cid": "2"}))
        .await;
    match poisoned.recv().await {
        Received::End | Received::Close(_) => {}
        other => panic!("the poisoned session got {other:?}"),
    }
    // Its followers see it leave with its last good status.
    for session in &mut follower_sessions {
        session
            .next_matching("the poisoned user's leave", |m| {
                leaves(m, &poison, "before")
            })
            .await;
    }

    // The process is up and both shards serve: followers on shard 0 (the
    // poisoned session's shard) and shard 1 get every writer's update.
    assert!(
        herald
            .try_wait_for_exit(std::time::Duration::ZERO)
            .is_none(),
        "the process died"
    );
    for (writer, session) in writers.iter().zip(&mut writer_sessions) {
        session.set_status("3", "after").await;
        for follower in &mut follower_sessions {
            follower
                .next_matching("a writer's update", |m| joins(m, writer, "after"))
                .await;
        }
    }
    // The poisoned user can come back on its shard.
    let mut back = herald.connect(&poison, false).await;
    back.set_status("4", "back").await;
    for session in &mut follower_sessions {
        session
            .next_matching("the poisoned user's return", |m| joins(m, &poison, "back"))
            .await;
    }
    assert_eq!(herald.sessions_gauge().await, 5.0);
}

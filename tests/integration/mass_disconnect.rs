//! A mass disconnect (issue 5, "no silent loss"): 2,000 sessions with a
//! status all go away within half a second, and one observer following all
//! of them gets every one of the 2,000 leaves, each once, with its status.

use std::collections::HashMap;
use std::time::Duration;

use herald::engine::stats::CloseKind;
use serde_json::json;

use crate::common::*;

const SESSIONS: usize = 2_000;
/// Ids per follow request: 90 uuids stay under the 4096-byte message limit.
const FOLLOW_CHUNK: usize = 90;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_observer_gets_all_2000_leaves_of_a_mass_disconnect() {
    let server = TestServer::start_with(|c| c.shards = 2);
    let observer_user = server.user("observer").await;
    let mut observer = server.connect(&observer_user, false).await;

    // 2,000 users, each with one session holding the status `s<i>`. Tokens
    // are minted with the server's key; a user seen in a token can be
    // followed by id.
    let users: Vec<User> = (0..SESSIONS)
        .map(|i| server.external_user(&format!("p{i}")))
        .collect();
    let mut sessions = Vec::with_capacity(SESSIONS);
    for (i, user) in users.iter().enumerate() {
        let mut session = server.connect(user, false).await;
        session.set_status("1", &format!("s{i}")).await;
        sessions.push(session);
    }

    // The observer follows all of them; every snapshot lists each one online.
    let mut session_of = HashMap::new();
    for (chunk_index, chunk) in users.chunks(FOLLOW_CHUNK).enumerate() {
        let ids: Vec<&str> = chunk.iter().map(|u| u.id.as_str()).collect();
        let cid = format!("f{chunk_index}");
        let reply = observer
            .request(json!({"status_follow": {"user_ids": ids}, "cid": cid}))
            .await;
        let presences = snapshot_presences(&reply, &cid);
        assert_eq!(presences.len(), chunk.len(), "{reply}");
        for presence in presences {
            let session = presence["session_id"].as_str().expect("session_id");
            let status = presence["status"].as_str().expect("status");
            session_of.insert(session.to_string(), status.to_string());
        }
    }
    assert_eq!(session_of.len(), SESSIONS);

    // All 2,000 go away at once: half with a close frame, half by dropping
    // the TCP connection, in one loop of a few milliseconds.
    for (i, mut session) in sessions.into_iter().enumerate() {
        if i % 2 == 0 {
            session.close(1000).await;
        }
        drop(session);
    }

    // Every leave arrives exactly once and carries the session's last status.
    let mut left = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while left < SESSIONS {
        let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
        let received = observer
            .try_recv(wait)
            .await
            .unwrap_or_else(|| panic!("only {left} of {SESSIONS} leaves arrived"));
        let Received::Text(text) = received else {
            panic!("the observer got {received:?}");
        };
        let message: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        let event = &message["status_presence_event"];
        assert_eq!(object_keys(event), ["leaves"], "{message}");
        for leave in event["leaves"].as_array().expect("leaves") {
            let session = leave["session_id"].as_str().expect("session_id");
            let status = session_of.remove(session).unwrap_or_else(|| {
                panic!("a leave of an unknown or already left session: {leave}")
            });
            assert_eq!(leave["status"], status.as_str(), "{leave}");
            left += 1;
        }
    }
    assert!(session_of.is_empty());
    observer.expect_silence().await;
    observer.assert_open("end").await;
    server.wait_closed(CloseKind::Client, SESSIONS as u64).await;
    let engine = server.engine().clone();
    wait_until("only the observer left", || engine.stats().sessions == 1).await;
}

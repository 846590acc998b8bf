//! `status_follow` and `status_unfollow` over real sockets (reference §6.4,
//! §6.5), Herald's `--max-follows` and `--follow-unknown-ids`, and follow
//! atomicity across shards.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

const NIL: &str = "00000000-0000-0000-0000-000000000000";

fn invalid_id(cid: &str) -> Value {
    json!({"cid": cid, "error": {"code": 3, "message": "Invalid user identifier"}})
}

#[tokio::test]
async fn an_empty_follow_answers_an_empty_presence_list() {
    let server = TestServer::start();
    let alice = server.user("alice").await;
    let mut session = server.connect(&alice, true).await;
    session.recv_event().await;
    for request in [
        json!({"status_follow": {}, "cid": "1"}),
        json!({"status_follow": {"user_ids": []}, "cid": "1"}),
        json!({"status_follow": {"user_ids": [], "usernames": []}, "cid": "1"}),
        json!({"status_follow": {"user_ids": null, "usernames": null}, "cid": "1"}),
    ] {
        session.send_json(request).await;
        assert_eq!(
            session.recv_text().await,
            r#"{"cid":"1","status":{"presences":[]}}"#
        );
    }
}

/// Issue #18: the official Godot clients declare `presences` required, so a
/// follow of friends who are all offline must still carry the list (Nakama
/// omits it). Every way of being offline is covered: never connected,
/// connected without a status, went offline with `status_update {}`, and
/// disconnected.
#[tokio::test]
async fn a_follow_of_users_who_are_all_offline_answers_an_empty_presence_list() {
    let server = TestServer::start();
    let (never, hidden, cleared, gone, follower) = (
        server.user("never").await,
        server.user("hidden").await,
        server.user("cleared").await,
        server.user("gone").await,
        server.user("follower").await,
    );
    let _hidden = server.connect(&hidden, false).await;
    let mut gone_session = server.connect(&gone, true).await;
    gone_session.recv_event().await;
    // `cleared` watches `gone` go, so the test knows when it is offline.
    let mut cleared_session = server.connect(&cleared, true).await;
    cleared_session.recv_event().await;
    assert_eq!(cleared_session.follow("1", &[&gone.id]).await.len(), 1);
    cleared_session
        .send_json(json!({"status_update": {}, "cid": "2"}))
        .await;
    assert_eq!(cleared_session.recv_text().await, r#"{"cid":"2"}"#);
    assert_leave(&cleared_session.recv_event().await, &cleared, "");
    gone_session.close(1000).await;
    assert_leave(&cleared_session.recv_event().await, &gone, "");

    let mut session = server.connect(&follower, true).await;
    session.recv_event().await;
    let ids = [&never.id, &hidden.id, &cleared.id, &gone.id];
    session
        .send_json(json!({"status_follow": {"user_ids": ids}, "cid": "2"}))
        .await;
    assert_eq!(
        session.recv_text().await,
        r#"{"cid":"2","status":{"presences":[]}}"#
    );
    // A follow by username and a follow without a cid answer the same list.
    session
        .send_json(json!({"status_follow": {"usernames": [hidden.username, gone.username]}}))
        .await;
    assert_eq!(session.recv_text().await, r#"{"status":{"presences":[]}}"#);
    // The follow holds: the first of them to come online is announced.
    let mut hidden_again = server.connect(&hidden, false).await;
    hidden_again.set_status("3", "back").await;
    assert_join(&session.recv_event().await, &hidden, "back");
}

#[tokio::test]
async fn the_snapshot_lists_every_session_of_a_followed_user_that_has_a_status() {
    let server = TestServer::start();
    let (alice, bob, carol) = (
        server.user("alice").await,
        server.user("bob").await,
        server.user("carol").await,
    );
    let mut alice_online = server.connect(&alice, true).await;
    let _alice_offline = server.connect(&alice, false).await;
    let mut bob_online = server.connect(&bob, false).await;
    bob_online.set_status("1", "bob here").await;
    let alice_session = assert_join(&alice_online.recv_event().await, &alice, "");

    let mut follower = server.connect(&carol, false).await;
    let mut snapshot = follower.follow("1", &[&alice.id, &bob.id]).await;
    assert_eq!(snapshot.len(), 2, "{snapshot:?}");
    snapshot.sort_by_key(|p| p["username"].as_str().map(str::to_owned));
    assert_eq!(assert_presence(&snapshot[0], &alice, ""), alice_session);
    assert_presence(&snapshot[1], &bob, "bob here");

    // An offline user contributes nothing but is followed all the same.
    let dave = server.user("dave").await;
    assert!(follower.follow("2", &[&dave.id]).await.is_empty());
    let mut dave_session = server.connect(&dave, true).await;
    dave_session.recv_event().await;
    assert_join(&follower.recv_event().await, &dave, "");
}

#[tokio::test]
async fn following_yourself_is_skipped() {
    let server = TestServer::start();
    let alice = server.user("alice").await;
    let mut session = server.connect(&alice, true).await;
    session.recv_event().await;
    // Own id and own username: nothing to report, not even oneself.
    assert!(session.follow("1", &[&alice.id]).await.is_empty());
    let reply = session
        .request(json!({"status_follow": {"usernames": [alice.username]}, "cid": "2"}))
        .await;
    assert_eq!(reply, json!({"cid": "2", "status": {"presences": []}}));
    // The self-follow is still there, and events come once.
    session.set_status("3", "me").await;
    session.expect_silence().await;
}

#[tokio::test]
async fn duplicates_collapse_into_one_follow() {
    let server = TestServer::start();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut writer = server.connect(&alice, true).await;
    writer.recv_event().await;
    let mut follower = server.connect(&bob, false).await;
    let upper = alice.id.to_uppercase();
    let snapshot = follower.follow("1", &[&alice.id, &alice.id, &upper]).await;
    assert_eq!(snapshot.len(), 1, "{snapshot:?}");
    // Following again is a no-op.
    assert_eq!(follower.follow("2", &[&alice.id]).await.len(), 1);
    writer.set_status("1", "once").await;
    assert_update(&follower.recv_event().await, &alice, "", "once");
    follower.expect_silence().await;
}

#[tokio::test]
async fn every_uuid_form_nakama_accepts_names_the_user() {
    let server = TestServer::start();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut writer = server.connect(&alice, true).await;
    writer.recv_event().await;
    let simple = alice.id.replace('-', "");
    let forms = [
        alice.id.to_uppercase(),
        simple.clone(),
        format!("{{{}}}", alice.id),
        format!("{{{simple}}}"),
        format!("urn:uuid:{}", alice.id),
        format!("urn:uuid:{simple}"),
    ];
    for (i, form) in forms.iter().enumerate() {
        let mut follower = server.connect(&bob, false).await;
        let snapshot = follower.follow(&i.to_string(), &[form]).await;
        assert_eq!(snapshot.len(), 1, "{form}: {snapshot:?}");
        // Always the canonical lowercase form on the wire.
        assert_presence(&snapshot[0], &alice, "");
    }
}

#[tokio::test]
async fn unknown_and_nil_ids_are_ignored_and_never_picked_up_later() {
    let server = TestServer::start();
    let bob = server.user("bob").await;
    let stranger = server.external_user("stranger");
    let mut follower = server.connect(&bob, false).await;
    assert!(follower.follow("1", &[&stranger.id, NIL]).await.is_empty());

    // The stranger shows up later (a token minted elsewhere): still not followed.
    let mut late = server.connect(&stranger, true).await;
    assert_join(&late.recv_event().await, &stranger, "");
    late.set_status("1", "hello").await;
    follower.expect_silence().await;

    // Once known, a new follow works.
    let snapshot = follower.follow("2", &[&stranger.id]).await;
    assert_presence(&snapshot[0], &stranger, "hello");
    late.set_status("2", "again").await;
    assert_update(&follower.recv_event().await, &stranger, "hello", "again");
}

#[tokio::test]
async fn an_invalid_id_fails_the_whole_follow_and_follows_nothing() {
    let server = TestServer::start();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut writer = server.connect(&alice, false).await;
    let mut follower = server.connect(&bob, false).await;
    let too_long = format!("{}0", alice.id);
    let bad_hex = alice.id.replacen(|c: char| c.is_ascii_hexdigit(), "g", 1);
    for (i, bad) in [
        "",
        "alice",
        "123",
        &too_long,
        &bad_hex,
        "urn:uuid:",
        "{}",
        &format!("{{{}", alice.id),
    ]
    .into_iter()
    .enumerate()
    {
        let cid = i.to_string();
        let reply = follower
            .request(json!({"status_follow": {"user_ids": [alice.id, bad]}, "cid": cid}))
            .await;
        assert_eq!(reply, invalid_id(&cid), "{bad:?}");
    }
    // Still open, and nothing was followed.
    follower.assert_open("p").await;
    writer.set_status("1", "unseen").await;
    follower.expect_silence().await;
}

#[tokio::test]
async fn an_empty_username_fails_the_whole_follow_and_follows_nothing() {
    let server = TestServer::start();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut writer = server.connect(&alice, false).await;
    let mut follower = server.connect(&bob, false).await;
    let reply = follower
        .request(json!({"status_follow": {"user_ids": [alice.id], "usernames": ["alice", ""]}, "cid": "1"}))
        .await;
    assert_eq!(
        reply,
        json!({"cid": "1", "error": {"code": 3, "message": "Invalid username"}})
    );
    // An invalid id is reported before an empty username.
    let reply = follower
        .request(json!({"status_follow": {"user_ids": ["nope"], "usernames": [""]}, "cid": "2"}))
        .await;
    assert_eq!(reply, invalid_id("2"));
    follower.assert_open("3").await;
    writer.set_status("1", "unseen").await;
    follower.expect_silence().await;
}

#[tokio::test]
async fn users_can_be_followed_by_username() {
    let server = TestServer::start();
    let (alice, bob, carol) = (
        server.user("alice").await,
        server.user("bob").await,
        server.user("carol").await,
    );
    let mut writer = server.connect(&alice, false).await;
    writer.set_status("1", "by name").await;
    let mut follower = server.connect(&bob, false).await;
    // Exact match only; unknown names are ignored, as are their owners' other names.
    let reply = follower
        .request(json!({"status_follow": {"usernames": ["alice", "ALICE", "nobody", "carol"]}, "cid": "1"}))
        .await;
    let snapshot = snapshot_presences(&reply, "1");
    assert_eq!(snapshot.len(), 1, "{reply}");
    assert_presence(&snapshot[0], &alice, "by name");
    writer.set_status("2", "changed").await;
    assert_update(&follower.recv_event().await, &alice, "by name", "changed");
    // carol was followed too (offline, so not in the snapshot).
    let mut carol_session = server.connect(&carol, true).await;
    carol_session.recv_event().await;
    assert_join(&follower.recv_event().await, &carol, "");
}

#[tokio::test]
async fn an_id_and_a_username_of_one_user_collapse() {
    let server = TestServer::start();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut writer = server.connect(&alice, true).await;
    writer.recv_event().await;
    let mut follower = server.connect(&bob, false).await;
    let reply = follower
        .request(json!({"status_follow": {"user_ids": [alice.id], "usernames": ["alice", "alice"]}, "cid": "1"}))
        .await;
    assert_eq!(snapshot_presences(&reply, "1").len(), 1, "{reply}");
    writer.set_status("1", "one event").await;
    assert_update(&follower.recv_event().await, &alice, "", "one event");
    follower.expect_silence().await;
}

#[tokio::test]
async fn unfollow_stops_events_at_once() {
    let server = TestServer::start();
    let (alice, bob, carol) = (
        server.user("alice").await,
        server.user("bob").await,
        server.user("carol").await,
    );
    let mut alice_session = server.connect(&alice, false).await;
    let mut carol_session = server.connect(&carol, false).await;
    let mut follower = server.connect(&bob, false).await;
    follower.follow("1", &[&alice.id, &carol.id]).await;

    let reply = follower
        .request(json!({"status_unfollow": {"user_ids": [alice.id]}, "cid": "2"}))
        .await;
    assert_eq!(reply, json!({"cid": "2"}));
    alice_session.set_status("1", "unseen").await;
    carol_session.set_status("1", "seen").await;
    assert_join(&follower.recv_event().await, &carol, "seen");
    follower.expect_silence().await;

    // Ids that are not followed, or unknown: no-ops. An empty list: an ack.
    let stranger = uuid::Uuid::new_v4().to_string();
    for (cid, ids) in [
        ("3", json!([alice.id, stranger, NIL])),
        ("4", json!([])),
        ("5", json!(null)),
    ] {
        let reply = follower
            .request(json!({"status_unfollow": {"user_ids": ids}, "cid": cid}))
            .await;
        assert_eq!(reply, json!({"cid": cid}));
    }
    // Following again works.
    let snapshot = follower.follow("6", &[&alice.id]).await;
    assert_presence(&snapshot[0], &alice, "unseen");
}

#[tokio::test]
async fn an_invalid_id_fails_the_whole_unfollow_and_unfollows_nothing() {
    let server = TestServer::start();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut writer = server.connect(&alice, false).await;
    let mut follower = server.connect(&bob, false).await;
    follower.follow("1", &[&alice.id]).await;
    let reply = follower
        .request(json!({"status_unfollow": {"user_ids": [alice.id, "not-a-uuid"]}, "cid": "2"}))
        .await;
    assert_eq!(reply, invalid_id("2"));
    writer.set_status("1", "still followed").await;
    assert_join(&follower.recv_event().await, &alice, "still followed");
}

#[tokio::test]
async fn you_cannot_unfollow_yourself() {
    let server = TestServer::start();
    let alice = server.user("alice").await;
    let mut first = server.connect(&alice, false).await;
    let mut second = server.connect(&alice, false).await;
    let reply = first
        .request(json!({"status_unfollow": {"user_ids": [alice.id]}, "cid": "1"}))
        .await;
    assert_eq!(reply, json!({"cid": "1"}));
    first.set_status("2", "still mine").await;
    assert_join(&second.recv_event().await, &alice, "still mine");
    second.set_status("3", "theirs").await;
    assert_join(&first.recv_event().await, &alice, "theirs");
}

#[tokio::test]
async fn follows_belong_to_one_session_and_end_with_it() {
    let server = TestServer::start();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut writer = server.connect(&alice, false).await;
    let mut following = server.connect(&bob, false).await;
    let mut other = server.connect(&bob, false).await;
    following.follow("1", &[&alice.id]).await;
    assert_eq!(server.stats().follow_edges, 1);

    writer.set_status("1", "hi").await;
    assert_join(&following.recv_event().await, &alice, "hi");
    other.expect_silence().await;

    drop(following);
    wait_until("the follow edge is gone", || {
        server.stats().follow_edges == 0
    })
    .await;
    writer.set_status("2", "anyone?").await;
    other.expect_silence().await;
    // A new follow of the other session works on its own.
    let snapshot = other.follow("2", &[&alice.id]).await;
    assert_presence(&snapshot[0], &alice, "anyone?");
    assert_eq!(server.stats().follow_edges, 1);
}

#[tokio::test]
async fn past_max_follows_a_follow_fails_and_the_session_stays_open() {
    let server = TestServer::start_with(|c| c.max_follows = 2);
    let (alice, bob, carol, dave) = (
        server.user("alice").await,
        server.user("bob").await,
        server.user("carol").await,
        server.user("dave").await,
    );
    let mut dave_session = server.connect(&dave, false).await;
    let mut follower = server.connect(&alice, false).await;
    let too_many = json!({"cid": "2", "error": {"code": 3, "message": "Too many follows"}});

    // Three at once is too many, and nothing of it is followed.
    let reply = follower
        .request(json!({"status_follow": {"user_ids": [bob.id, carol.id, dave.id]}, "cid": "2"}))
        .await;
    assert_eq!(reply, too_many);
    dave_session.set_status("1", "unseen").await;
    follower.expect_silence().await;

    assert!(follower.follow("3", &[&bob.id, &carol.id]).await.is_empty());
    // Following the same users again is fine; one more is not.
    assert!(follower.follow("4", &[&bob.id]).await.is_empty());
    let reply = follower
        .request(json!({"status_follow": {"user_ids": [dave.id]}, "cid": "2"}))
        .await;
    assert_eq!(reply, too_many);
    follower.assert_open("5").await;
    dave_session.set_status("2", "still unseen").await;
    follower.expect_silence().await;

    // Unfollowing makes room.
    follower
        .request(json!({"status_unfollow": {"user_ids": [bob.id]}, "cid": "6"}))
        .await;
    let snapshot = follower.follow("7", &[&dave.id]).await;
    assert_presence(&snapshot[0], &dave, "still unseen");
}

#[tokio::test]
async fn with_follow_unknown_ids_an_unseen_user_is_followed_until_it_appears() {
    let server = TestServer::start_with(|c| c.follow_unknown_ids = true);
    let bob = server.user("bob").await;
    let stranger = server.external_user("stranger");
    let mut follower = server.connect(&bob, false).await;
    assert!(follower.follow("1", &[&stranger.id, NIL]).await.is_empty());
    let mut late = server.connect(&stranger, true).await;
    late.recv_event().await;
    assert_join(&follower.recv_event().await, &stranger, "");
    // The nil id is still never followed.
    follower.expect_silence().await;
}

// ---------------------------------------------------------------------------
// Atomicity
// ---------------------------------------------------------------------------

/// Number of status changes the writer makes.
const CHANGES: u32 = 1500;

fn numbered(n: u32) -> String {
    format!("s{n}")
}

fn number_of(status: &Value) -> u32 {
    status
        .as_str()
        .and_then(|s| s.strip_prefix('s'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a numbered status: {status}"))
}

/// Reads events of the writer until the reply with `cid`. Every event must
/// continue the sequence from `*last` (when `Some`), and moves it on.
async fn read_until_reply(
    client: &mut Client,
    cid: &str,
    writer: &User,
    last: &mut Option<u32>,
) -> Value {
    loop {
        let message = client.recv_json().await;
        if message.get("cid").is_some() {
            assert_eq!(message["cid"], cid, "{message}");
            return message;
        }
        let event = &message["status_presence_event"];
        assert_eq!(
            event["joins"][0]["user_id"],
            writer.id.as_str(),
            "{message}"
        );
        let new = number_of(&event["joins"][0]["status"]);
        if let Some(previous) = *last {
            let old = number_of(&event["leaves"][0]["status"]);
            assert_eq!(
                (old, new),
                (previous, previous + 1),
                "a gap or a repeat: {message}"
            );
            *last = Some(new);
        }
    }
}

/// One follower: repeatedly follows the writer (by id or by name), checks
/// that the events after each snapshot continue it without a gap, and
/// unfollows again; the last follow runs to the writer's final status.
async fn follow_in_cycles(mut client: Client, writer: User, by_name: bool, seed: u128) {
    let mut seed = seed;
    let mut next_random = move |below: u128| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 64) % below) as u32
    };
    for cycle in 0..6 {
        tokio::time::sleep(Duration::from_millis(u64::from(next_random(20)))).await;
        let request = if by_name {
            json!({"status_follow": {"usernames": [writer.username]}, "cid": "f"})
        } else {
            json!({"status_follow": {"user_ids": [writer.id]}, "cid": "f"})
        };
        client.send_json(request).await;
        // Events before the snapshot reply may repeat what it shows.
        let reply = read_until_reply(&mut client, "f", &writer, &mut None).await;
        let snapshot = snapshot_presences(&reply, "f");
        assert_eq!(snapshot.len(), 1, "the writer is online: {reply}");
        let mut last = Some(number_of(&snapshot[0]["status"]));

        if cycle == 5 {
            while last != Some(CHANGES) {
                let message = client.recv_json().await;
                let event = &message["status_presence_event"];
                let (old, new) = (
                    number_of(&event["leaves"][0]["status"]),
                    number_of(&event["joins"][0]["status"]),
                );
                assert_eq!(
                    (Some(old), new),
                    (last, old + 1),
                    "a gap or a repeat: {message}"
                );
                last = Some(new);
            }
            client.expect_silence().await;
            return;
        }
        // Watch a while, then unfollow: events up to the ack still continue
        // the sequence, and none comes after it.
        for _ in 0..next_random(150) {
            if last == Some(CHANGES) {
                break;
            }
            let message = client.recv_json().await;
            let event = &message["status_presence_event"];
            let (old, new) = (
                number_of(&event["leaves"][0]["status"]),
                number_of(&event["joins"][0]["status"]),
            );
            assert_eq!(
                (Some(old), new),
                (last, old + 1),
                "a gap or a repeat: {message}"
            );
            last = Some(new);
        }
        let request = json!({"status_unfollow": {"user_ids": [writer.id]}, "cid": "u"});
        client.send_json(request).await;
        let reply = read_until_reply(&mut client, "u", &writer, &mut last).await;
        assert_eq!(reply, json!({"cid": "u"}));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follow_misses_no_change_made_after_its_snapshot_across_shards() {
    let server = TestServer::start_with(|c| c.shards = 4);
    let router = server.engine().router().clone();
    // The writer lives on shard 0 and its username on shard 2; followers on
    // shards 0 (local), 1 and 3 (remote), one of them following by name.
    let mut writer = None;
    for i in 0..400 {
        let user = server.user(&format!("writer{i}")).await;
        if router.shard_of_user(user.user_id()) == 0 && router.shard_of_name(&user.username) == 2 {
            writer = Some(user);
            break;
        }
    }
    let writer = writer.expect("a writer on shard 0 named on shard 2");
    let local = server.user_on_shard("local", 0).await;
    let remote = server.user_on_shard("remote", 1).await;
    let by_name = server.user_on_shard("byname", 3).await;

    let mut writer_session = server.connect(&writer, false).await;
    writer_session.set_status("0", &numbered(1)).await;

    let mut followers = Vec::new();
    for (user, name) in [
        (&local, false),
        (&remote, false),
        (&by_name, true),
        (&remote, true),
    ] {
        let client = server.connect(user, false).await;
        let seed = uuid::Uuid::new_v4().as_u128() | 1;
        followers.push(tokio::spawn(follow_in_cycles(
            client,
            writer.clone(),
            name,
            seed,
        )));
    }
    for n in 2..=CHANGES {
        writer_session.set_status("w", &numbered(n)).await;
    }
    for follower in followers {
        follower
            .await
            .expect("a follower saw every change in order");
    }
}

#[tokio::test]
async fn a_snapshot_gathers_users_from_every_shard() {
    let server = TestServer::start_with(|c| c.shards = 4);
    let follower_user = server.user("follower").await;
    let mut sessions = Vec::new();
    let mut ids = Vec::new();
    let mut shards = std::collections::HashSet::new();
    for i in 0..100 {
        let user = server.user(&format!("u{i}")).await;
        shards.insert(server.engine().router().shard_of_user(user.user_id()));
        let mut session = server.connect(&user, false).await;
        session.set_status("1", &format!("status of u{i}")).await;
        ids.push(user.id.clone());
        sessions.push((user, session));
    }
    assert_eq!(shards.len(), 4, "the users cover every shard");
    // 100 canonical ids fit in one 4096-byte message.
    let mut follower = server.connect(&follower_user, false).await;
    let id_refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let snapshot = follower.follow("1", &id_refs).await;
    assert_eq!(snapshot.len(), 100);
    for (user, _) in &sessions {
        let presence = snapshot
            .iter()
            .find(|p| p["user_id"] == user.id.as_str())
            .unwrap_or_else(|| panic!("{} missing", user.username));
        assert_presence(presence, user, &format!("status of {}", user.username));
    }
    // And every one of them is followed.
    for (user, session) in &mut sessions {
        session.set_status("2", "changed").await;
        let event = follower.recv_event().await;
        assert_update(
            &event,
            user,
            &format!("status of {}", user.username),
            "changed",
        );
    }
}

#[tokio::test]
async fn follows_from_several_sessions_of_one_shard_are_counted_apart() {
    // Owner shard 0 sends a user's changes to shard 1 while any session there
    // follows it: one unfollow or disconnect must not stop the others' events.
    let server = TestServer::start();
    let owner = server.user_on_shard("owner", 0).await;
    let first_user = server.user_on_shard("first", 1).await;
    let second_user = server.user_on_shard("second", 1).await;
    let mut writer = server.connect(&owner, false).await;
    let mut first = server.connect(&first_user, false).await;
    let mut second = server.connect(&second_user, false).await;
    let mut also_first = server.connect(&first_user, false).await;
    first.follow("1", &[&owner.id]).await;
    second.follow("1", &[&owner.id]).await;
    also_first.follow("1", &[&owner.id]).await;

    writer.set_status("1", "a").await;
    for client in [&mut first, &mut second, &mut also_first] {
        assert_join(&client.recv_event().await, &owner, "a");
    }
    first
        .request(json!({"status_unfollow": {"user_ids": [owner.id]}, "cid": "2"}))
        .await;
    drop(also_first);
    wait_until("one follow edge left", || server.stats().follow_edges == 1).await;
    writer.set_status("2", "b").await;
    assert_update(&second.recv_event().await, &owner, "a", "b");
    first.expect_silence().await;

    // The last follower leaves, then a new follow starts the flow again.
    drop(second);
    wait_until("no follow edge left", || server.stats().follow_edges == 0).await;
    writer.set_status("3", "c").await;
    first.follow("4", &[&owner.id]).await;
    writer.set_status("5", "d").await;
    assert_update(&first.recv_event().await, &owner, "c", "d");
}

#[tokio::test]
async fn a_user_first_seen_in_a_token_can_be_followed_by_username() {
    let server = TestServer::start_with(|c| c.shards = 4);
    let bob = server.user("bob").await;
    let stranger = server.external_user("stranger");
    let mut online = server.connect(&stranger, false).await;
    online.set_status("1", "from elsewhere").await;
    // Recording the stranger's name happens in the background: retry a while.
    let mut follower = server.connect(&bob, false).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let snapshot = loop {
        let reply = follower
            .request(json!({"status_follow": {"usernames": ["stranger"]}, "cid": "1"}))
            .await;
        let snapshot = snapshot_presences(&reply, "1");
        if !snapshot.is_empty() || tokio::time::Instant::now() > deadline {
            break snapshot;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(snapshot.len(), 1, "the stranger's name was never found");
    assert_presence(&snapshot[0], &stranger, "from elsewhere");
}

#[tokio::test]
async fn a_token_cannot_take_over_another_accounts_username() {
    let server = TestServer::start();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let impostor = server.external_user("alice");
    let mut fake = server.connect(&impostor, false).await;
    fake.set_status("1", "i am alice").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut follower = server.connect(&bob, false).await;
    let reply = follower
        .request(json!({"status_follow": {"usernames": ["alice"]}, "cid": "1"}))
        .await;
    assert_eq!(
        reply,
        json!({"cid": "1", "status": {"presences": []}}),
        "the real alice is offline"
    );
    fake.set_status("2", "still me").await;
    follower.expect_silence().await;
    let mut real = server.connect(&alice, true).await;
    real.recv_event().await;
    assert_join(&follower.recv_event().await, &alice, "");
}

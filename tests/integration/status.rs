//! Statuses over real sockets (reference §3, §4, §6.1-§6.3): self-follow,
//! joins on connect, updates, going offline, disconnects, acks and cids.

use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn a_session_connected_with_status_true_receives_its_own_join() {
    let server = TestServer::start();
    let alice = server.user("alice").await;
    let mut session = server.connect(&alice, true).await;
    let event = session.recv_event().await;
    assert_join(&event, &alice, "");
    session.expect_silence().await;
}

#[tokio::test]
async fn a_session_connected_with_status_false_is_not_online() {
    let server = TestServer::start();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut quiet = server.connect(&alice, false).await;
    quiet.expect_silence().await;
    let mut follower = server.connect(&bob, false).await;
    assert!(follower.follow("1", &[&alice.id]).await.is_empty());
}

#[tokio::test]
async fn every_session_of_a_user_sees_the_statuses_of_all_its_sessions() {
    let server = TestServer::start();
    let alice = server.user("alice").await;
    let mut first = server.connect(&alice, false).await;
    let mut second = server.connect(&alice, true).await;
    let own = assert_join(&second.recv_event().await, &alice, "");
    let seen = assert_join(&first.recv_event().await, &alice, "");
    assert_eq!(own, seen);

    // And the other way round, with an update of the first session.
    first.set_status("1", "busy").await;
    let event = second.recv_event().await;
    let updated = assert_join(&event, &alice, "busy");
    assert_ne!(updated, own, "the first session has its own session id");
}

#[tokio::test]
async fn a_status_update_is_acked_then_echoed_to_the_session_itself() {
    let server = TestServer::start();
    let alice = server.user("alice").await;
    let mut session = server.connect(&alice, false).await;
    session
        .send_text(r#"{"status_update":{"status":"online"},"cid":"3"}"#)
        .await;
    assert_eq!(
        session.recv_text().await,
        r#"{"cid":"3"}"#,
        "the ack is exactly the cid"
    );
    assert_join(&session.recv_event().await, &alice, "online");
    session.expect_silence().await;
}

#[tokio::test]
async fn an_update_carries_the_new_status_as_join_and_the_previous_as_leave() {
    let server = TestServer::start();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut writer = server.connect(&alice, true).await;
    writer.recv_event().await;
    let mut follower = server.connect(&bob, false).await;
    let snapshot = follower.follow("1", &[&alice.id]).await;
    assert_eq!(snapshot.len(), 1);
    let session = assert_presence(&snapshot[0], &alice, "");

    writer.set_status("1", "one").await;
    assert_eq!(
        assert_update(&follower.recv_event().await, &alice, "", "one"),
        session
    );
    writer.set_status("2", "two").await;
    assert_eq!(
        assert_update(&follower.recv_event().await, &alice, "one", "two"),
        session
    );
    follower.expect_silence().await;
}

#[tokio::test]
async fn an_update_without_status_goes_offline_with_a_leave_of_the_last_status() {
    let server = TestServer::start();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut writer = server.connect(&alice, false).await;
    let mut follower = server.connect(&bob, false).await;
    assert!(follower.follow("1", &[&alice.id]).await.is_empty());

    for (i, clear) in [json!({}), json!({"status": null})].into_iter().enumerate() {
        let status = format!("status {i}");
        writer.set_status("1", &status).await;
        assert_join(&follower.recv_event().await, &alice, &status);

        let reply = writer
            .request(json!({"status_update": clear, "cid": "2"}))
            .await;
        assert_eq!(reply, json!({"cid": "2"}));
        assert_leave(&writer.recv_event().await, &alice, &status);
        assert_leave(&follower.recv_event().await, &alice, &status);

        // Offline now: nobody sees it in a snapshot.
        let mut late = server
            .connect(&server.user(&format!("late{i}")).await, false)
            .await;
        assert!(late.follow("1", &[&alice.id]).await.is_empty());
    }

    // Clearing a session that has no status: ack, no event.
    let reply = writer
        .request(json!({"status_update": {}, "cid": "3"}))
        .await;
    assert_eq!(reply, json!({"cid": "3"}));
    writer.expect_silence().await;
    follower.expect_silence().await;
}

#[tokio::test]
async fn an_empty_status_is_online_not_offline() {
    let server = TestServer::start();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut writer = server.connect(&alice, false).await;
    let mut follower = server.connect(&bob, false).await;
    follower.follow("1", &[&alice.id]).await;

    writer.set_status("1", "").await;
    assert_join(&follower.recv_event().await, &alice, "");
    let mut late = server.connect(&server.user("carol").await, false).await;
    let snapshot = late.follow("1", &[&alice.id]).await;
    assert_eq!(snapshot.len(), 1);
    assert_presence(&snapshot[0], &alice, "");

    // From "" to something and back to "": updates, never leaves alone.
    writer.set_status("2", "x").await;
    assert_update(&follower.recv_event().await, &alice, "", "x");
    writer.set_status("3", "").await;
    assert_update(&follower.recv_event().await, &alice, "x", "");
}

#[tokio::test]
async fn setting_the_same_status_again_still_emits_an_event() {
    let server = TestServer::start();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut writer = server.connect(&alice, false).await;
    let mut follower = server.connect(&bob, false).await;
    follower.follow("1", &[&alice.id]).await;
    writer.set_status("1", "same").await;
    assert_join(&follower.recv_event().await, &alice, "same");
    writer.set_status("2", "same").await;
    assert_update(&follower.recv_event().await, &alice, "same", "same");
    writer.set_status("3", "same").await;
    assert_update(&follower.recv_event().await, &alice, "same", "same");
}

#[tokio::test]
async fn statuses_up_to_2048_bytes_are_accepted_and_longer_ones_refused() {
    let server = TestServer::start();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut writer = server.connect(&alice, false).await;
    let mut follower = server.connect(&bob, false).await;
    follower.follow("1", &[&alice.id]).await;

    // Bytes count, not characters: "€" is 3 bytes, "é" is 2.
    let accepted = [
        "a".repeat(2048),
        format!("{}ab", "€".repeat(682)),
        "é".repeat(1024),
    ];
    let refused = [
        "a".repeat(2049),
        "€".repeat(683),
        format!("{}a", "é".repeat(1024)),
        "😀".repeat(513),
    ];
    let mut current = String::new();
    for status in accepted {
        assert_eq!(status.len(), 2048);
        let old = std::mem::replace(&mut current, status.clone());
        writer.set_status("1", &status).await;
        let event = follower.recv_event().await;
        if old.is_empty() {
            assert_join(&event, &alice, &status);
        } else {
            assert_update(&event, &alice, &old, &status);
        }
    }
    for status in refused {
        assert!(status.len() > 2048);
        let reply = writer
            .request(json!({"status_update": {"status": status}, "cid": "9"}))
            .await;
        assert_eq!(
            reply,
            json!({"cid": "9", "error": {"code": 3, "message": "Status must be 2048 characters or less"}})
        );
    }
    // Nothing changed, and the session is still open.
    writer.assert_open("10").await;
    writer.expect_silence().await;
    follower.expect_silence().await;
    let mut late = server.connect(&server.user("carol").await, false).await;
    let snapshot = late.follow("1", &[&alice.id]).await;
    assert_presence(&snapshot[0], &alice, &current);
}

#[tokio::test]
async fn statuses_are_carried_exactly_and_html_characters_stay_raw() {
    let server = TestServer::start();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut writer = server.connect(&alice, false).await;
    let mut follower = server.connect(&bob, false).await;
    follower.follow("1", &[&alice.id]).await;

    let statuses = [
        "a<b>&c\u{2028}d",
        "quote \" backslash \\ slash / newline \n tab \t",
        "control \u{1} \u{1f} del \u{7f}",
        "ünïcödé 😀 中文",
        r#"{"json":["in",1,"status"]}"#,
    ];
    let mut old: Option<&str> = None;
    for status in statuses {
        writer
            .send_json(json!({"status_update": {"status": status}, "cid": "1"}))
            .await;
        assert_eq!(writer.recv_text().await, r#"{"cid":"1"}"#);
        writer.recv_event().await;
        let raw = follower.recv_text().await;
        if status.starts_with("a<b>") {
            // Emitted raw, not \u-escaped (Go protojson, reference §3.1).
            assert!(raw.contains("a<b>&c\u{2028}d"), "{raw}");
        }
        let event: serde_json::Value = serde_json::from_str(&raw).expect("JSON event");
        let event = &event["status_presence_event"];
        match old {
            None => assert_join(event, &alice, status),
            Some(old) => assert_update(event, &alice, old, status),
        };
        old = Some(status);
    }
}

#[tokio::test]
async fn a_disconnect_sends_followers_a_leave_with_the_last_status() {
    let server = TestServer::start();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut follower = server.connect(&bob, false).await;
    let mut other_session = server.connect(&alice, false).await;

    // A clean close.
    let mut writer = server.connect(&alice, true).await;
    let session = assert_join(&writer.recv_event().await, &alice, "");
    other_session.recv_event().await;
    follower.follow("1", &[&alice.id]).await;
    writer.set_status("1", "last words").await;
    follower.recv_event().await;
    other_session.recv_event().await;
    writer.close(1000).await;
    assert_eq!(writer.expect_close().await.0, 1000);
    assert_eq!(
        assert_leave(&follower.recv_event().await, &alice, "last words"),
        session
    );
    assert_eq!(
        assert_leave(&other_session.recv_event().await, &alice, "last words"),
        session
    );

    // The socket simply dropped.
    let mut writer = server.connect(&alice, false).await;
    writer.set_status("2", "gone").await;
    let session = assert_join(&follower.recv_event().await, &alice, "gone");
    other_session.recv_event().await;
    drop(writer);
    assert_eq!(
        assert_leave(&follower.recv_event().await, &alice, "gone"),
        session
    );
    assert_eq!(
        assert_leave(&other_session.recv_event().await, &alice, "gone"),
        session
    );
    follower.expect_silence().await;
}

#[tokio::test]
async fn a_session_that_never_had_a_status_leaves_without_an_event() {
    let server = TestServer::start();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut follower = server.connect(&bob, false).await;
    let mut other_session = server.connect(&alice, false).await;
    follower.follow("1", &[&alice.id]).await;
    let mut writer = server.connect(&alice, false).await;
    writer.assert_open("1").await;
    drop(writer);
    // A session that went offline before closing leaves nothing either.
    let mut writer = server.connect(&alice, true).await;
    writer.recv_event().await;
    assert_join(&follower.recv_event().await, &alice, "");
    other_session.recv_event().await;
    writer
        .request(json!({"status_update": {}, "cid": "2"}))
        .await;
    follower.recv_event().await;
    other_session.recv_event().await;
    drop(writer);
    wait_until("both sessions gone", || server.stats().sessions == 2).await;
    follower.expect_silence().await;
    other_session.expect_silence().await;
}

#[tokio::test]
async fn followers_see_each_session_of_a_user_separately() {
    let server = TestServer::start();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut phone = server.connect(&alice, false).await;
    phone.set_status("1", "on phone").await;
    let mut desktop = server.connect(&alice, false).await;
    desktop.set_status("1", "on desktop").await;
    phone.recv_event().await;

    let mut follower = server.connect(&bob, false).await;
    let mut snapshot = follower.follow("1", &[&alice.id]).await;
    assert_eq!(snapshot.len(), 2, "one presence per session: {snapshot:?}");
    snapshot.sort_by_key(|p| p["status"].as_str().map(str::to_owned));
    let desktop_id = assert_presence(&snapshot[0], &alice, "on desktop");
    let phone_id = assert_presence(&snapshot[1], &alice, "on phone");
    assert_ne!(desktop_id, phone_id);

    desktop.set_status("2", "away").await;
    phone.recv_event().await;
    assert_eq!(
        assert_update(&follower.recv_event().await, &alice, "on desktop", "away"),
        desktop_id
    );
    drop(phone);
    assert_eq!(
        assert_leave(&follower.recv_event().await, &alice, "on phone"),
        phone_id
    );
    assert_eq!(
        assert_leave(&desktop.recv_event().await, &alice, "on phone"),
        phone_id
    );
}

#[tokio::test]
async fn replies_echo_the_cid_verbatim_and_have_no_cid_without_one() {
    let server = TestServer::start();
    let alice = server.user("alice").await;
    let mut session = server.connect(&alice, false).await;

    // Exact bytes of the replies nakama-js gets.
    session.send_text(r#"{"ping":{},"cid":"7"}"#).await;
    assert_eq!(session.recv_text().await, r#"{"cid":"7","pong":{}}"#);
    session
        .send_text(r#"{"status_unfollow":{"user_ids":[]},"cid":"6"}"#)
        .await;
    assert_eq!(session.recv_text().await, r#"{"cid":"6"}"#);
    session
        .send_text(r#"{"status_follow":{"user_ids":[]},"cid":"1"}"#)
        .await;
    assert_eq!(
        session.recv_text().await,
        r#"{"cid":"1","status":{"presences":[]}}"#
    );

    // No cid (or an empty one): the reply has none.
    session.send_text(r#"{"ping":{}}"#).await;
    assert_eq!(session.recv_text().await, r#"{"pong":{}}"#);
    session.send_text(r#"{"cid":"","ping":{}}"#).await;
    assert_eq!(session.recv_text().await, r#"{"pong":{}}"#);
    session.send_text(r#"{"status_follow":{}}"#).await;
    assert_eq!(session.recv_text().await, r#"{"status":{"presences":[]}}"#);
    session
        .send_text(r#"{"status_update":{"status":"x"}}"#)
        .await;
    assert_eq!(session.recv_text().await, "{}");
    assert_join(&session.recv_event().await, &alice, "x");

    // Any string comes back as it was sent, and nothing checks uniqueness.
    for cid in [
        "abc",
        "1",
        "1",
        "ü😀",
        "quote\"back\\slash",
        " ",
        "<&>",
        &"9".repeat(300),
    ] {
        let reply = session.request(json!({"ping": {}, "cid": cid})).await;
        assert_eq!(reply, json!({"cid": cid, "pong": {}}));
    }
}

#[tokio::test]
async fn camel_case_requests_are_accepted() {
    // nakama-cpp sends protobuf's lowerCamel JSON names (reference §3.2).
    let server = TestServer::start();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut writer = server.connect(&alice, false).await;
    let mut follower = server.connect(&bob, false).await;

    let reply = follower
        .request(json!({"cid": "1", "statusFollow": {"userIds": [alice.id]}}))
        .await;
    assert_eq!(reply, json!({"cid": "1", "status": {"presences": []}}));
    writer
        .send_json(json!({"cid": "1", "statusUpdate": {"status": "camel"}}))
        .await;
    assert_eq!(writer.recv_text().await, r#"{"cid":"1"}"#);
    assert_join(&follower.recv_event().await, &alice, "camel");
    let reply = follower
        .request(json!({"cid": "2", "statusUnfollow": {"userIds": [alice.id]}}))
        .await;
    assert_eq!(reply, json!({"cid": "2"}));
    writer.recv_event().await;
    writer.set_status("2", "unseen").await;
    follower.expect_silence().await;
}

#[tokio::test]
async fn an_app_level_pong_is_accepted_and_ignored() {
    let server = TestServer::start();
    let alice = server.user("alice").await;
    let mut session = server.connect(&alice, false).await;
    session.send_text(r#"{"pong":{},"cid":"1"}"#).await;
    session.send_text(r#"{"pong":{}}"#).await;
    session.expect_silence().await;
    session.assert_open("2").await;
}

#[tokio::test]
async fn presences_carry_the_token_username_exactly() {
    let server = TestServer::start();
    let bob = server.user("bob").await;
    let mut follower = server.connect(&bob, false).await;
    // "jösé <&> ü" percent-encoded in the authenticate query.
    let odd = authenticate(
        server.addr,
        "custom-odd-name",
        "j%C3%B6s%C3%A9%20%3C%26%3E%20%C3%BC",
    )
    .await;
    assert_eq!(odd.username, "jösé <&> ü");
    follower.follow("1", &[&odd.id]).await;
    let mut session = server.connect(&odd, true).await;
    session.recv_event().await;
    let raw = follower.recv_text().await;
    assert!(raw.contains(r#""username":"jösé <&> ü""#), "{raw}");
    let event: serde_json::Value = serde_json::from_str(&raw).expect("JSON");
    assert_join(&event["status_presence_event"], &odd, "");
}

#[tokio::test]
async fn odd_token_usernames_are_escaped_and_an_empty_one_is_omitted() {
    let server = TestServer::start();
    let bob = server.user("bob").await;
    let mut follower = server.connect(&bob, false).await;
    for name in [
        "quote\" back\\slash",
        "ctl\u{1}\u{1f}",
        "sep\u{2028}\u{2029}",
        "",
    ] {
        let stranger = server.external_user(name);
        follower.follow("1", &[]).await;
        let mut session = server.connect(&stranger, true).await;
        session.recv_event().await;
        // Known now (seen in a token): follow it, then watch an update.
        let snapshot = follower.follow("2", &[&stranger.id]).await;
        assert_eq!(snapshot.len(), 1);
        session.set_status("3", "x").await;
        let event = follower.recv_event().await;
        for presence in [&snapshot[0], &event["joins"][0], &event["leaves"][0]] {
            if name.is_empty() {
                // Go omits an empty string field.
                assert!(presence.get("username").is_none(), "{presence}");
            } else {
                assert_eq!(presence["username"], name, "{presence}");
            }
        }
        follower
            .request(json!({"status_unfollow": {"user_ids": [stranger.id]}, "cid": "4"}))
            .await;
    }
}

//! Slow consumers (reference §7.2 step 4, Herald's `--outgoing-queue-bytes`):
//! a follower that stops reading is closed with `session outgoing queue
//! full` once its queue passes the bound, and nobody else loses anything.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use herald::engine::stats::CloseKind;
use serde_json::Value;

use crate::common::*;

/// Padding that makes every event frame about 1 KiB.
fn status(n: u32) -> String {
    format!("s{n}:{}", "x".repeat(400))
}

fn number(status: &Value) -> u32 {
    status
        .as_str()
        .and_then(|s| s.strip_prefix('s'))
        .and_then(|s| s.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a numbered status: {status}"))
}

/// The (old, new) numbers of an update event.
fn update_numbers(message: &Value) -> (u32, u32) {
    let event = &message["status_presence_event"];
    (
        number(&event["leaves"][0]["status"]),
        number(&event["joins"][0]["status"]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_stops_reading_is_closed_and_another_gets_all_20000_changes_in_order() {
    const CHANGES: u32 = 20_000;
    let server = TestServer::start_with(|c| c.outgoing_queue_bytes = 16 * 1024);
    let (writer, slow_user, reader_user) = (
        server.user("writer").await,
        server.user("slow").await,
        server.user("reader").await,
    );

    let mut writer_session = server.connect(&writer, false).await;
    writer_session.set_status("0", &status(0)).await;

    // The slow follower has a tiny receive buffer, so the server's queue fills soon.
    let target = format!("/ws?status=false&token={}", slow_user.token);
    let mut slow = RawClient::connect_small_buffer(server.addr, &target).await;
    slow.send_text(&format!(
        r#"{{"status_follow":{{"user_ids":["{}"]}},"cid":"1"}}"#,
        writer.id
    ))
    .await;
    let snapshot = slow.recv_json().await;
    assert_eq!(number(&snapshot_presences(&snapshot, "1")[0]["status"]), 0);

    let mut reader = server.connect(&reader_user, false).await;
    assert_eq!(
        number(&reader.follow("1", &[&writer.id]).await[0]["status"]),
        0
    );

    // The writer makes 20,000 changes; the slow follower is cut off long
    // before the end (20 MB of events against a 16 KiB bound). The reader
    // reads everything, concurrently.
    // The writer never runs more than `AHEAD` changes ahead of the reader.
    // The bound counts bytes queued and not yet written, which a burst fills
    // as surely as a slow reader does: a shard that was descheduled for a
    // moment delivers everything pending at once. Four 1 KiB events stay far
    // below the 16 KiB bound, so the reader is never cut off itself.
    const AHEAD: u32 = 4;
    let done = Arc::new(AtomicBool::new(false));
    let read_up_to = Arc::new(AtomicU32::new(0));
    let engine = server.engine().clone();
    let writing = {
        let (done, read_up_to) = (done.clone(), read_up_to.clone());
        tokio::spawn(async move {
            for n in 1..=CHANGES {
                let behind = tokio::time::Instant::now() + WAIT;
                while read_up_to.load(Ordering::Acquire) + AHEAD < n {
                    assert!(
                        tokio::time::Instant::now() < behind,
                        "the reader fell behind"
                    );
                    tokio::task::yield_now().await;
                }
                writer_session.set_status("w", &status(n)).await;
            }
            assert_eq!(
                engine.stats().closed(CloseKind::SlowConsumer),
                1,
                "the slow follower was never closed"
            );
            done.store(true, Ordering::Release);
            writer_session
        })
    };
    let reading = tokio::spawn(async move {
        let read_up_to = read_up_to;
        let mut last = 0;
        let mut idle_since = tokio::time::Instant::now();
        loop {
            let finished = done.load(Ordering::Acquire);
            match reader.try_recv(QUIET).await {
                None if finished => return (reader, last),
                None => assert!(
                    idle_since.elapsed() < WAIT,
                    "the reader got nothing for {WAIT:?}"
                ),
                Some(Received::Text(text)) => {
                    let message: Value = serde_json::from_str(&text).expect("a JSON event");
                    let (old, new) = update_numbers(&message);
                    assert_eq!(
                        (old, new),
                        (last, last + 1),
                        "the reader missed or repeated a change"
                    );
                    last = new;
                    read_up_to.store(last, Ordering::Release);
                    idle_since = tokio::time::Instant::now();
                }
                Some(other) => panic!("the reader got {other:?}"),
            }
        }
    });

    // As soon as the server gave up on the slow follower, it reads: what it
    // gets is an unbroken run of changes, then the close frame.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while server.stats().closed(CloseKind::SlowConsumer) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slow follower was never closed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut last = 0;
    let close = loop {
        let frame = slow.next_data().await;
        if frame.opcode == OP_CLOSE {
            break frame.close().expect("a close code");
        }
        let message: Value = serde_json::from_str(&frame.text()).expect("a JSON event");
        let (old, new) = update_numbers(&message);
        assert_eq!(
            (old, new),
            (last, last + 1),
            "the slow follower got a gap before its close"
        );
        last = new;
    };
    assert_eq!(close, (1000, "session outgoing queue full".to_string()));
    slow.send_close(1000, "").await;
    slow.expect_end().await;

    let mut writer_session = writing.await.expect("the writer");
    let (mut reader, read) = reading.await.expect("the reader saw every change in order");
    assert_eq!(read, CHANGES, "the reader got every change");
    assert!(last < CHANGES, "the slow follower was cut off early");
    reader.assert_open("2").await;
    writer_session.assert_open("2").await;
    assert_eq!(server.stats().closed(CloseKind::SlowConsumer), 1);
}

#[tokio::test]
async fn a_frame_larger_than_the_whole_bound_still_reaches_a_reader_that_keeps_up() {
    // Nakama bounds its queue in messages, so one big message always fits.
    // Here the bound is in bytes: a single event (two 2048-byte statuses) or
    // snapshot bigger than all of it must still go to a session whose queue
    // is empty, or no client could ever receive it.
    let server = TestServer::start_with(|c| c.outgoing_queue_bytes = 4096);
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let big = |c: char| c.to_string().repeat(2048);
    let mut phone = server.connect(&alice, false).await;
    phone.set_status("1", &big('a')).await;
    let mut desktop = server.connect(&alice, false).await;
    desktop.set_status("1", &big('b')).await;
    phone.recv_event().await;

    let mut follower = server.connect(&bob, false).await;
    let snapshot = follower.follow("1", &[&alice.id]).await;
    assert_eq!(snapshot.len(), 2);
    // The phone's own ack may still be queued when its echo (over the
    // bound) comes, so only the sessions with an empty queue are watched:
    // main's rule is that an empty queue takes any one frame.
    phone
        .send_json(serde_json::json!({"status_update": {"status": big('c')}, "cid": "2"}))
        .await;
    assert_update(&follower.recv_event().await, &alice, &big('a'), &big('c'));
    assert_update(&desktop.recv_event().await, &alice, &big('a'), &big('c'));
    follower.assert_open("3").await;
    desktop.assert_open("3").await;
}

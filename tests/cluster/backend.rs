//! The backend API and `--single-socket` across nodes: a node answers for
//! sessions that live on another.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::common::http_bytes;
use crate::rig::{run, Cluster, ClusterSpec, HTTP_KEY};

#[test]
fn the_backend_api_on_one_node_sees_and_disconnects_sessions_on_another() {
    run(async {
        let cluster = Cluster::start(ClusterSpec::new(2)).await;
        let (a, b) = (cluster.node(0), cluster.node(1));
        let alice = b.user("alice").await;
        let bob = b.user("bob").await;
        let watcher = a.user("watcher").await;
        let mut alice_session = b.session(&alice, false).await;
        let alice_id = alice_session.set_status("s", "in a match").await;
        // Bob's session has no status, so the log does not know where it is.
        let mut bob_session = b.session(&bob, false).await;
        let bob_id = bob_session.set_status("s", "about to go invisible").await;
        bob_session
            .request("off", json!({"status_update": {}}))
            .await;
        let follower = a.session(&watcher, false).await;
        follower.follow("f", &[&alice.id]).await;

        // GET /v2/status on node A answers for users on node B.
        let target = format!(
            "/v2/status?user_ids={},{}&http_key={HTTP_KEY}",
            alice.id, bob.id
        );
        let expected = json!({"users": [
            {"user_id": alice.id, "online": true, "sessions": [{"session_id": alice_id, "status": "in a match"}]},
            {"user_id": bob.id, "online": false, "sessions": []},
        ]});
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let reply = a.admin_get(&target).await;
            assert_eq!(reply.status, 200, "{}", reply.body);
            if reply.json() == expected {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node A's status of node B's users: {}",
                reply.body
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        // POST /v2/session/{id}/disconnect on node A closes sessions on node B.
        let disconnect = |session: String| async move {
            let target = format!("/v2/session/{session}/disconnect?http_key={HTTP_KEY}");
            let headers = [("Content-Type", "application/json")];
            let request = http_bytes("POST", &target, &headers, br#"{"reason":"banned"}"#);
            a.http(a.admin(), &request).await
        };
        for (session, id) in [(&alice_session, &alice_id), (&bob_session, &bob_id)] {
            let reply = disconnect(id.clone()).await;
            assert_eq!(
                reply.status, 204,
                "{}: {}",
                session.user.username, reply.body
            );
            let (_, close) = session.wait_end(Duration::from_secs(5)).await;
            assert_eq!(
                close,
                Some((1000, "banned".to_owned())),
                "{}",
                session.user.username
            );
        }
        follower
            .wait_message("alice's leave", Duration::from_secs(5), |m| {
                m["status_presence_event"]["leaves"][0]["session_id"] == alice_id.as_str()
            })
            .await;
        let unknown = disconnect("3a3c2b53-8f2f-4c43-9a3e-2f1f0e6b1a01".into()).await;
        assert_eq!(unknown.status, 404, "{}", unknown.body);
        assert_eq!(
            unknown.json(),
            json!({"code": 5, "message": "Session not found."})
        );
        let gone = disconnect(alice_id.clone()).await;
        assert_eq!(
            gone.status, 404,
            "a closed session is not found: {}",
            gone.body
        );
    });
}

#[test]
fn with_single_socket_a_new_socket_on_one_node_closes_the_older_one_on_another() {
    run(async {
        let cluster = Cluster::start(ClusterSpec::new(2).args(&["--single-socket"])).await;
        let (a, b) = (cluster.node(0), cluster.node(1));
        let carol = a.user("carol").await;
        let older = a.session(&carol, false).await;
        let newer = b.session(&carol, false).await;
        let (_, close) = older.wait_end(Duration::from_secs(5)).await;
        assert_eq!(
            close.map(|(code, _)| code),
            Some(1000),
            "{:?}",
            older.frames()
        );
        assert!(
            older
                .messages()
                .iter()
                .any(|(_, m)| m.get("notifications").is_some()),
            "Nakama's single-socket notification before the close: {:?}",
            older.frames()
        );
        let pong = newer.request("p", json!({"ping": {}})).await;
        assert_eq!(
            pong,
            json!({"cid": "p", "pong": {}}),
            "the newer socket stays"
        );
        assert_eq!(
            a.metric("herald_sessions_closed_total{reason=\"kicked\"}")
                .await,
            1.0
        );
    });
}

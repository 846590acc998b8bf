//! [`Session`]: a websocket session whose every frame a task records as it
//! arrives, stamped with the instant it was read, so that hundreds of
//! sessions can be watched at once while the test kills processes. Requests
//! go through the same task. Presences and views are read back from the
//! recording.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::common::{Client, Received, User};

/// One recorded frame.
pub type Frame = (Instant, Received);

/// A recorded session (see the module doc).
pub struct Session {
    pub user: User,
    /// The session id, once learnt from its own status event ([`Session::set_status`]).
    pub id: Option<String>,
    frames: Arc<Mutex<Vec<Frame>>>,
    outbox: mpsc::UnboundedSender<Value>,
    task: tokio::task::JoinHandle<()>,
}

impl Session {
    /// Starts recording `client`, a session of `user`.
    pub fn record(mut client: Client, user: User) -> Session {
        let frames = Arc::new(Mutex::new(Vec::new()));
        let (outbox, mut requests) = mpsc::unbounded_channel::<Value>();
        let recorded = frames.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    request = requests.recv() => match request {
                        Some(request) => client.send_json(request).await,
                        None => return,
                    },
                    received = client.try_recv(Duration::from_secs(3600)) => {
                        let Some(received) = received else { continue };
                        let end = received == Received::End;
                        lock(&recorded).push((Instant::now(), received));
                        if end {
                            return;
                        }
                    }
                }
            }
        });
        Session {
            user,
            id: None,
            frames,
            outbox,
            task,
        }
    }

    /// Sends `request` (a JSON message) on the socket.
    pub fn send(&self, request: Value) {
        // Fails only once the socket ended, which the recording shows.
        let _ = self.outbox.send(request);
    }

    /// Everything recorded so far.
    pub fn frames(&self) -> Vec<Frame> {
        lock(&self.frames).clone()
    }

    /// The JSON messages recorded so far, in order.
    pub fn messages(&self) -> Vec<(Instant, Value)> {
        lock(&self.frames)
            .iter()
            .filter_map(|(at, received)| match received {
                Received::Text(text) => serde_json::from_str(text).ok().map(|v| (*at, v)),
                _ => None,
            })
            .collect()
    }

    /// The status events recorded so far (the `status_presence_event` objects).
    pub fn events(&self) -> Vec<(Instant, Value)> {
        self.messages()
            .into_iter()
            .filter_map(|(at, m)| m.get("status_presence_event").map(|e| (at, e.clone())))
            .collect()
    }

    /// How the session ended, if it did: the close frame (code, reason) or
    /// `None` for an end without one, and when.
    pub fn ended(&self) -> Option<(Instant, Option<(u16, String)>)> {
        lock(&self.frames)
            .iter()
            .find_map(|(at, received)| match received {
                Received::Close(close) => Some((*at, close.clone())),
                Received::End => Some((*at, None)),
                _ => None,
            })
    }

    /// The first recorded message that `want` accepts, waiting at most `limit`.
    pub async fn wait_message(
        &self,
        what: &str,
        limit: Duration,
        want: impl Fn(&Value) -> bool,
    ) -> (Instant, Value) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(found) = self.messages().into_iter().find(|(_, m)| want(m)) {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "{}: no {what} within {limit:?}; recorded {:?}",
                self.user.username,
                self.frames()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits (at most `limit`) for the session to end; see [`Session::ended`].
    pub async fn wait_end(&self, limit: Duration) -> (Instant, Option<(u16, String)>) {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(end) = self.ended() {
                return end;
            }
            assert!(
                Instant::now() < deadline,
                "{}: the session did not end within {limit:?}",
                self.user.username
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends `request` with `cid` and waits for the reply with that cid.
    pub async fn request(&self, cid: &str, mut request: Value) -> Value {
        request["cid"] = json!(cid);
        self.send(request);
        self.wait_message(&format!("reply {cid}"), Duration::from_secs(15), |m| {
            m["cid"] == cid
        })
        .await
        .1
    }

    /// Sets the status (which must be unique to this session), waits for the
    /// ack and for the session's own event, and learns the session id from it.
    pub async fn set_status(&mut self, cid: &str, status: &str) -> String {
        let reply = self
            .request(cid, json!({"status_update": {"status": status}}))
            .await;
        assert_eq!(reply, json!({"cid": cid}), "status_update {status}");
        let (_, event) = self
            .wait_message("its own status event", Duration::from_secs(15), |m| {
                joins_of(m).iter().any(|p| p.status == status)
            })
            .await;
        let id = joins_of(&event)
            .into_iter()
            .find(|p| p.status == status)
            .map(|p| p.session_id)
            .expect("the join");
        self.id = Some(id.clone());
        id
    }

    /// Follows `ids`; returns the snapshot's presences.
    pub async fn follow(&self, cid: &str, ids: &[&str]) -> Vec<Presence> {
        let reply = self
            .request(cid, json!({"status_follow": {"user_ids": ids}}))
            .await;
        let presences = reply["status"]["presences"]
            .as_array()
            .unwrap_or_else(|| panic!("a follow snapshot: {reply}"));
        presences.iter().map(Presence::of).collect()
    }

    /// The statuses this session knows, by session id: follow snapshots and
    /// events applied in the order they came.
    pub fn view(&self) -> HashMap<String, String> {
        let mut view = HashMap::new();
        for (_, message) in self.messages() {
            if let Some(presences) = message["status"]["presences"].as_array() {
                for presence in presences.iter().map(Presence::of) {
                    view.insert(presence.session_id, presence.status);
                }
            }
            if let Some(event) = message.get("status_presence_event") {
                for presence in presences_in(event, "leaves") {
                    view.remove(&presence.session_id);
                }
                for presence in presences_in(event, "joins") {
                    view.insert(presence.session_id, presence.status);
                }
            }
        }
        view
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One presence of an event or snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Presence {
    pub user_id: String,
    pub session_id: String,
    pub username: String,
    pub status: String,
}

impl Presence {
    fn of(value: &Value) -> Presence {
        let field = |name: &str| {
            value[name]
                .as_str()
                .unwrap_or_else(|| panic!("no {name} in presence {value}"))
                .to_owned()
        };
        Presence {
            user_id: field("user_id"),
            session_id: field("session_id"),
            username: field("username"),
            status: field("status"),
        }
    }
}

/// The presences under `key` (`joins` or `leaves`) of an event.
pub fn presences_in(event: &Value, key: &str) -> Vec<Presence> {
    event[key]
        .as_array()
        .map(|list| list.iter().map(Presence::of).collect())
        .unwrap_or_default()
}

/// The joins of a message, if it is a status event.
fn joins_of(message: &Value) -> Vec<Presence> {
    message
        .get("status_presence_event")
        .map(|event| presences_in(event, "joins"))
        .unwrap_or_default()
}

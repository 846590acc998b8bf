//! Requests between nodes that are not presence: closing a session that
//! lives on another node (`POST /v2/session/{id}/disconnect`).
//!
//! A session without a status is not in the log, so its node is unknown:
//! the request is broadcast on core NATS (`herald.<bucket>.ctl.kick`), every
//! node closes the session if it has it and answers whether it did, and the
//! asker waits for as many answers as there are live nodes, or
//! [`KICK_WAIT`]. Core NATS is at-most-once; that is fine here because the
//! caller learns the outcome (204 or 404) and may retry.

use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::engine::{CloseCause, EngineHandle};
use crate::ids::SessionId;

/// How long a kick waits for the other nodes' answers.
pub const KICK_WAIT: Duration = Duration::from_secs(1);

/// The subject every node listens on for kicks.
pub fn kick_subject(bucket: &str) -> String {
    format!("herald.{bucket}.ctl.kick")
}

#[derive(Debug, Serialize, Deserialize)]
struct KickRequest {
    session_id: String,
    reason: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct KickAnswer {
    found: bool,
}

/// Asks every node to close `session`; true if one did. `nodes` is how many
/// answers to expect (the live nodes, this one included).
pub async fn kick_everywhere(
    client: Client,
    bucket: String,
    session: SessionId,
    reason: String,
    nodes: usize,
) -> bool {
    let inbox = client.new_inbox();
    let Ok(mut answers) = client.subscribe(inbox.clone()).await else {
        return false;
    };
    let request = KickRequest {
        session_id: session.to_string(),
        reason,
    };
    let Ok(payload) = serde_json::to_vec(&request) else {
        return false;
    };
    if client
        .publish_with_reply(kick_subject(&bucket), inbox, Bytes::from(payload))
        .await
        .is_err()
    {
        return false;
    }
    let _ = client.flush().await;
    let collect = async {
        let mut heard = 0;
        while let Some(message) = answers.next().await {
            heard += 1;
            let answer: Option<KickAnswer> = serde_json::from_slice(&message.payload).ok();
            if answer.is_some_and(|a| a.found) {
                return true;
            }
            if heard >= nodes.max(1) {
                return false;
            }
        }
        false
    };
    tokio::time::timeout(KICK_WAIT, collect)
        .await
        .unwrap_or(false)
}

/// Answers one kick request: closes the session here if it is here.
pub async fn answer_kick(client: Client, engine: EngineHandle, message: async_nats::Message) {
    let Some(reply) = message.reply.clone() else {
        return;
    };
    let request: Option<KickRequest> = serde_json::from_slice(&message.payload).ok();
    let found = match request.and_then(|r| Some((SessionId::parse(&r.session_id)?, r.reason))) {
        Some((session, reason)) => engine.kick(session, CloseCause::Kicked(reason)).await,
        None => false,
    };
    if let Ok(payload) = serde_json::to_vec(&KickAnswer { found }) {
        let _ = client.publish(reply, Bytes::from(payload)).await;
    }
}

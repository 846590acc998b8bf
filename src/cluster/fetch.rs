//! Reading some users' current presences straight from the stream, for a
//! node that starts to follow (or host) a user it did not keep.
//!
//! A node keeps the presences only of users its own sessions follow or
//! belong to (see [`crate::engine::replica`]), so that its memory grows with
//! its own sessions and their friends, not with the cluster. When a user
//! becomes interesting, its owner shard asks for the user's presence keys as
//! they stand: one JetStream *direct get* with `multi_last` (nats-server
//! 2.11+), which the server answers from one replica under the stream's read
//! lock, so the answer is the state of those keys at one log position.
//!
//! That position is learnt from the end-of-batch reply
//! (`Nats-UpTo-Sequence`, the answering replica's last sequence); the lease
//! key of this node is added to every request so that the answer is never
//! empty (an empty answer carries no position). The owner shard needs the
//! position to join the snapshot with the records it buffered meanwhile: a
//! replica that answers from *behind* the shard's own position would be
//! stale, so such an answer is refused and asked again ([`Fetched::as_of`]).

use std::time::Duration;

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;

use super::replicator::Operation;

/// Most subjects one reply may hold (the server's cap is 1,024).
pub const MAX_RESULTS: usize = 1024;
/// Users asked for in one request: with a few sessions each, well below the cap.
pub const USERS_PER_REQUEST: usize = 128;
/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// One key's last record.
#[derive(Debug, Clone)]
pub struct FetchedRecord {
    pub seq: u64,
    pub subject: String,
    pub operation: Operation,
    pub payload: Bytes,
}

/// The answer to a fetch.
#[derive(Debug, Default)]
pub struct Fetched {
    /// The log position the records are the state of.
    pub as_of: u64,
    pub records: Vec<FetchedRecord>,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("more than {MAX_RESULTS} keys match")]
    TooMany,
    #[error("the direct get failed: {0}")]
    Failed(String),
    #[error("the direct get timed out")]
    TimedOut,
}

#[derive(Serialize)]
struct MultiLast<'a> {
    multi_last: &'a [String],
}

/// The last record of every subject matching `filters` (plus `anchor`, a
/// subject known to exist, which keeps the answer from being empty), and
/// the position they are the state of.
pub async fn last_records(
    client: &Client,
    stream: &str,
    filters: &[String],
    anchor: &str,
) -> Result<Fetched, FetchError> {
    let mut subjects = filters.to_vec();
    subjects.push(anchor.to_owned());
    let request = serde_json::to_vec(&MultiLast {
        multi_last: &subjects,
    })
    .map_err(|e| FetchError::Failed(e.to_string()))?;
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| FetchError::Failed(e.to_string()))?;
    client
        .publish_with_reply(
            format!("$JS.API.DIRECT.GET.{stream}"),
            inbox,
            Bytes::from(request),
        )
        .await
        .map_err(|e| FetchError::Failed(e.to_string()))?;
    let collect = async {
        let mut fetched = Fetched::default();
        while let Some(reply) = replies.next().await {
            match reply.status.map(|s| s.as_u16()) {
                None | Some(200) => {
                    if let Some(record) = record_of(reply.headers.as_ref(), reply.payload) {
                        if record.subject != anchor {
                            fetched.records.push(record);
                        }
                    }
                }
                Some(204) => {
                    fetched.as_of = header_u64(reply.headers.as_ref(), "Nats-UpTo-Sequence");
                    return Ok(fetched);
                }
                // No key at all matched (not even the anchor).
                Some(404) => return Ok(fetched),
                Some(413) => return Err(FetchError::TooMany),
                Some(code) => {
                    let reason = reply.description.unwrap_or_default();
                    return Err(FetchError::Failed(format!("status {code} {reason}")));
                }
            }
        }
        Err(FetchError::Failed("the reply subscription ended".into()))
    };
    match tokio::time::timeout(TIMEOUT, collect).await {
        Ok(result) => result,
        Err(_) => Err(FetchError::TimedOut),
    }
}

fn record_of(headers: Option<&HeaderMap>, payload: Bytes) -> Option<FetchedRecord> {
    let headers = headers?;
    let subject = headers.get("Nats-Subject")?.as_str().to_owned();
    let seq = header_u64(Some(headers), "Nats-Sequence");
    let gone = headers
        .get("KV-Operation")
        .is_some_and(|op| op.as_str() != "PUT")
        || headers.get("Nats-Marker-Reason").is_some();
    Some(FetchedRecord {
        seq,
        subject,
        operation: if gone {
            Operation::Gone
        } else {
            Operation::Put
        },
        payload,
    })
}

fn header_u64(headers: Option<&HeaderMap>, name: &str) -> u64 {
    headers
        .and_then(|h| h.get(name))
        .and_then(|v| v.as_str().parse().ok())
        .unwrap_or(0)
}

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
//!
//! The cluster task sends at most [`IN_FLIGHT`] such requests at once and
//! queues the rest ([`FetchQueue`]), joining a shard's small requests into
//! full ones while they wait: a follow burst then costs the server few
//! requests, and none is asked twice because the server was too busy to
//! answer it in time.

use std::collections::VecDeque;
use std::time::Duration;

use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Serialize;

use super::replicator::Operation;
use crate::ids::UserId;

/// Most subjects one reply may hold (the server's cap is 1,024).
pub const MAX_RESULTS: usize = 1024;
/// Users asked for in one request: with a few sessions each, well below the cap.
pub const USERS_PER_REQUEST: usize = 128;
/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes of records the server sends before it ends a page of an answer
/// (it stops after the record that reaches this). Presences are small, so
/// answers are one page; a page bounds the burst a long status puts on the
/// fetch connection.
pub const PAGE_BYTES: usize = 1 << 20;

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

/// One page of a `multi_last` direct get. The first page leaves `up_to_seq`
/// and `seq` out; a following page pins the position the first one was
/// answered at and starts after the last record it got.
#[derive(Serialize)]
struct MultiLast<'a> {
    multi_last: &'a [String],
    max_bytes: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    up_to_seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

/// How one page of the answer ended.
enum PageEnd {
    /// The end-of-batch reply: `pending` records were left out (the server
    /// stops a page at its byte limit), `last` is the last one sent and
    /// `up_to` the position the answer is the state of.
    Batch { pending: u64, last: u64, up_to: u64 },
    /// No key matched at all (not even the anchor).
    NothingMatched,
}

/// The last record of every subject matching `filters` (plus `anchor`, a
/// subject known to exist, which keeps the answer from being empty), and
/// the position they are the state of.
///
/// The server sends the records in log order and may stop early: at
/// [`PAGE_BYTES`] (the end-of-batch reply then counts what it left out, and
/// the rest is asked for, pinned to the same position), or with a 404 when a
/// record it listed was removed before it was read (an ended session's
/// superseded version, a purge marker's TTL). The second kind of answer is
/// incomplete and the newest keys are the ones missing, so it is an error,
/// and the caller asks again; it is never taken for the whole answer.
pub async fn last_records(
    client: &Client,
    stream: &str,
    filters: &[String],
    anchor: &str,
) -> Result<Fetched, FetchError> {
    let mut subjects = filters.to_vec();
    subjects.push(anchor.to_owned());
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| FetchError::Failed(e.to_string()))?;
    let collect = async {
        let mut fetched = Fetched::default();
        let mut page = MultiLast {
            multi_last: &subjects,
            max_bytes: PAGE_BYTES,
            up_to_seq: None,
            seq: None,
        };
        for _ in 0..=MAX_RESULTS {
            let request =
                serde_json::to_vec(&page).map_err(|e| FetchError::Failed(e.to_string()))?;
            client
                .publish_with_reply(
                    format!("$JS.API.DIRECT.GET.{stream}"),
                    inbox.clone(),
                    Bytes::from(request),
                )
                .await
                .map_err(|e| FetchError::Failed(e.to_string()))?;
            let first_page = page.seq.is_none();
            match read_page(&mut replies, anchor, &mut fetched.records).await? {
                // A first page that matched nothing has no records before it.
                PageEnd::NothingMatched if first_page => return Ok(fetched),
                PageEnd::NothingMatched => {
                    return Err(FetchError::Failed(
                        "a following page of the answer matched nothing".into(),
                    ))
                }
                PageEnd::Batch {
                    pending: 0, up_to, ..
                } => {
                    fetched.as_of = up_to;
                    return Ok(fetched);
                }
                PageEnd::Batch { last, up_to, .. } => {
                    page.up_to_seq = Some(up_to);
                    page.seq = Some(last + 1);
                }
            }
        }
        Err(FetchError::Failed("the answer did not end".into()))
    };
    match tokio::time::timeout(TIMEOUT, collect).await {
        Ok(result) => result,
        Err(_) => Err(FetchError::TimedOut),
    }
}

/// Reads one page of replies into `records` (the anchor left out).
async fn read_page(
    replies: &mut async_nats::Subscriber,
    anchor: &str,
    records: &mut Vec<FetchedRecord>,
) -> Result<PageEnd, FetchError> {
    let mut got = 0usize;
    while let Some(reply) = replies.next().await {
        match reply.status.map(|s| s.as_u16()) {
            None | Some(200) => {
                got += 1;
                if let Some(record) = record_of(reply.headers.as_ref(), reply.payload) {
                    if record.subject != anchor {
                        records.push(record);
                    }
                }
            }
            Some(204) => {
                let headers = reply.headers.as_ref();
                return Ok(PageEnd::Batch {
                    pending: header_u64(headers, "Nats-Num-Pending"),
                    last: header_u64(headers, "Nats-Last-Sequence"),
                    up_to: header_u64(headers, "Nats-UpTo-Sequence"),
                });
            }
            // "No Results" comes alone; any other 404 ("Message Not Found")
            // cuts an answer short.
            Some(404) if got == 0 && is_no_results(reply.description.as_deref()) => {
                return Ok(PageEnd::NothingMatched)
            }
            Some(413) => return Err(FetchError::TooMany),
            Some(code) => {
                let reason = reply.description.unwrap_or_default();
                return Err(FetchError::Failed(format!(
                    "status {code} {reason} after {got} records"
                )));
            }
        }
    }
    Err(FetchError::Failed("the reply subscription ended".into()))
}

fn is_no_results(description: Option<&str>) -> bool {
    description.is_some_and(|d| d.eq_ignore_ascii_case("no results"))
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

/// Snapshot fetches in flight at once, per node. More would not load users
/// faster (the server answers them one after another) but would pile
/// replies up in the server, and a request that times out under that pile
/// is sent again: a burst of follows then feeds on itself.
pub const IN_FLIGHT: usize = 4;

/// One shard's users waiting to be fetched, as of a position no older than
/// `since`.
#[derive(Debug, PartialEq)]
pub struct Waiting {
    pub shard: u16,
    pub users: Vec<UserId>,
    pub since: u64,
}

/// The snapshot fetches of one node: at most [`IN_FLIGHT`] run, the rest
/// wait in arrival order. Users a shard asks for while its earlier request
/// still waits join that request (up to [`USERS_PER_REQUEST`]), so a burst
/// becomes few full requests instead of many small ones. Owned by the
/// cluster task.
#[derive(Debug, Default)]
pub struct FetchQueue {
    waiting: VecDeque<Waiting>,
    in_flight: usize,
}

/// How far back a shard's waiting request is looked for (a burst
/// interleaves a few shards).
const JOIN_WINDOW: usize = 16;

impl FetchQueue {
    /// Queues `users` of `shard`.
    pub fn push(&mut self, shard: u16, mut users: Vec<UserId>, since: u64) {
        let open = self
            .waiting
            .iter_mut()
            .rev()
            .take(JOIN_WINDOW)
            .find(|w| w.shard == shard && w.users.len() < USERS_PER_REQUEST);
        if let Some(open) = open {
            let room = USERS_PER_REQUEST - open.users.len();
            let rest = users.split_off(room.min(users.len()));
            open.users.append(&mut users);
            // An answer as of the later position serves both.
            open.since = open.since.max(since);
            users = rest;
        }
        while !users.is_empty() {
            let rest = users.split_off(USERS_PER_REQUEST.min(users.len()));
            self.waiting.push_back(Waiting {
                shard,
                users,
                since,
            });
            users = rest;
        }
    }

    /// The next request to send, if a slot is free (it counts as in flight
    /// until [`FetchQueue::done`]).
    pub fn next_to_send(&mut self) -> Option<Waiting> {
        if self.in_flight >= IN_FLIGHT {
            return None;
        }
        let next = self.waiting.pop_front()?;
        self.in_flight += 1;
        Some(next)
    }

    /// A request sent by [`FetchQueue::next_to_send`] finished.
    pub fn done(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    /// Users waiting for a slot.
    #[cfg(test)]
    fn waiting_users(&self) -> usize {
        self.waiting.iter().map(|w| w.users.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(from: u128, count: u128) -> Vec<UserId> {
        (from..from + count)
            .map(|n| UserId(uuid::Uuid::from_u128(n + 1)))
            .collect()
    }

    #[test]
    fn a_burst_becomes_few_full_requests_and_only_some_run_at_once() {
        let mut queue = FetchQueue::default();
        // 40 follows of 20 new users each, from two shards in turn.
        for k in 0..40u128 {
            queue.push((k % 2) as u16, users(k * 20, 20), k as u64);
        }
        let mut sent = Vec::new();
        while let Some(request) = queue.next_to_send() {
            sent.push(request);
        }
        assert_eq!(sent.len(), IN_FLIGHT, "no more than IN_FLIGHT at once");
        for _ in 0..100 {
            queue.done();
            if let Some(request) = queue.next_to_send() {
                sent.push(request);
            }
        }
        // 400 users per shard: 4 requests each (128, 128, 128, 16).
        assert_eq!(sent.len(), 8);
        for shard in 0..2u16 {
            let mine: Vec<&Waiting> = sent.iter().filter(|w| w.shard == shard).collect();
            let sizes: Vec<usize> = mine.iter().map(|w| w.users.len()).collect();
            assert_eq!(sizes, vec![128, 128, 128, 16]);
            // Every user once, in the order asked.
            let all: Vec<UserId> = mine.iter().flat_map(|w| w.users.clone()).collect();
            let expected: Vec<UserId> = (0..40u128)
                .filter(|k| (k % 2) as u16 == shard)
                .flat_map(|k| users(k * 20, 20))
                .collect();
            assert_eq!(all, expected);
            // A joined request is answered as of its latest position.
            assert_eq!(mine[0].since, if shard == 0 { 12 } else { 13 });
        }
        assert_eq!(queue.waiting_users(), 0);
    }

    #[test]
    fn a_request_in_flight_is_not_joined() {
        let mut queue = FetchQueue::default();
        queue.push(0, users(0, 3), 1);
        let first = queue.next_to_send().expect("a free slot");
        queue.push(0, users(3, 3), 2);
        let second = queue.next_to_send().expect("a free slot");
        assert_eq!(first.users, users(0, 3));
        assert_eq!(second.users, users(3, 3));
        assert_eq!(second.since, 2);
    }
}

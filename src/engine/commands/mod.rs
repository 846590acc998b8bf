//! The requests a session can make, one file each: validation, error texts
//! and effect together. [`Shard::dispatch`] only routes.
//!
//! Every request gets exactly one reply, queued on the session's outbox
//! before any event the request causes (the ack-before-event tendency
//! clients are used to). A request that needs other shards returns
//! [`Outcome::Pending`]; its reply is queued when the last shard answers,
//! and the connection reads nothing further from the client until then, so
//! replies always come in request order.

mod follow_lookup;
mod ping;
mod status_follow;
mod status_unfollow;
mod status_update;

use super::shard::{SessionKey, Shard};
use crate::protocol::errors::{self, ProtocolError};
use crate::protocol::{Reply, ReplyBody, Request, RequestBody};

/// What the connection should do after a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered; read the next request.
    Done,
    /// Waiting for other shards; read nothing until the outbox says the
    /// request finished.
    Pending,
    /// Answered with an error that ends the session: close it with
    /// `error processing message`.
    Close,
}

impl Shard {
    /// Runs one request of the session `key`.
    pub fn dispatch(&mut self, key: SessionKey, request: Request) -> Outcome {
        let cid = request.cid;
        match request.body {
            RequestBody::StatusFollow {
                user_ids,
                usernames,
            } => self.status_follow(key, cid, user_ids, usernames),
            RequestBody::StatusUnfollow { user_ids } => self.status_unfollow(key, &cid, &user_ids),
            RequestBody::StatusUpdate { status } => self.status_update(key, &cid, status),
            RequestBody::Ping => self.ping(key, &cid),
            RequestBody::Pong => Outcome::Done,
            RequestBody::Unrecognized => self.fail(key, &cid, errors::UNRECOGNIZED_MESSAGE),
            RequestBody::Missing => self.fail(key, &cid, errors::MISSING_MESSAGE),
        }
    }

    /// Answers with `error`; closes the session if the error says so.
    pub(super) fn fail(&self, key: SessionKey, cid: &str, error: ProtocolError) -> Outcome {
        let body = ReplyBody::Error {
            code: error.code,
            message: error.message,
        };
        self.reply(key, &Reply { cid, body });
        if error.closes_session {
            Outcome::Close
        } else {
            Outcome::Done
        }
    }
}

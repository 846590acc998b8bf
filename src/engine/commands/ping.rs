//! `ping` → `pong` with the same cid. nakama-js closes its socket when a
//! ping goes unanswered for 10 s, so this must never wait on anything.

use super::Outcome;
use crate::engine::shard::{SessionKey, Shard};
use crate::protocol::{Reply, ReplyBody};

impl Shard {
    pub(super) fn ping(&self, key: SessionKey, cid: &str) -> Outcome {
        self.reply(
            key,
            &Reply {
                cid,
                body: ReplyBody::Pong,
            },
        );
        Outcome::Done
    }
}

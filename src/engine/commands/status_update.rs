//! `status_update`: set, change or clear the session's own status.
//!
//! * Wrapper absent (`{}` or `"status":null`): go offline. A leave with the
//!   last status goes to followers; nothing if there was no status.
//! * Wrapper present, even `""`: appear online with that status. A join goes
//!   out, plus a leave of the previous status on the same session if there
//!   was one. Repeating the same status still produces an event.
//! * More than 2048 bytes (UTF-8, not characters): error 3, session stays open.
//!
//! The ack `{"cid":…}` is queued before the event, so the session sees its
//! ack before its own echo.

use std::sync::Arc;

use super::Outcome;
use crate::engine::shard::{SessionKey, Shard};
use crate::protocol::errors::{self, MAX_STATUS_BYTES};
use crate::protocol::{Reply, ReplyBody};

impl Shard {
    pub(super) fn status_update(
        &mut self,
        key: SessionKey,
        cid: &str,
        status: Option<String>,
    ) -> Outcome {
        if status.as_ref().is_some_and(|s| s.len() > MAX_STATUS_BYTES) {
            return self.fail(key, cid, errors::STATUS_TOO_LONG);
        }
        self.reply(
            key,
            &Reply {
                cid,
                body: ReplyBody::Ack,
            },
        );
        self.set_status(key, status.map(Arc::from));
        Outcome::Done
    }
}

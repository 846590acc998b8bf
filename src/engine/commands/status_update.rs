//! `status_update`: set, change or clear the session's own status.
//!
//! * Wrapper absent (`{}` or `"status":null`): go offline. A leave with the
//!   last status goes to followers; nothing if there was no status.
//! * Wrapper present, even `""`: appear online with that status. A join goes
//!   out, plus a leave of the previous status on the same session if there
//!   was one. Repeating the same status still produces an event.
//! * More than 2048 bytes (UTF-8, not characters): error 3, session stays open.
//! * Past the opt-in `--status-update-rate`: error 3, session stays open.
//!
//! The ack `{"cid":…}` is queued before the event, so the session sees its
//! ack before its own echo. In cluster mode the change is written to the
//! presence log first and the ack waits for the log (see
//! [`crate::engine::replica`]); it still precedes the echo.

use std::sync::Arc;

use super::Outcome;
use crate::engine::shard::{SessionKey, Shard};
use crate::protocol::errors::{self, MAX_STATUS_BYTES};
use crate::protocol::{Reply, ReplyBody};

/// With the `fault-injection` feature (tests only), this status panics the
/// request's handling, to prove a panic stays contained to one session.
#[cfg(feature = "fault-injection")]
pub const FAULT_PANIC: &str = "herald:fault-injection:panic";

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
        #[cfg(feature = "fault-injection")]
        if status.as_deref() == Some(FAULT_PANIC) {
            panic!("fault injection: a panic while handling a request");
        }
        let (now, limit) = (self.engine.now(), self.engine.config().status_update_rate);
        if self
            .entry_mut(key)
            .is_some_and(|e| !e.rate.allow_update(now, limit))
        {
            return self.fail(key, cid, errors::UPDATE_RATE_LIMITED);
        }
        if self.cluster().is_some() {
            // Answered once the presence log holds the change.
            return self.log_status(key, status.map(Arc::from), Some(cid));
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

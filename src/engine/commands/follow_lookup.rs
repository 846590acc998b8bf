//! `status_follow`, phase 0, with a shared account store only: the users of
//! a request that this node has not met are looked up in the store (one
//! query) and registered with the shards before the follow runs, so a user
//! created on another node a moment ago can be followed at once (see
//! [`crate::engine::directory`]).
//!
//! The lookup runs as a task on the session's home shard while the session
//! reads nothing more (its request is pending, as while other shards
//! answer); the follow then continues on the shard thread, through the
//! inbox, exactly as without a lookup.

use super::Outcome;
use crate::engine::directory::Misses;
use crate::engine::shard::{SessionKey, Shard};
use crate::ids::UserId;
use crate::protocol::errors;

impl Shard {
    /// Looks `misses` up, then follows `users` and `names` (phases 1 and 2).
    /// If the store cannot answer, the reply is `Could not check users`
    /// (Nakama's text for a database error) and nothing is followed.
    pub(super) fn look_up_then_follow(
        &mut self,
        key: SessionKey,
        cid: String,
        users: Vec<UserId>,
        names: Vec<String>,
        misses: Misses,
    ) -> Outcome {
        let Some(outbox) = self.outbox(key) else {
            return Outcome::Done;
        };
        outbox.begin_request();
        let (engine, home) = (self.engine.clone(), self.index);
        tokio::task::spawn_local(async move {
            let looked_up = engine.look_up(misses).await;
            engine.run_on(home, move |ctx| {
                let mut shard = ctx.shard.borrow_mut();
                let outcome = match looked_up {
                    Ok(()) => shard.resolve_and_follow(key, cid, users, names),
                    Err(error) => {
                        tracing::warn!(%error, "a follow could not look users up in the account store");
                        shard.fail(key, &cid, errors::COULD_NOT_CHECK_USERS)
                    }
                };
                if outcome != Outcome::Pending {
                    if let Some(outbox) = shard.outbox(key) {
                        outbox.finish_request();
                    }
                }
            });
        });
        Outcome::Pending
    }
}

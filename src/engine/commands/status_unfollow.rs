//! `status_unfollow`: stop following users, on this session only.
//!
//! Any id that is not a UUID fails the whole request with error 3 and
//! nothing is unfollowed. The session's own user is skipped (a session always
//! follows itself), ids not followed are no-ops, usernames are not supported
//! (Nakama has none here). Takes effect at once: the follower index on this
//! shard loses the edge before the ack is queued, so no later event of those
//! users reaches the session.

use super::Outcome;
use crate::engine::shard::{SessionKey, Shard};
use crate::ids::UserId;
use crate::protocol::errors;
use crate::protocol::{Reply, ReplyBody};

impl Shard {
    pub(super) fn status_unfollow(
        &mut self,
        key: SessionKey,
        cid: &str,
        user_ids: &[String],
    ) -> Outcome {
        let mut users = Vec::with_capacity(user_ids.len());
        for text in user_ids {
            match UserId::parse(text) {
                Some(user) => users.push(user),
                None => return self.fail(key, cid, errors::INVALID_USER_ID),
            }
        }
        let router = self.engine.router().clone();
        let Some(own) = self.entry_mut(key).map(|e| e.user) else {
            return Outcome::Done;
        };
        let mut dropped: Vec<Vec<UserId>> = vec![Vec::new(); router.shards()];
        for user in users {
            if user != own && self.remove_edge(key, user) {
                dropped[router.shard_of_user(user)].push(user);
            }
        }
        self.send_unfollowed(dropped);
        self.reply(
            key,
            &Reply {
                cid,
                body: ReplyBody::Ack,
            },
        );
        Outcome::Done
    }
}

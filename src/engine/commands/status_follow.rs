//! `status_follow`: follow users by id and by username, and answer with a
//! snapshot of their current statuses.
//!
//! Validation, as Nakama: the first id that is not a UUID fails the request
//! (`Invalid user identifier`), then any empty username (`Invalid username`);
//! nothing is followed then. The session's own user and username are skipped,
//! duplicates collapse, and unknown users and the nil id are ignored (kept
//! with `--follow-unknown-ids`). Herald's cap: a session may follow at most
//! `--max-follows` users (`Too many follows`), counted over the well-formed
//! ids of the request before unknown ones are dropped. With the opt-in
//! `--follow-rate`, the ids and usernames asked for count against a per-second
//! budget (`Follow rate limit exceeded`, session stays open).
//!
//! Protocol between shards. Phase 0 (only with a shared account store, and
//! only for users this node has not met): they are looked up in the store
//! and registered with the shards first ([`super::follow_lookup`]). Phase 1
//! (only with usernames): each name goes to the shard that owns it and
//! comes back as an id. Phase 2: the ids are
//! grouped by owner shard; each owner, in one step, checks the user exists,
//! counts the new edge and takes the snapshot, then answers. The requesting
//! shard adds the edge to its follower index when the answer arrives. Events
//! of a user travel on the same owner → follower-shard queue as the answer,
//! so every change after the snapshot reaches the follower, and none before
//! it is delivered twice by the owner (see the engine doc, "Follow atomicity").

use super::Outcome;
use crate::engine::inbox::ShardMsg;
use crate::engine::shard::{PendingFollow, SessionKey, Shard};
use crate::ids::UserId;
use crate::protocol::errors;
use crate::protocol::Frame;
use crate::protocol::{Presence, Reply, ReplyBody};

impl Shard {
    pub(super) fn status_follow(
        &mut self,
        key: SessionKey,
        cid: String,
        user_ids: Vec<String>,
        usernames: Vec<String>,
    ) -> Outcome {
        let mut users = Vec::with_capacity(user_ids.len());
        for text in &user_ids {
            match UserId::parse(text) {
                Some(user) => users.push(user),
                None => return self.fail(key, &cid, errors::INVALID_USER_ID),
            }
        }
        if usernames.iter().any(String::is_empty) {
            return self.fail(key, &cid, errors::INVALID_USERNAME);
        }
        let (now, limit) = (self.engine.now(), self.engine.config().follow_rate);
        let asked = users.len() + usernames.len();
        if self
            .entry_mut(key)
            .is_some_and(|e| !e.rate.allow_follows(now, asked, limit))
        {
            return self.fail(key, &cid, errors::FOLLOW_RATE_LIMITED);
        }
        let Some(entry) = self.entry_mut(key) else {
            return Outcome::Done;
        };
        let own_name = entry.username.clone();
        let mut names: Vec<String> = usernames.into_iter().filter(|n| **n != *own_name).collect();
        names.sort_unstable();
        names.dedup();
        let follow_unknown_ids = self.engine.config().follow_unknown_ids;
        let misses = self
            .engine
            .directory()
            .map(|directory| directory.misses(&users, &names, follow_unknown_ids));
        match misses {
            Some(misses) if !misses.is_empty() => {
                self.look_up_then_follow(key, cid, users, names, misses)
            }
            _ => self.resolve_and_follow(key, cid, users, names),
        }
    }

    /// Phase 1: resolves `names` on the shards that own them, then follows
    /// them and `users` (phase 2).
    pub(super) fn resolve_and_follow(
        &mut self,
        key: SessionKey,
        cid: String,
        mut users: Vec<UserId>,
        names: Vec<String>,
    ) -> Outcome {
        if names.is_empty() {
            return self.follow_users(key, cid, users);
        }
        let router = self.engine.router().clone();
        let mut by_shard: Vec<Vec<String>> = vec![Vec::new(); router.shards()];
        for name in names {
            by_shard[router.shard_of_name(&name)].push(name);
        }
        let mut awaiting = 0;
        for (shard, names) in by_shard.into_iter().enumerate() {
            if names.is_empty() {
                continue;
            }
            if shard == self.index {
                users.extend(names.iter().filter_map(|n| self.resolve_name(n)));
            } else {
                let from_shard = self.index as u16;
                self.engine.send(
                    shard,
                    ShardMsg::ResolveNames {
                        from_shard,
                        session: key,
                        names,
                    },
                );
                awaiting += 1;
            }
        }
        if awaiting == 0 {
            return self.follow_users(key, cid, users);
        }
        self.park(
            key,
            PendingFollow {
                cid,
                awaiting,
                resolving: Some(users),
                presences: Vec::new(),
            },
        );
        Outcome::Pending
    }

    /// Phase 2: follow `users` (ids, possibly unknown or repeated).
    fn follow_users(&mut self, key: SessionKey, cid: String, mut users: Vec<UserId>) -> Outcome {
        let max_follows = self.engine.config().max_follows;
        let router = self.engine.router().clone();
        let Some(own) = self.entry_mut(key).map(|e| e.user) else {
            return Outcome::Done;
        };
        users.retain(|u| *u != own && !u.is_nil());
        users.sort_unstable();
        users.dedup();
        let new_count = users
            .iter()
            .filter(|u| !self.is_following(key.slot, **u))
            .count();
        if self.follow_count(key) + new_count > max_follows {
            return self.fail(key, &cid, errors::TOO_MANY_FOLLOWS);
        }

        let mut by_owner: Vec<(Vec<UserId>, Vec<bool>)> =
            vec![(Vec::new(), Vec::new()); router.shards()];
        for user in users {
            let group = &mut by_owner[router.shard_of_user(user)];
            group.1.push(!self.is_following(key.slot, user));
            group.0.push(user);
        }
        let mut presences = Vec::new();
        let mut awaiting = 0;
        for (owner, (users, new_edges)) in by_owner.into_iter().enumerate() {
            if users.is_empty() {
                continue;
            }
            // In cluster mode a user the node does not keep yet is loaded
            // first: such a grant goes through the inbox, even here, to wait.
            let inline = owner == self.index && users.iter().all(|u| self.is_loaded(*u));
            if inline {
                let granted = self.grant(self.index as u16, users, new_edges, &mut presences);
                self.add_edges(key, granted, owner);
            } else {
                let from_shard = self.index as u16;
                self.engine.send(
                    owner,
                    ShardMsg::Follow {
                        from_shard,
                        session: key,
                        users,
                        new_edges,
                    },
                );
                awaiting += 1;
            }
        }
        if awaiting == 0 {
            self.reply(
                key,
                &Reply {
                    cid: &cid,
                    body: ReplyBody::Status(&presences),
                },
            );
            return Outcome::Done;
        }
        self.park(
            key,
            PendingFollow {
                cid,
                awaiting,
                resolving: None,
                presences,
            },
        );
        Outcome::Pending
    }

    /// Stores a request that waits for other shards.
    fn park(&mut self, key: SessionKey, pending: PendingFollow) {
        if let Some(entry) = self.entry_mut(key) {
            entry.pending = Some(Box::new(pending));
        }
        if let Some(outbox) = self.outbox(key) {
            outbox.begin_request();
            // Owner shards that grant first send the events after their
            // snapshots at once: they wait for the answer (see `Outbox`).
            outbox.hold_events();
        }
    }

    /// On the owner shard: grants the follows of `users` that may be followed,
    /// counts the new edges (when they come from another shard) and appends
    /// the snapshot of every granted user. Returns the granted new edges.
    fn grant(
        &mut self,
        from_shard: u16,
        users: Vec<UserId>,
        new_edges: Vec<bool>,
        presences: &mut Vec<Presence>,
    ) -> Vec<UserId> {
        let mut granted_new = Vec::new();
        for (user, new) in users.into_iter().zip(new_edges) {
            if !self.may_follow(user) {
                continue;
            }
            if new {
                if from_shard as usize != self.index {
                    self.count_interest(user, from_shard);
                }
                granted_new.push(user);
            }
            self.snapshot(user, presences);
        }
        granted_new
    }

    /// Handles [`ShardMsg::Follow`] from another shard.
    pub(in crate::engine) fn grant_follow(
        &mut self,
        from_shard: u16,
        session: SessionKey,
        users: Vec<UserId>,
        new_edges: Vec<bool>,
    ) {
        if self.cluster().is_some() {
            // Cluster mode: the snapshot needs each user's replica; users
            // this node does not keep yet are fetched, and the grant waits.
            let followable: Vec<UserId> = users
                .iter()
                .copied()
                .filter(|u| self.may_follow(*u))
                .collect();
            let loading = self.retain(&followable);
            if !loading.is_empty() {
                self.park_grant(from_shard, session, users, new_edges, &loading);
                return;
            }
        }
        let mut presences = Vec::new();
        let granted_new = self.grant(from_shard, users, new_edges, &mut presences);
        if from_shard as usize == self.index {
            // A grant this shard sent itself (cluster mode, after a load):
            // the edges go in now, in the same step as the snapshot.
            self.follow_granted(from_shard, session, granted_new, presences);
            return;
        }
        let reply = ShardMsg::FollowGranted {
            from_shard: self.index as u16,
            session,
            granted_new,
            presences,
        };
        self.engine.send(from_shard as usize, reply);
    }

    /// Adds granted edges to the follower index. Edges the session cannot
    /// take (it closed meanwhile) are handed back to `owner` so its counts
    /// stay exact.
    fn add_edges(&mut self, key: SessionKey, granted: Vec<UserId>, owner: usize) {
        if let Some(entry) = self.entry_mut(key) {
            entry.follows.reserve(granted.len());
        }
        let returned: Vec<UserId> = granted
            .into_iter()
            .filter(|user| !self.add_edge(key, *user))
            .collect();
        if returned.is_empty() {
            return;
        }
        if owner != self.index {
            let msg = ShardMsg::Unfollowed {
                from_shard: self.index as u16,
                users: returned,
            };
            self.engine.send(owner, msg);
        } else {
            for user in returned {
                self.release_if_uninterested(user);
            }
        }
    }

    /// Handles [`ShardMsg::FollowGranted`]: adds the edges, and answers the
    /// request once every owner shard has answered.
    pub(in crate::engine) fn follow_granted(
        &mut self,
        from_shard: u16,
        session: SessionKey,
        granted_new: Vec<UserId>,
        presences: Vec<Presence>,
    ) {
        self.add_edges(session, granted_new, from_shard as usize);
        let Some(entry) = self.entry_mut(session) else {
            return;
        };
        let Some(pending) = entry.pending.as_mut() else {
            return;
        };
        pending.presences.extend(presences);
        pending.awaiting = pending.awaiting.saturating_sub(1);
        if pending.awaiting > 0 {
            return;
        }
        if let Some(done) = entry.pending.take() {
            // The answer goes ahead of the events held while it waited.
            if let Some(outbox) = self.outbox(session) {
                let reply = Reply {
                    cid: &done.cid,
                    body: ReplyBody::Status(&done.presences),
                };
                outbox.answer_and_release(Frame::reply(outbox.format(), &reply));
                outbox.finish_request();
            }
        }
    }

    /// Handles [`ShardMsg::NamesResolved`]: once every name shard has
    /// answered, runs phase 2.
    pub(in crate::engine) fn names_resolved(&mut self, session: SessionKey, users: Vec<UserId>) {
        let Some(entry) = self.entry_mut(session) else {
            return;
        };
        let Some(pending) = entry.pending.as_mut() else {
            return;
        };
        pending.resolving.get_or_insert_with(Vec::new).extend(users);
        pending.awaiting = pending.awaiting.saturating_sub(1);
        if pending.awaiting > 0 {
            return;
        }
        let Some(done) = entry.pending.take() else {
            return;
        };
        let users = done.resolving.unwrap_or_default();
        if self.follow_users(session, done.cid, users) != Outcome::Pending {
            if let Some(outbox) = self.outbox(session) {
                outbox.finish_request();
            }
        }
    }
}

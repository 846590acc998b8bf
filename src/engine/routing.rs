//! [`Router`]: which shard owns a user id, and which owns a username.
//!
//! Both are a fixed-seed ahash of the key, modulo the shard count, so every
//! thread computes the same answer without sharing anything. A user's
//! sessions, statuses and counted follow edges live on `shard_of_user`; a
//! username's directory entry lives on `shard_of_name`.

use crate::ids::UserId;

/// Fixed seeds: placement must agree across threads and runs.
const SEEDS: [u64; 4] = [
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
];

/// Maps users and usernames to shards (see the module doc).
#[derive(Clone)]
pub struct Router {
    shards: usize,
    hasher: ahash::RandomState,
}

impl Router {
    pub fn new(shards: usize) -> Router {
        Router {
            shards: shards.max(1),
            hasher: ahash::RandomState::with_seeds(SEEDS[0], SEEDS[1], SEEDS[2], SEEDS[3]),
        }
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// The shard that owns `user`: its sessions, statuses and follower counts.
    #[inline]
    pub fn shard_of_user(&self, user: UserId) -> usize {
        (self.hasher.hash_one(user.0.as_u128()) % self.shards as u64) as usize
    }

    /// The shard that owns the directory entry of `username`.
    #[inline]
    pub fn shard_of_name(&self, username: &str) -> usize {
        (self.hasher.hash_one(username.as_bytes()) % self.shards as u64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_stable_and_spread() {
        let router = Router::new(4);
        let mut counts = [0usize; 4];
        for i in 0..4000u128 {
            let user = UserId(uuid::Uuid::from_u128(i.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
            let shard = router.shard_of_user(user);
            assert_eq!(shard, Router::new(4).shard_of_user(user));
            counts[shard] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
    }
}

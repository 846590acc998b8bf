//! The follow graph as one shard holds it, in compact form.
//!
//! * [`FollowerIndex`]: for every user followed from this shard (wherever the
//!   user lives), the set of this shard's session slots that follow it. The
//!   fan-out loop iterates one such set. Each followed user is also given a
//!   small local number (its *handle*) while it has local followers.
//! * A session's follow list is a [`HandleSet`] of those handles.
//!
//! So an edge costs 4 bytes on each side (a slot in the user's follower set,
//! a handle in the session's list) instead of a hashed 16-byte id. A handle
//! stays valid while its set is non-empty, which is guaranteed while any
//! session lists it. Sets are plain vectors while small (the common case: a
//! friends list) and switch to hash sets when large, so that a user with a
//! million followers still gains and loses followers in O(1).

use std::collections::hash_map::Entry;
use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use ahash::AHashMap;

use crate::ids::UserId;

/// Above this many members a set becomes a hash set.
const PROMOTE: usize = 64;
/// Below this many members it goes back to a vector.
const DEMOTE: usize = 32;

/// Hashes dense small integers with one multiplication.
#[derive(Default, Clone, Copy)]
pub struct HandleHasher(u64);

impl Hasher for HandleHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.0 = u64::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A set of small integers (session slots, or user handles): a vector while
/// small, a hash set when large (see the module doc).
pub enum HandleSet {
    Few(Vec<u32>),
    Many(Box<HashSet<u32, BuildHasherDefault<HandleHasher>>>),
}

impl Default for HandleSet {
    fn default() -> Self {
        HandleSet::Few(Vec::new())
    }
}

impl HandleSet {
    /// Adds `value`; false if it was already there.
    pub fn insert(&mut self, value: u32) -> bool {
        match self {
            HandleSet::Few(values) => {
                if values.contains(&value) {
                    return false;
                }
                values.push(value);
                if values.len() > PROMOTE {
                    *self = HandleSet::Many(Box::new(values.iter().copied().collect()));
                }
                true
            }
            HandleSet::Many(set) => set.insert(value),
        }
    }

    /// Removes `value`; false if it was not there.
    pub fn remove(&mut self, value: u32) -> bool {
        match self {
            HandleSet::Few(values) => match values.iter().position(|v| *v == value) {
                Some(pos) => {
                    values.swap_remove(pos);
                    if values.is_empty() {
                        *values = Vec::new();
                    }
                    true
                }
                None => false,
            },
            HandleSet::Many(set) => {
                let removed = set.remove(&value);
                if set.len() < DEMOTE {
                    *self = HandleSet::Few(set.iter().copied().collect());
                }
                removed
            }
        }
    }

    pub fn contains(&self, value: u32) -> bool {
        match self {
            HandleSet::Few(values) => values.contains(&value),
            HandleSet::Many(set) => set.contains(&value),
        }
    }

    pub fn len(&self) -> usize {
        match self {
            HandleSet::Few(values) => values.len(),
            HandleSet::Many(set) => set.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes room for `more` members without repeated growth.
    pub fn reserve(&mut self, more: usize) {
        match self {
            HandleSet::Few(values) if values.len() + more <= PROMOTE => values.reserve_exact(more),
            HandleSet::Few(_) => {}
            HandleSet::Many(set) => set.reserve(more),
        }
    }

    /// Calls `visit` with every member.
    #[inline]
    pub fn for_each(&self, mut visit: impl FnMut(u32)) {
        match self {
            HandleSet::Few(values) => values.iter().for_each(|v| visit(*v)),
            HandleSet::Many(set) => set.iter().for_each(|v| visit(*v)),
        }
    }

    /// Every member.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            HandleSet::Few(values) => values.clone(),
            HandleSet::Many(set) => set.iter().copied().collect(),
        }
    }
}

/// One followed user's entry in the index.
struct Followed {
    user: UserId,
    followers: HandleSet,
}

/// Every user followed from this shard, with its local followers (see the module doc).
#[derive(Default)]
pub struct FollowerIndex {
    handles: AHashMap<UserId, u32>,
    entries: Vec<Followed>,
    free: Vec<u32>,
}

impl FollowerIndex {
    /// Adds `slot` as a follower of `user`. Returns the user's handle and
    /// whether the edge is new.
    pub fn add(&mut self, user: UserId, slot: u32) -> (u32, bool) {
        let handle = match self.handles.entry(user) {
            Entry::Occupied(handle) => *handle.get(),
            Entry::Vacant(vacant) => {
                let followed = Followed {
                    user,
                    followers: HandleSet::default(),
                };
                let handle = match self.free.pop() {
                    Some(handle) => {
                        self.entries[handle as usize] = followed;
                        handle
                    }
                    None => {
                        self.entries.push(followed);
                        (self.entries.len() - 1) as u32
                    }
                };
                *vacant.insert(handle)
            }
        };
        let added = self.entries[handle as usize].followers.insert(slot);
        (handle, added)
    }

    /// Removes `slot` from the followers of the user with `handle`; the
    /// handle is released when its last follower goes.
    pub fn remove(&mut self, handle: u32, slot: u32) -> bool {
        let Some(entry) = self.entries.get_mut(handle as usize) else {
            return false;
        };
        let removed = entry.followers.remove(slot);
        if removed && entry.followers.is_empty() {
            self.handles.remove(&entry.user);
            entry.user = UserId::NIL;
            self.free.push(handle);
        }
        removed
    }

    /// The handle of `user`, if it has local followers.
    pub fn handle(&self, user: UserId) -> Option<u32> {
        self.handles.get(&user).copied()
    }

    /// The user behind `handle`.
    pub fn user(&self, handle: u32) -> UserId {
        self.entries
            .get(handle as usize)
            .map_or(UserId::NIL, |e| e.user)
    }

    /// The local followers of `user`, if any.
    #[inline]
    pub fn followers_of(&self, user: UserId) -> Option<&HandleSet> {
        let handle = *self.handles.get(&user)?;
        self.entries.get(handle as usize).map(|e| &e.followers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(i: u128) -> UserId {
        UserId(uuid::Uuid::from_u128(i))
    }

    #[test]
    fn sets_grow_into_hash_sets_and_shrink_back() {
        let mut set = HandleSet::default();
        for v in 0..1000 {
            assert!(set.insert(v));
            assert!(!set.insert(v));
        }
        assert!(matches!(set, HandleSet::Many(_)));
        for v in 0..990 {
            assert!(set.remove(v));
            assert!(!set.remove(v));
        }
        assert!(matches!(&set, HandleSet::Few(v) if v.len() == 10));
        let mut seen = set.to_vec();
        seen.sort_unstable();
        assert_eq!(seen, (990..1000).collect::<Vec<_>>());
    }

    #[test]
    fn handles_live_while_a_user_has_followers_and_are_reused() {
        let mut index = FollowerIndex::default();
        let (a, new) = index.add(user(1), 7);
        assert!(new);
        assert_eq!(index.add(user(1), 7), (a, false));
        let (b, _) = index.add(user(2), 7);
        assert_ne!(a, b);
        assert_eq!(index.user(a), user(1));
        assert!(index.remove(a, 7));
        assert!(index.followers_of(user(1)).is_none());
        assert_eq!(index.handle(user(1)), None);
        let (c, _) = index.add(user(3), 9);
        assert_eq!(c, a, "a released handle is reused");
        assert_eq!(index.user(c), user(3));
        assert!(!index.remove(c, 7));
    }
}

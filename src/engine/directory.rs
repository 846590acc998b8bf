//! [`SharedDirectory`]: which users this node knows, when the account store
//! is shared with other nodes (Postgres), and finding the others there.
//!
//! Why it exists. The shards hold the user directory: the owner shard of an
//! id knows whether the user exists, the owner shard of a username maps it
//! to an id, and `status_follow` silently drops what they do not know
//! (Nakama's behaviour). With SQLite this process creates every account, so
//! the directory it loads at start-up and extends on authenticate is
//! complete. With a shared store, other nodes create accounts too: a user
//! created on node A a moment ago must be followable on node B at once.
//!
//! How. In shared-store mode every shard's `status_follow` first checks the
//! ids and usernames of the request against this process-wide set. What is
//! missing is looked up in the store with one query for the whole request
//! ([`AccountStore::lookup`]); the users found are registered with the
//! shards ([`EngineHandle::register_user`]), and only then does the follow run,
//! through the unchanged shard protocol (so its snapshot atomicity is
//! untouched; see the engine doc, "Follow atomicity"). If the store cannot
//! answer, the request fails with `Could not check users` and follows
//! nothing. Users already known cost no query, so follows of them keep
//! working while the store is down.
//!
//! Invariant: an id or a username enters the set only once the shards that
//! own it have recorded it ([`EngineHandle::register_user`] adds it after
//! the shards acknowledge; a connect adds its id after the home shard, which
//! owns the id, registered the session). So "known here" always means "the
//! shard protocol will find it". A user missing from the set only costs a
//! query (for instance after a restart), never a wrong answer.
//!
//! Memory grows with the users this node has met (authenticated, connected
//! or looked up), not with the whole user table, which is never preloaded.
//! Nothing is forgotten: the shards never forget a known user either.
//!
//! Threads: every shard thread reads the set on follow requests and writes
//! it when users become known. It is striped ([`STRIPES`] read-write locks,
//! chosen by hash) so that shards seldom touch the same lock, and it is only
//! ever used in shared-store mode: the single-node SQLite path never takes
//! these locks. The fan-out path does not go near it.

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::{Arc, RwLock};

use ahash::AHashSet;

use super::EngineHandle;
#[cfg(doc)]
use crate::auth::AccountStore;
use crate::auth::{AccountError, Accounts};
use crate::ids::UserId;

/// Locks per set. A power of two well above any shard count, so that two
/// shards rarely contend for one.
pub const STRIPES: usize = 64;

/// The users known on this node, and the shared store to find the others in
/// (see the module doc).
pub struct SharedDirectory {
    store: Accounts,
    ids: StripedSet<UserId>,
    names: StripedSet<Arc<str>>,
}

/// What a follow request names that this node does not know yet.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Misses {
    pub ids: Vec<UserId>,
    pub names: Vec<String>,
}

impl Misses {
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty() && self.names.is_empty()
    }
}

impl SharedDirectory {
    pub fn new(store: Accounts) -> SharedDirectory {
        SharedDirectory {
            store,
            ids: StripedSet::new(),
            names: StripedSet::new(),
        }
    }

    /// The ids and names not known here. The nil id is never looked up (it
    /// is never followed); with `--follow-unknown-ids` no id is, since any
    /// id may be followed anyway.
    pub fn misses(&self, ids: &[UserId], names: &[String], follow_unknown_ids: bool) -> Misses {
        let ids = if follow_unknown_ids {
            Vec::new()
        } else {
            ids.iter()
                .filter(|id| !id.is_nil() && !self.ids.contains(*id))
                .copied()
                .collect()
        };
        let names = names
            .iter()
            .filter(|name| !self.names.contains(name.as_str()))
            .cloned()
            .collect();
        Misses { ids, names }
    }

    /// Records a user the shards that own its id (and its username, if not
    /// empty) have recorded.
    pub fn remember(&self, user: UserId, username: &Arc<str>) {
        self.ids.insert(user);
        if !username.is_empty() {
            self.names.insert(username.clone());
        }
    }

    /// Records an id its owner shard has recorded (a session connected).
    pub fn remember_id(&self, user: UserId) {
        self.ids.insert(user);
    }

    /// Looks `misses` up in the store and registers every user found with
    /// the shards (and so here). Ids and names that name nobody are left
    /// as they are: the follow drops them, as Nakama does.
    pub async fn look_up(&self, engine: &EngineHandle, misses: Misses) -> Result<(), AccountError> {
        let found = self.store.lookup(misses.ids, misses.names).await?;
        for user in found {
            engine.register_user(user.user_id, &user.username).await;
        }
        Ok(())
    }
}

/// A set split over [`STRIPES`] locks by hash.
struct StripedSet<T> {
    hasher: ahash::RandomState,
    stripes: Box<[RwLock<AHashSet<T>>]>,
}

impl<T: Hash + Eq> StripedSet<T> {
    fn new() -> StripedSet<T> {
        StripedSet {
            hasher: ahash::RandomState::new(),
            stripes: (0..STRIPES).map(|_| RwLock::default()).collect(),
        }
    }

    fn stripe<Q: Hash + ?Sized>(&self, key: &Q) -> &RwLock<AHashSet<T>> {
        let hash = self.hasher.hash_one(key);
        &self.stripes[(hash as usize) % STRIPES]
    }

    fn contains<Q>(&self, key: &Q) -> bool
    where
        T: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        // A poisoned lock only means a panic elsewhere mid-insert; the set is still valid.
        self.stripe(key)
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(key)
    }

    fn insert(&self, value: T) {
        let stripe = self.stripe(&value);
        if stripe
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&value)
        {
            return;
        }
        stripe
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::SqliteStore;

    #[test]
    fn only_ids_and_names_not_remembered_are_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = SqliteStore::open(dir.path()).expect("a store");
        let directory = SharedDirectory::new(Arc::new(store));
        let (known, connected, unknown) = (
            UserId(uuid::Uuid::new_v4()),
            UserId(uuid::Uuid::new_v4()),
            UserId(uuid::Uuid::new_v4()),
        );
        directory.remember(known, &Arc::from("known"));
        directory.remember_id(connected);
        let ids = [known, connected, unknown, UserId::NIL];
        let names = ["known".to_owned(), "stranger".to_owned()];
        assert_eq!(
            directory.misses(&ids, &names, false),
            Misses {
                ids: vec![unknown],
                names: vec!["stranger".to_owned()],
            }
        );
        // With --follow-unknown-ids any id is followed anyway: only names are looked up.
        assert_eq!(
            directory.misses(&ids, &names, true),
            Misses {
                ids: Vec::new(),
                names: vec!["stranger".to_owned()],
            }
        );
        assert!(directory
            .misses(&[known], &["known".to_owned()], false)
            .is_empty());
    }

    #[test]
    fn a_striped_set_finds_what_was_inserted_and_nothing_else() {
        let set: StripedSet<Arc<str>> = StripedSet::new();
        for i in 0..1000 {
            set.insert(Arc::from(format!("name{i}").as_str()));
        }
        set.insert(Arc::from("name7"));
        for i in 0..1000 {
            assert!(set.contains(format!("name{i}").as_str()), "name{i}");
        }
        assert!(!set.contains("name1000"));
        let total: usize = set
            .stripes
            .iter()
            .map(|s| s.read().map_or(0, |s| s.len()))
            .sum();
        assert_eq!(total, 1000);
    }
}

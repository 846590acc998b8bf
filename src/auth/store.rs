//! The account store seam: one trait, [`AccountStore`], with two backends.
//!
//! * [`SqliteStore`](super::store_sqlite::SqliteStore), the embedded
//!   default: one SQLite file in `--data-dir`, owned by one dedicated thread
//!   that group-commits every request. The only writer of its accounts, so
//!   the user directory it loads at start-up is complete and stays complete
//!   (every new account passes through this process).
//! * [`PostgresStore`](super::store_postgres::PostgresStore), with
//!   `--database-url`: accounts in a Postgres database that several Herald
//!   nodes share. Its connection pool and every query live on a dedicated
//!   thread of its own. Other nodes create accounts too, so the engine learns
//!   users as it meets them and looks unknown follow targets up
//!   ([`AccountStore::lookup`], see `engine::directory`).
//!
//! The rest of Herald holds an [`Accounts`] handle (`Arc<dyn AccountStore>`):
//! cheap to clone, `Send + Sync`, and every call returns a boxed future that
//! may be awaited on any runtime thread (one allocation per call, next to a
//! database round trip). Both backends give the same answers to the same
//! calls: `store_sqlite`'s unit tests check SQLite, and
//! `tests/integration/postgres.rs` checks Postgres over REST against a real
//! server.
//!
//! Who sees what: the REST layer maps [`AccountError`] to Nakama's texts
//! (`transport::rest`); store failures carry a text for logs only.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use uuid::Uuid;

use crate::ids::UserId;

/// A handle to the account store in use. Cheap to clone.
pub type Accounts = Arc<dyn AccountStore>;

/// What every store call returns: a boxed future, so that the trait can be
/// used as `dyn AccountStore`.
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, AccountError>> + Send + 'a>>;

/// Attempts at finding a free generated username before giving up.
pub(crate) const USERNAME_ATTEMPTS: usize = 64;

/// The accounts Herald keeps: user ids, usernames, custom ids and device ids.
pub trait AccountStore: Send + Sync + fmt::Debug {
    /// Finds the account with this custom or device id, creating it when
    /// `create` is set (Nakama §9.1):
    /// * existing id → that account, `created = false`; `username` is ignored;
    /// * unknown id and `!create` → [`AccountError::NotFound`];
    /// * `username` taken by another account → [`AccountError::UsernameTaken`];
    /// * `username` `None` (or empty) → 10 random ASCII letters, retried on a collision.
    ///
    /// New user ids are random UUIDv4s. Concurrent calls for one new id
    /// create exactly one account; the others find it.
    fn authenticate(
        &self,
        kind: IdKind,
        id: String,
        username: Option<String>,
        create: bool,
    ) -> StoreFuture<'_, Account>;

    /// Records a user first seen in a token minted elsewhere (a real Nakama
    /// with the same key). Inserts it (without custom or device id) if
    /// unknown. Returns the username now stored for it: the given one, or
    /// `None` when it was empty or another user already holds it (the user
    /// is then stored without a username, so usernames stay unique). For an
    /// already known user, returns what is stored and changes nothing.
    fn record_external(&self, user_id: UserId, username: String)
        -> StoreFuture<'_, Option<String>>;

    /// Looks an account up by user id (`created` is always false).
    fn get(&self, user_id: UserId) -> StoreFuture<'_, Option<Account>>;

    /// The users among `ids` and `usernames` that exist, each once, in no
    /// particular order (one query: `id = ANY(ids) OR username = ANY(usernames)`).
    /// Unknown ids and names are left out.
    fn lookup(&self, ids: Vec<UserId>, usernames: Vec<String>) -> StoreFuture<'_, Vec<KnownUser>>;

    /// Finishes or abandons the work in flight and closes the store. Later
    /// calls on any handle fail with [`AccountError::Closed`]. Idempotent.
    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
}

/// Which identifier namespace an authenticate call uses. Custom and device ids
/// are separate: the same string may name one account as a custom id and
/// another as a device id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdKind {
    Custom,
    Device,
}

/// An account as authenticate and lookups return it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub user_id: UserId,
    /// The stored username. Never empty for accounts made by authenticate;
    /// empty for an external user stored without one (see
    /// [`AccountStore::record_external`]).
    pub username: String,
    /// True only for the call that created the account.
    pub created: bool,
}

/// One row of the user directory: what the engine needs to know of a user.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct KnownUser {
    pub user_id: UserId,
    /// Empty when the user has no username (see [`Account::username`]).
    pub username: String,
}

/// Opening the store failed. Every text is safe to log: a database URL
/// appears only with its password replaced by `***`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "data directory {path} is in use by another herald process (it holds a lock on {})",
        super::store_sqlite::LOCK_FILE_NAME
    )]
    InUse { path: PathBuf },
    #[error("cannot lock data directory {path}: {source}")]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("account database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("account database {path}: journal_mode is {mode}, WAL could not be enabled")]
    NoWal { path: PathBuf, mode: String },
    /// The database was written by a newer Herald (SQLite or Postgres).
    #[error(
        "account database {place}: schema version {found} is newer than this build ({supported})"
    )]
    SchemaTooNew {
        place: String,
        found: i64,
        supported: i64,
    },
    #[error("account database {path}: user id {id:?} is not a UUID")]
    CorruptUserId { path: PathBuf, id: String },
    /// `--database-url` cannot be used as given.
    #[error("--database-url {url}: {reason}")]
    DatabaseUrl { url: String, reason: String },
    /// Postgres refused or failed: unreachable, bad credentials, TLS, a migration.
    #[error("Postgres at {url}: {reason}")]
    Postgres { url: String, reason: String },
    #[error("cannot start the account store thread: {0}")]
    Thread(std::io::Error),
}

/// An account request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    /// No account has this id and creation was not allowed.
    #[error("User account not found.")]
    NotFound,
    /// The requested username belongs to another account.
    #[error("Username is already in use.")]
    UsernameTaken,
    /// The database failed (or is unreachable); the text is for logs, not for clients.
    #[error("account store error: {0}")]
    Store(String),
    /// The store has been shut down.
    #[error("account store is shut down")]
    Closed,
}

/// The error for running out of generated usernames (64 collisions in a row).
pub(crate) fn no_free_username() -> AccountError {
    AccountError::Store("no free generated username after many attempts".into())
}

/// 10 letters from `[a-zA-Z]`, like Nakama's `generateUsername`. The random
/// bytes come from UUIDv4 generation (the `uuid` crate's `fast-rng`), which
/// saves a direct RNG dependency; the bytes holding the fixed version and
/// variant bits are skipped, and rejection sampling keeps letters uniform.
pub(crate) fn generate_username() -> String {
    const ALPHABET: &[u8; 52] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    const LENGTH: usize = 10;
    let mut name = String::with_capacity(LENGTH);
    while name.len() < LENGTH {
        let bytes = Uuid::new_v4().into_bytes();
        for (index, byte) in bytes.iter().enumerate() {
            // Byte 6 carries the version nibble, byte 8 the variant bits.
            if index == 6 || index == 8 || *byte >= 208 {
                continue;
            }
            name.push(char::from(ALPHABET[usize::from(*byte % 52)]));
            if name.len() == LENGTH {
                break;
            }
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_usernames_are_ten_ascii_letters() {
        for _ in 0..1000 {
            let name = generate_username();
            assert_eq!(name.len(), 10);
            assert!(name.bytes().all(|b| b.is_ascii_alphabetic()), "{name}");
        }
    }
}

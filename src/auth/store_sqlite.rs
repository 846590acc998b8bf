//! The embedded account store, the default behind [`AccountStore`]: user
//! ids, usernames, custom ids and device ids in one SQLite file
//! (`<data_dir>/herald.sqlite3`). This process is its only writer, so the
//! user directory [`SqliteStore::open`] returns is complete.
//!
//! Threads: one dedicated thread (`herald-accounts`) owns the
//! `rusqlite::Connection`; nothing else ever touches it. Callers on any tokio
//! runtime thread send it jobs over an unbounded crossbeam channel, each with
//! a `tokio::sync::oneshot` reply. The channel is unbounded on purpose: every
//! job belongs to one in-flight HTTP request (or websocket handshake), so the
//! queue is already bounded by the listener's connection limit, and a full
//! queue would otherwise have to block a runtime thread.
//!
//! Group commit: the thread blocks for one job, drains whatever else is queued
//! (up to [`MAX_BATCH`]), runs all of them in one `BEGIN IMMEDIATE`
//! transaction (each inside its own savepoint, so one failing job cannot undo
//! another), commits, and only then answers them. Background jobs (recording
//! a user first seen in a minted token, which no request waits for) skip the
//! savepoint, since each writes with one statement that SQLite applies whole
//! or not at all, and a batch made only of them waits up to
//! [`BACKGROUND_LINGER`] for more, so a connect storm commits once per
//! dozens of users (≈60 at 12k connections/s) rather than once per user. A request's job ends the
//! wait at once. An account is therefore
//! acknowledged only after its commit (see Durability for what that
//! guarantees), and a burst of sign-ups pays for one transaction (lock, WAL
//! append, and the sync, were the database ever run with `synchronous=FULL`)
//! instead of one each. Because every job runs on this one thread, concurrent
//! authenticates of the same new id are serialized: the first creates the
//! account, the rest find it. That yields exactly one account and never a
//! uniqueness error.
//!
//! Durability: WAL journal with `synchronous=NORMAL`. A commit is written to
//! the WAL file (at least the OS page cache) before it is acknowledged, so it
//! survives the process being killed (`kill -9`, panic, OOM). On power loss or
//! an OS crash the commits since the last WAL sync may be lost (in this mode
//! SQLite syncs the WAL only at checkpoints), but the database is never
//! corrupted: it reopens at an earlier consistent state. `synchronous=FULL`
//! would make every acknowledged commit survive power loss too, at the price
//! of an fsync per batch; Herald does not offer it today.
//!
//! Lifecycle: [`SqliteStore::open`] starts the thread. It stops when
//! [`AccountStore::shutdown`] is awaited or the last clone is dropped: it
//! finishes the jobs queued before the stop request, runs
//! `PRAGMA wal_checkpoint(TRUNCATE)`, closes the connection and exits. Jobs
//! sent after that are answered with [`AccountError::Closed`]. Dropping the
//! last clone blocks the dropping thread until the store thread has exited,
//! so a store reopened afterwards sees everything.
//!
//! One process per data directory: [`SqliteStore::open`] takes an exclusive
//! file lock (`flock` on Linux) on `<data_dir>/herald.lock`, and the store
//! thread releases it after closing the database (before acknowledging a
//! shutdown). A second herald pointed at the same directory fails to start
//! with [`StoreError::InUse`], instead of serving half the players beside
//! the first with one account database between them.
//!
//! Safety with hostile input: every statement is parameterized; ids and
//! usernames are plain data whatever characters they contain. Length and
//! character rules are the REST layer's job (`transport::rest`).

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam::channel::{self, Receiver, Sender};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};
use tokio::sync::oneshot;
use uuid::Uuid;

use super::store::{
    generate_username, no_free_username, Account, AccountError, AccountStore, IdKind, KnownUser,
    StoreError, StoreFuture, USERNAME_ATTEMPTS,
};
use crate::ids::UserId;

/// File name of the database inside the data directory.
pub const DB_FILE_NAME: &str = "herald.sqlite3";
/// The file whose `flock` marks the data directory as in use.
pub const LOCK_FILE_NAME: &str = "herald.lock";

/// Most jobs run in one transaction. Bounds the latency a job can add to the
/// others in its batch.
pub const MAX_BATCH: usize = 256;

/// How long a batch of background jobs only waits for more to share its
/// commit. A job someone waits for never waits for this.
pub const BACKGROUND_LINGER: Duration = Duration::from_millis(5);

/// Schema version written to `PRAGMA user_version`.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id          TEXT PRIMARY KEY NOT NULL,  -- canonical lowercase UUID
    username    TEXT UNIQUE,                -- NULL only for external users whose name was taken
    custom_id   TEXT UNIQUE,                -- NULL unless created by authenticate/custom
    create_time INTEGER NOT NULL            -- unix seconds
);
CREATE TABLE IF NOT EXISTS user_device (
    id      TEXT PRIMARY KEY NOT NULL,
    user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS user_device_user_id ON user_device (user_id);
";

impl From<rusqlite::Error> for AccountError {
    fn from(error: rusqlite::Error) -> Self {
        AccountError::Store(error.to_string())
    }
}

/// Called after the batch's commit (or its failure) to answer one job.
type Deliver = Box<dyn FnOnce(Result<(), AccountError>) + Send>;
/// Runs one job inside the batch transaction (`None`: the transaction could
/// not be started, so the job only reports that) and returns how to answer it.
type Job = Box<dyn FnOnce(Option<&mut Transaction<'_>>) -> Deliver + Send>;

/// Whether a caller waits on the job (see the module doc).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Urgency {
    /// A request waits: run it now, inside its own savepoint.
    Request,
    /// Nobody waits, and the job writes with at most one statement.
    Background,
}

enum Message {
    Job(Job, Urgency),
    /// Finish what was queued before this, checkpoint, close, then signal.
    Shutdown(oneshot::Sender<()>),
}

/// Handle to the store thread. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// Jobs to the store thread. Never closed while `Inner` lives.
    sender: Sender<Message>,
    /// The store thread, joined when the last handle is dropped.
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let (ack, _ignored) = oneshot::channel();
        let _ = self.sender.send(Message::Shutdown(ack));
        let handle = match self.thread.lock() {
            Ok(mut guard) => guard.take(),
            Err(poisoned) => poisoned.into_inner().take(),
        };
        if let Some(handle) = handle {
            if handle.join().is_err() {
                tracing::error!("account store thread panicked");
            }
        }
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Creates `data_dir` and the database if needed, applies the schema,
    /// starts the store thread, and returns every known user so the engine
    /// can load its directory.
    pub fn open(data_dir: &Path) -> Result<(SqliteStore, Vec<KnownUser>), StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let lock = lock_data_dir(data_dir)?;
        let path = data_dir.join(DB_FILE_NAME);
        let sqlite = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };

        let conn = Connection::open(&path).map_err(sqlite)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(sqlite)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(sqlite)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::NoWal { path, mode });
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sqlite)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sqlite)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(sqlite)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::SchemaTooNew {
                place: path.display().to_string(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        }
        conn.execute_batch(SCHEMA).map_err(sqlite)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sqlite)?;

        let known = load_known_users(&conn).map_err(sqlite)?;
        let known = known
            .into_iter()
            .map(|(id, username)| match UserId::parse(&id) {
                Some(user_id) => Ok(KnownUser {
                    user_id,
                    username: username.unwrap_or_default(),
                }),
                None => Err(StoreError::CorruptUserId {
                    path: path.clone(),
                    id,
                }),
            })
            .collect::<Result<Vec<_>, _>>()?;

        let (sender, receiver) = channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("herald-accounts".into())
            .spawn(move || run(conn, receiver, lock))
            .map_err(StoreError::Thread)?;
        let store = SqliteStore {
            inner: Arc::new(Inner {
                sender,
                thread: Mutex::new(Some(thread)),
            }),
        };
        Ok((store, known))
    }

    /// Sends `work` to the store thread and waits for its committed result.
    async fn call<T, F>(&self, urgency: Urgency, work: F) -> Result<T, AccountError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, AccountError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T, AccountError>>();
        let job: Job = Box::new(move |txn: Option<&mut Transaction<'_>>| {
            let result = match (txn, urgency) {
                (Some(txn), Urgency::Request) => in_savepoint(txn, work),
                (Some(txn), Urgency::Background) => work(txn),
                (None, _) => Err(AccountError::Store("no transaction".into())),
            };
            Box::new(move |committed: Result<(), AccountError>| {
                // The caller may have gone away (request cancelled); that is fine.
                let _ = reply.send(committed.and(result));
            })
        });
        self.inner
            .sender
            .send(Message::Job(job, urgency))
            .map_err(|_| AccountError::Closed)?;
        answer.await.map_err(|_| AccountError::Closed)?
    }
}

impl AccountStore for SqliteStore {
    fn authenticate(
        &self,
        kind: IdKind,
        id: String,
        username: Option<String>,
        create: bool,
    ) -> StoreFuture<'_, Account> {
        Box::pin(self.call(Urgency::Request, move |conn| {
            authenticate_in(conn, kind, &id, username.as_deref(), create)
        }))
    }

    fn record_external(
        &self,
        user_id: UserId,
        username: String,
    ) -> StoreFuture<'_, Option<String>> {
        Box::pin(self.call(Urgency::Background, move |conn| {
            record_external_in(conn, user_id, &username)
        }))
    }

    fn get(&self, user_id: UserId) -> StoreFuture<'_, Option<Account>> {
        Box::pin(self.call(Urgency::Request, move |conn| get_in(conn, user_id)))
    }

    fn lookup(&self, ids: Vec<UserId>, usernames: Vec<String>) -> StoreFuture<'_, Vec<KnownUser>> {
        Box::pin(self.call(Urgency::Request, move |conn| {
            lookup_in(conn, &ids, &usernames)
        }))
    }

    /// Stops the store thread: queued work is finished and committed, the WAL
    /// is checkpointed into the main file, and the connection is closed.
    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let (ack, done) = oneshot::channel();
            if self.inner.sender.send(Message::Shutdown(ack)).is_ok() {
                let _ = done.await;
            }
        })
    }
}

/// Runs `work` in a savepoint: kept if it succeeds, rolled back if it fails,
/// so a failed job leaves no partial rows in the shared batch transaction.
fn in_savepoint<T>(
    txn: &mut Transaction<'_>,
    work: impl FnOnce(&Connection) -> Result<T, AccountError>,
) -> Result<T, AccountError> {
    let savepoint = txn.savepoint()?;
    let result = work(&savepoint)?;
    savepoint.commit()?;
    Ok(result)
}

/// The store thread's loop (see the module doc).
fn run(mut conn: Connection, receiver: Receiver<Message>, lock: Option<std::fs::File>) {
    let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
    let stop_ack = loop {
        let mut stop = None;
        let mut urgent = match receiver.recv() {
            Ok(message) => admit(message, &mut batch, &mut stop),
            // Every handle is gone (cannot happen while `Inner` lives, but be safe).
            Err(_) => {
                stop = Some(None);
                false
            }
        };
        let linger_until = Instant::now() + BACKGROUND_LINGER;
        while stop.is_none() && batch.len() < MAX_BATCH {
            let next = if urgent {
                receiver.try_recv().ok()
            } else {
                receiver.recv_deadline(linger_until).ok()
            };
            match next {
                Some(message) => urgent |= admit(message, &mut batch, &mut stop),
                None => break,
            }
        }
        if !batch.is_empty() {
            run_batch(&mut conn, &mut batch);
        }
        if let Some(ack) = stop {
            break ack;
        }
    };
    // Jobs still queued behind the stop request are dropped with the receiver;
    // their callers see `Closed`.
    drop(receiver);
    if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
        tracing::error!(%error, "account store checkpoint failed");
    }
    if let Err((_, error)) = conn.close() {
        tracing::error!(%error, "account store close failed");
    }
    // Closing the file releases the lock: a store reopened once the
    // shutdown is acknowledged finds the directory free.
    drop(lock);
    if let Some(ack) = stop_ack {
        let _ = ack.send(());
    }
}

/// Takes the exclusive lock on `<data_dir>/herald.lock` (see the module
/// doc) and returns the open file that holds it. A filesystem that does not
/// support file locks gets a warning and no lock.
fn lock_data_dir(data_dir: &Path) -> Result<Option<std::fs::File>, StoreError> {
    let path = data_dir.join(LOCK_FILE_NAME);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| StoreError::Lock {
            path: data_dir.to_path_buf(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::InUse {
            path: data_dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(error)) => {
            tracing::warn!(path = %path.display(), %error, "cannot lock the data directory; make sure no other herald uses it");
            Ok(None)
        }
    }
}

/// Adds a received message to the batch, or notes the stop request. Returns
/// whether a caller waits on it.
fn admit(
    message: Message,
    batch: &mut Vec<Job>,
    stop: &mut Option<Option<oneshot::Sender<()>>>,
) -> bool {
    match message {
        Message::Job(job, urgency) => {
            batch.push(job);
            urgency == Urgency::Request
        }
        Message::Shutdown(ack) => {
            *stop = Some(Some(ack));
            true
        }
    }
}

/// One group commit: every job in one transaction, answers after the commit.
fn run_batch(conn: &mut Connection, batch: &mut Vec<Job>) {
    let mut txn = match conn.transaction_with_behavior(TransactionBehavior::Immediate) {
        Ok(txn) => txn,
        Err(error) => {
            tracing::error!(%error, "account store cannot begin a transaction");
            let failure = AccountError::from(error);
            // Every job is still answered, with the error, and none is run.
            for job in batch.drain(..) {
                job(None)(Err(failure.clone()));
            }
            return;
        }
    };
    let deliveries: Vec<Deliver> = batch.drain(..).map(|job| job(Some(&mut txn))).collect();
    let committed = txn.commit().map_err(|error| {
        tracing::error!(%error, "account store commit failed");
        AccountError::from(error)
    });
    for deliver in deliveries {
        deliver(committed.clone());
    }
}

fn load_known_users(conn: &Connection) -> rusqlite::Result<Vec<(String, Option<String>)>> {
    let mut statement = conn.prepare("SELECT id, username FROM users")?;
    let rows = statement.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    rows.collect()
}

fn parse_stored_id(id: &str) -> Result<UserId, AccountError> {
    UserId::parse(id)
        .ok_or_else(|| AccountError::Store(format!("stored user id {id:?} is not a UUID")))
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn authenticate_in(
    conn: &Connection,
    kind: IdKind,
    id: &str,
    username: Option<&str>,
    create: bool,
) -> Result<Account, AccountError> {
    let lookup = match kind {
        IdKind::Custom => "SELECT id, username FROM users WHERE custom_id = ?1",
        IdKind::Device => {
            "SELECT u.id, u.username FROM user_device d JOIN users u ON u.id = d.user_id WHERE d.id = ?1"
        }
    };
    let existing: Option<(String, Option<String>)> = conn
        .prepare_cached(lookup)?
        .query_row([id], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    if let Some((user_id, stored_name)) = existing {
        return Ok(Account {
            user_id: parse_stored_id(&user_id)?,
            username: stored_name.unwrap_or_default(),
            created: false,
        });
    }
    if !create {
        return Err(AccountError::NotFound);
    }

    let username = match username.filter(|name| !name.is_empty()) {
        Some(name) if username_taken(conn, name)? => return Err(AccountError::UsernameTaken),
        Some(name) => name.to_owned(),
        None => free_generated_username(conn)?,
    };
    let user_id = UserId(Uuid::new_v4());
    let mut id_text = [0u8; 36];
    let id_text = user_id.encode(&mut id_text);
    match kind {
        IdKind::Custom => {
            conn.prepare_cached(
                "INSERT INTO users (id, username, custom_id, create_time) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![id_text, username, id, now_unix()])?;
        }
        IdKind::Device => {
            conn.prepare_cached(
                "INSERT INTO users (id, username, create_time) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![id_text, username, now_unix()])?;
            conn.prepare_cached("INSERT INTO user_device (id, user_id) VALUES (?1, ?2)")?
                .execute(params![id, id_text])?;
        }
    }
    Ok(Account {
        user_id,
        username,
        created: true,
    })
}

fn record_external_in(
    conn: &Connection,
    user_id: UserId,
    username: &str,
) -> Result<Option<String>, AccountError> {
    let mut id_text = [0u8; 36];
    let id_text = user_id.encode(&mut id_text);
    let existing: Option<Option<String>> = conn
        .prepare_cached("SELECT username FROM users WHERE id = ?1")?
        .query_row([id_text], |row| row.get(0))
        .optional()?;
    if let Some(stored) = existing {
        return Ok(stored);
    }
    let stored = if username.is_empty() || username_taken(conn, username)? {
        None
    } else {
        Some(username.to_owned())
    };
    conn.prepare_cached("INSERT INTO users (id, username, create_time) VALUES (?1, ?2, ?3)")?
        .execute(params![id_text, stored, now_unix()])?;
    Ok(stored)
}

fn get_in(conn: &Connection, user_id: UserId) -> Result<Option<Account>, AccountError> {
    let mut id_text = [0u8; 36];
    let id_text = user_id.encode(&mut id_text);
    let stored: Option<Option<String>> = conn
        .prepare_cached("SELECT username FROM users WHERE id = ?1")?
        .query_row([id_text], |row| row.get(0))
        .optional()?;
    Ok(stored.map(|username| Account {
        user_id,
        username: username.unwrap_or_default(),
        created: false,
    }))
}

/// The users with these ids or usernames (SQLite has no `= ANY`: one
/// indexed lookup per item; a follow request holds about a hundred at most).
fn lookup_in(
    conn: &Connection,
    ids: &[UserId],
    usernames: &[String],
) -> Result<Vec<KnownUser>, AccountError> {
    let mut found: Vec<KnownUser> = Vec::new();
    let mut by_id = conn.prepare_cached("SELECT id, username FROM users WHERE id = ?1")?;
    let mut by_name = conn.prepare_cached("SELECT id, username FROM users WHERE username = ?1")?;
    let mut id_text = [0u8; 36];
    for id in ids {
        let row = by_id
            .query_row([id.encode(&mut id_text)], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .optional()?;
        found.extend(row.map(known_user).transpose()?);
    }
    for name in usernames {
        let row = by_name
            .query_row([name], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        found.extend(row.map(known_user).transpose()?);
    }
    found.sort_unstable();
    found.dedup();
    Ok(found)
}

fn known_user((id, username): (String, Option<String>)) -> Result<KnownUser, AccountError> {
    Ok(KnownUser {
        user_id: parse_stored_id(&id)?,
        username: username.unwrap_or_default(),
    })
}

fn username_taken(conn: &Connection, username: &str) -> Result<bool, AccountError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM users WHERE username = ?1")?
        .exists([username])?)
}

/// A generated username nobody holds. The check and the insert that follows
/// run in the same transaction on the only connection, so nobody can take it
/// in between.
fn free_generated_username(conn: &Connection) -> Result<String, AccountError> {
    for _ in 0..USERNAME_ATTEMPTS {
        let candidate = generate_username();
        if !username_taken(conn, &candidate)? {
            return Ok(candidate);
        }
    }
    Err(no_free_username())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn open(dir: &Path) -> (SqliteStore, Vec<KnownUser>) {
        SqliteStore::open(dir).expect("open store")
    }

    /// A storm of background records (more than one batch) mixed with
    /// requests: every job is answered, the requests' accounts and every
    /// recorded user are there after reopening, and a username claimed twice
    /// in the storm goes to exactly one user.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_storm_of_background_records_and_requests_all_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = open(dir.path());
        let users: Vec<UserId> = (0..MAX_BATCH * 2 + 7)
            .map(|_| UserId(Uuid::new_v4()))
            .collect();
        let mut records = Vec::new();
        for (i, user) in users.iter().enumerate() {
            let name = if i < 2 {
                "twice".to_owned()
            } else {
                format!("storm{i}")
            };
            let store = store.clone();
            let user = *user;
            records.push(tokio::spawn(async move {
                store.record_external(user, name).await
            }));
        }
        let request = tokio::time::timeout(
            Duration::from_secs(30),
            store.authenticate(IdKind::Device, "device-in-storm".into(), None, true),
        )
        .await
        .expect("a request is answered during the storm")
        .expect("authenticated");
        let mut twice = 0;
        for record in records {
            if record.await.expect("join").expect("recorded") == Some("twice".to_owned()) {
                twice += 1;
            }
        }
        assert_eq!(twice, 1, "a username goes to one user");
        store.shutdown().await;
        let (reopened, known) = open(dir.path());
        assert_eq!(known.len(), users.len() + 1);
        for user in &users {
            assert!(reopened.get(*user).await.expect("get").is_some(), "{user}");
        }
        assert!(reopened.get(request.user_id).await.expect("get").is_some());
    }

    #[tokio::test]
    async fn authenticate_creates_then_finds_the_same_account() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, known) = open(dir.path());
        assert!(known.is_empty());

        let created = store
            .authenticate(
                IdKind::Custom,
                "custom-123".into(),
                Some("alice".into()),
                true,
            )
            .await
            .expect("create");
        assert!(created.created);
        assert_eq!(created.username, "alice");
        assert_eq!(created.user_id.0.get_version_num(), 4);

        let found = store
            .authenticate(
                IdKind::Custom,
                "custom-123".into(),
                Some("ignored".into()),
                true,
            )
            .await
            .expect("find");
        assert_eq!(found.user_id, created.user_id);
        assert_eq!(found.username, "alice");
        assert!(!found.created);

        let fetched = store.get(created.user_id).await.expect("get");
        assert_eq!(fetched.map(|a| a.username), Some("alice".to_string()));
        assert_eq!(store.get(UserId(Uuid::new_v4())).await, Ok(None));
    }

    #[tokio::test]
    async fn lookup_finds_users_by_id_and_by_name_each_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = open(dir.path());
        let alice = store
            .authenticate(
                IdKind::Custom,
                "custom-alice".into(),
                Some("alice".into()),
                true,
            )
            .await
            .expect("create");
        let external = UserId(Uuid::new_v4());
        store
            .record_external(external, "".into())
            .await
            .expect("record");
        let nobody = UserId(Uuid::new_v4());
        let mut found = store
            .lookup(
                vec![alice.user_id, external, nobody],
                vec!["alice".into(), "nobody".into()],
            )
            .await
            .expect("lookup");
        found.sort();
        let mut expected = vec![
            KnownUser {
                user_id: alice.user_id,
                username: "alice".into(),
            },
            KnownUser {
                user_id: external,
                username: String::new(),
            },
        ];
        expected.sort();
        assert_eq!(found, expected);
        assert_eq!(store.lookup(Vec::new(), Vec::new()).await, Ok(Vec::new()));
    }

    #[tokio::test]
    async fn unknown_id_without_create_is_not_found() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = open(dir.path());
        let result = store
            .authenticate(IdKind::Device, "device-123456".into(), None, false)
            .await;
        assert_eq!(result, Err(AccountError::NotFound));
    }

    #[tokio::test]
    async fn taken_username_is_refused_on_create() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = open(dir.path());
        store
            .authenticate(
                IdKind::Custom,
                "first-id".into(),
                Some("alice".into()),
                true,
            )
            .await
            .expect("create");
        let result = store
            .authenticate(
                IdKind::Device,
                "second-device".into(),
                Some("alice".into()),
                true,
            )
            .await;
        assert_eq!(result, Err(AccountError::UsernameTaken));
        // The refused device id was not stored.
        let result = store
            .authenticate(IdKind::Device, "second-device".into(), None, false)
            .await;
        assert_eq!(result, Err(AccountError::NotFound));
        // Usernames are case-sensitive, like Nakama's.
        let other = store
            .authenticate(
                IdKind::Device,
                "second-device".into(),
                Some("Alice".into()),
                true,
            )
            .await
            .expect("create");
        assert_eq!(other.username, "Alice");
    }

    #[tokio::test]
    async fn missing_username_is_generated_from_ten_letters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = open(dir.path());
        let mut names = HashSet::new();
        for i in 0..20 {
            let account = store
                .authenticate(IdKind::Custom, format!("generated-{i}"), None, true)
                .await
                .expect("create");
            assert_eq!(account.username.len(), 10);
            assert!(account.username.bytes().all(|b| b.is_ascii_alphabetic()));
            names.insert(account.username);
        }
        assert_eq!(names.len(), 20);
    }

    #[tokio::test]
    async fn custom_and_device_ids_are_separate_namespaces() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = open(dir.path());
        let custom = store
            .authenticate(IdKind::Custom, "same-string-id".into(), None, true)
            .await
            .expect("custom");
        let device = store
            .authenticate(IdKind::Device, "same-string-id".into(), None, true)
            .await
            .expect("device");
        assert!(custom.created && device.created);
        assert_ne!(custom.user_id, device.user_id);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_authenticates_of_one_new_id_make_exactly_one_account() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = open(dir.path());
        let tasks: Vec<_> = (0..500)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .authenticate(IdKind::Custom, "contended-id".into(), None, true)
                        .await
                })
            })
            .collect();
        let mut accounts = Vec::new();
        for task in tasks {
            accounts.push(task.await.expect("join").expect("authenticate"));
        }
        assert_eq!(accounts.iter().filter(|a| a.created).count(), 1);
        let ids: HashSet<_> = accounts.iter().map(|a| a.user_id).collect();
        assert_eq!(ids.len(), 1);
        let names: HashSet<_> = accounts.iter().map(|a| a.username.clone()).collect();
        assert_eq!(names.len(), 1);
    }

    #[tokio::test]
    async fn a_second_store_on_the_same_directory_is_refused_until_the_first_closes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = open(dir.path());
        match SqliteStore::open(dir.path()) {
            Err(StoreError::InUse { path }) => assert_eq!(path, dir.path()),
            other => panic!("expected InUse, got {:?}", other.map(|_| ())),
        }
        // The lock is the only thing the refused open left behind: the
        // first store still works.
        let account = store
            .authenticate(IdKind::Custom, "lockcheck".into(), None, true)
            .await
            .expect("authenticate");
        store.shutdown().await;
        // Released with the shutdown's acknowledgement, before the last handle goes.
        let (again, known) = open(dir.path());
        assert!(known.iter().any(|k| k.user_id == account.user_id));
        drop(again);
        drop(store);
    }

    #[tokio::test]
    async fn everything_is_there_after_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = open(dir.path());
        let custom = store
            .authenticate(
                IdKind::Custom,
                "persist-custom".into(),
                Some("carol".into()),
                true,
            )
            .await
            .expect("custom");
        let device = store
            .authenticate(IdKind::Device, "persist-device".into(), None, true)
            .await
            .expect("device");
        let external = UserId(Uuid::new_v4());
        assert_eq!(
            store.record_external(external, "dave".into()).await,
            Ok(Some("dave".into()))
        );
        store.shutdown().await;
        assert_eq!(store.get(custom.user_id).await, Err(AccountError::Closed));
        drop(store);

        let (store, known) = open(dir.path());
        let mut known: Vec<_> = known.into_iter().map(|k| (k.user_id, k.username)).collect();
        known.sort();
        let mut expected = vec![
            (custom.user_id, "carol".to_string()),
            (device.user_id, device.username.clone()),
            (external, "dave".to_string()),
        ];
        expected.sort();
        assert_eq!(known, expected);

        let again = store
            .authenticate(IdKind::Device, "persist-device".into(), None, false)
            .await
            .expect("find");
        assert_eq!(again.user_id, device.user_id);
        assert!(!again.created);
    }

    #[tokio::test]
    async fn external_user_with_a_taken_username_is_stored_without_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = open(dir.path());
        store
            .authenticate(IdKind::Custom, "owner-id".into(), Some("erin".into()), true)
            .await
            .expect("create");
        let external = UserId(Uuid::new_v4());
        assert_eq!(
            store.record_external(external, "erin".into()).await,
            Ok(None)
        );
        let stored = store.get(external).await.expect("get").expect("stored");
        assert_eq!(stored.username, "");
        // Known users are left alone.
        assert_eq!(
            store.record_external(external, "frank".into()).await,
            Ok(None)
        );
        let second = UserId(Uuid::new_v4());
        assert_eq!(
            store.record_external(second, "frank".into()).await,
            Ok(Some("frank".into()))
        );
        assert_eq!(
            store.record_external(second, "other".into()).await,
            Ok(Some("frank".into()))
        );
    }

    #[tokio::test]
    async fn sql_metacharacters_are_plain_data() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) = open(dir.path());
        let nasty_ids = [
            "'; DROP TABLE users; --",
            "\" OR 1=1 --",
            "%_%\\",
            "x'); DELETE FROM user_device; --",
        ];
        let nasty_name = "Robert'); DROP TABLE users;--";
        let first = store
            .authenticate(
                IdKind::Custom,
                nasty_ids[0].into(),
                Some(nasty_name.into()),
                true,
            )
            .await
            .expect("create");
        assert_eq!(first.username, nasty_name);
        for id in &nasty_ids[1..] {
            let account = store
                .authenticate(IdKind::Device, (*id).into(), Some(format!("{id}?")), true)
                .await
                .expect("create");
            assert!(account.created);
        }
        // LIKE wildcards are not wildcards: "%_%\\" matches only itself.
        assert_eq!(
            store
                .authenticate(IdKind::Device, "%%".into(), None, false)
                .await,
            Err(AccountError::NotFound)
        );
        let again = store
            .authenticate(IdKind::Custom, nasty_ids[0].into(), None, false)
            .await
            .expect("find");
        assert_eq!(again.user_id, first.user_id);
        for id in &nasty_ids[1..] {
            let found = store
                .authenticate(IdKind::Device, (*id).into(), None, false)
                .await
                .expect("find");
            assert!(!found.created);
        }
    }
}

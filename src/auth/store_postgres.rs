//! Accounts in Postgres (`--database-url`), shared by every Herald node
//! given the same URL.
//!
//! Threads: one dedicated thread (`herald-postgres`) runs a single-threaded
//! tokio runtime that owns the connection pool (deadpool-postgres over
//! tokio-postgres) and every connection's I/O. A call on any runtime thread
//! spawns its query onto that runtime and awaits the answer, so no shard
//! thread ever waits on Postgres or drives its sockets, and the pool outlives
//! any one shard. A call is bounded by [`OPERATION_TIMEOUT`] (pool wait,
//! connect and queries together).
//!
//! Uniqueness comes from Postgres's unique indexes, not from this process:
//! an account is created with `INSERT … ON CONFLICT DO NOTHING RETURNING`,
//! and when nothing is returned the id is selected again. Concurrent
//! authenticates of one new custom or device id, on one node or several,
//! therefore make exactly one account: the first insert wins, the others
//! wait for its commit on the index, insert nothing, and find it. A
//! conflict on a username given by the client is [`AccountError::UsernameTaken`];
//! a generated one is drawn again. A device account is two rows (`users`,
//! `user_device`) written in one transaction.
//!
//! Start-up ([`PostgresStore::connect`]) stops with a clear error when the
//! URL is unusable, Postgres cannot be reached or refuses the credentials
//! within [`settings::CONNECT_TIMEOUT`], or the schema is newer than this
//! build; otherwise it upgrades the schema ([`schema`]) before the first
//! request. At runtime a failed call is [`AccountError::Store`] (the REST
//! layer answers 500 with Nakama's text); websocket sessions never touch
//! the store except to record users first seen in a token, in the
//! background. The pool drops closed connections and opens new ones on
//! demand, so service resumes by itself once Postgres is back.
//!
//! Durability is Postgres's: a call is answered after its commit.
//!
//! Lifecycle: [`AccountStore::shutdown`] (or dropping the last handle)
//! closes the pool and stops the thread; calls after that fail with
//! [`AccountError::Closed`].

pub mod schema;
pub mod settings;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod};
use tokio::sync::oneshot;
use uuid::Uuid;

use self::schema::Upgrade;
use self::settings::{Settings, CONNECT_TIMEOUT};
use super::store::{
    generate_username, no_free_username, Account, AccountError, AccountStore, IdKind, KnownUser,
    StoreError, StoreFuture, USERNAME_ATTEMPTS,
};
use crate::config::DatabaseUrl;
use crate::ids::UserId;

/// Most connections one node keeps open.
pub const POOL_SIZE: usize = 16;

/// Bound on one call: waiting for a connection, opening one, and its queries.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest username the `users.username` column holds, in characters.
const USERNAME_COLUMN_CHARS: usize = 128;

const FIND_BY_CUSTOM_ID: &str = "SELECT id, username FROM users WHERE custom_id = $1";
const FIND_BY_DEVICE_ID: &str = "SELECT u.id, u.username FROM user_device d \
     JOIN users u ON u.id = d.user_id WHERE d.id = $1";
const INSERT_CUSTOM_USER: &str = "INSERT INTO users (id, username, custom_id) VALUES ($1, $2, $3) \
     ON CONFLICT DO NOTHING RETURNING id";
const INSERT_USER: &str =
    "INSERT INTO users (id, username) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING id";
const INSERT_DEVICE: &str =
    "INSERT INTO user_device (id, user_id) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING id";
const USERNAME_OF: &str = "SELECT username FROM users WHERE id = $1";
const LOOKUP: &str = "SELECT id, username FROM users WHERE id = ANY($1) OR username = ANY($2)";

/// Handle to the Postgres account store (see the module doc).
pub struct PostgresStore {
    /// Connections; used only on the store runtime.
    pool: Pool,
    /// The store thread's runtime, where every call runs.
    runtime: tokio::runtime::Handle,
    /// Set by shutdown: calls fail with `Closed` from then on.
    closed: AtomicBool,
    /// Tells the store thread to stop; taken by the first shutdown.
    stop: Mutex<Option<oneshot::Sender<()>>>,
    /// The store thread, joined by shutdown or drop.
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The URL with its password hidden, for log lines.
    url: String,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects, checks the credentials and the schema version, upgrades the
    /// schema, and starts the store thread. Blocks the calling thread until
    /// then (at most a few seconds: see [`settings::CONNECT_TIMEOUT`]).
    pub fn connect(url: &DatabaseUrl) -> Result<PostgresStore, StoreError> {
        let settings = Settings::parse(url)?;
        let redacted = url.redacted();
        let (started, start_result) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread_url = redacted.clone();
        let thread = std::thread::Builder::new()
            .name("herald-postgres".into())
            .spawn(move || run(settings, thread_url, started, stopped))
            .map_err(StoreError::Thread)?;
        let outcome = start_result.recv().unwrap_or_else(|_| {
            Err(StoreError::Postgres {
                url: redacted.clone(),
                reason: "the store thread ended during start-up".into(),
            })
        });
        let (runtime, pool) = match outcome {
            Ok(started) => started,
            Err(error) => {
                let _ = thread.join();
                return Err(error);
            }
        };
        Ok(PostgresStore {
            pool,
            runtime,
            closed: AtomicBool::new(false),
            stop: Mutex::new(Some(stop)),
            thread: Mutex::new(Some(thread)),
            url: redacted,
        })
    }

    /// Runs `op` with a pooled connection on the store runtime, bounded by
    /// [`OPERATION_TIMEOUT`].
    fn call<T, F, Fut>(&self, op: F) -> StoreFuture<'static, T>
    where
        T: Send + 'static,
        F: FnOnce(Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, AccountError>> + Send + 'static,
    {
        if self.closed.load(Ordering::Acquire) {
            return Box::pin(async { Err(AccountError::Closed) });
        }
        let pool = self.pool.clone();
        let task = self.runtime.spawn(async move {
            let work = async move {
                let client = pool.get().await.map_err(pool_error)?;
                op(client).await
            };
            tokio::time::timeout(OPERATION_TIMEOUT, work)
                .await
                .unwrap_or_else(|_| {
                    Err(AccountError::Store(format!(
                        "no answer from Postgres within {} s",
                        OPERATION_TIMEOUT.as_secs()
                    )))
                })
        });
        // A task the stopped runtime dropped: the store is shut down.
        Box::pin(async move { task.await.unwrap_or(Err(AccountError::Closed)) })
    }

    /// Stops the store thread and waits for it (see the module doc).
    fn stop(&self) {
        self.closed.store(true, Ordering::Release);
        if let Some(stop) = lock(&self.stop).take() {
            let _ = stop.send(());
        }
        if let Some(thread) = lock(&self.thread).take() {
            if thread.join().is_err() {
                tracing::error!("account store thread panicked");
            }
        }
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.stop();
    }
}

impl AccountStore for PostgresStore {
    fn authenticate(
        &self,
        kind: IdKind,
        id: String,
        username: Option<String>,
        create: bool,
    ) -> StoreFuture<'_, Account> {
        self.call(move |mut client| async move {
            authenticate_in(&mut client, kind, &id, username, create).await
        })
    }

    fn record_external(
        &self,
        user_id: UserId,
        username: String,
    ) -> StoreFuture<'_, Option<String>> {
        self.call(move |client| async move { record_external_in(&client, user_id, username).await })
    }

    fn get(&self, user_id: UserId) -> StoreFuture<'_, Option<Account>> {
        self.call(move |client| async move {
            let stored = username_of(&client, user_id).await?;
            Ok(stored.map(|username| Account {
                user_id,
                username: username.unwrap_or_default(),
                created: false,
            }))
        })
    }

    fn lookup(&self, ids: Vec<UserId>, usernames: Vec<String>) -> StoreFuture<'_, Vec<KnownUser>> {
        self.call(move |client| async move {
            let ids: Vec<Uuid> = ids.into_iter().map(|id| id.0).collect();
            // Text with NUL cannot be sent, nor stored: no such user exists.
            let names: Vec<String> = usernames
                .into_iter()
                .filter(|n| !n.contains('\0'))
                .collect();
            let statement = client.prepare_cached(LOOKUP).await.map_err(db_error)?;
            let rows = client
                .query(&statement, &[&ids, &names])
                .await
                .map_err(db_error)?;
            Ok(rows
                .iter()
                .map(|row| KnownUser {
                    user_id: UserId(row.get(0)),
                    username: row.get::<_, Option<String>>(1).unwrap_or_default(),
                })
                .collect())
        })
    }

    /// Closes the pool (open connections end) and stops the store thread.
    fn shutdown(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        // Joining the thread blocks for as long as its runtime takes to drop
        // its tasks: moments. It runs beside the caller's runtime, not on it.
        Box::pin(async move { self.stop() })
    }
}

/// The store thread: builds the runtime, connects and upgrades the schema,
/// reports, then keeps the runtime (and so the pool) running until told to stop.
fn run(
    settings: Settings,
    url: String,
    started: std::sync::mpsc::Sender<Result<(tokio::runtime::Handle, Pool), StoreError>>,
    stopped: oneshot::Receiver<()>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            let _ = started.send(Err(StoreError::Thread(error)));
            return;
        }
    };
    let pool = match runtime.block_on(open(&settings, &url)) {
        Ok(pool) => pool,
        Err(error) => {
            let _ = started.send(Err(error));
            return;
        }
    };
    if started
        .send(Ok((runtime.handle().clone(), pool.clone())))
        .is_err()
    {
        return;
    }
    runtime.block_on(async {
        let _ = stopped.await;
    });
    pool.close();
    // Dropping the runtime drops every task on it: connections close, and
    // calls still in flight end with `Closed`.
    drop(runtime);
}

/// Start-up: one connection of its own checks that Postgres answers and
/// takes the credentials, then the schema is checked and upgraded; then the
/// pool (which opens connections on demand).
async fn open(settings: &Settings, url: &str) -> Result<Pool, StoreError> {
    let fail = |reason: String| StoreError::Postgres {
        url: url.to_owned(),
        reason,
    };
    let connecting = settings.postgres.connect(settings.tls.clone());
    let (mut client, connection) = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .map_err(|_| {
            fail(format!(
                "no answer within {} s (is it running, and is this its address?)",
                CONNECT_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|error| fail(describe(&error)))?;
    let connection = tokio::spawn(connection);
    let upgrade = tokio::time::timeout(OPERATION_TIMEOUT, schema::upgrade(&mut client))
        .await
        .map_err(|_| fail("the schema check did not finish in time".into()))?
        .map_err(|error| fail(format!("schema upgrade failed: {}", describe(&error))))?;
    drop(client);
    let _ = connection.await;
    match upgrade {
        Upgrade::TooNew { found } => {
            return Err(StoreError::SchemaTooNew {
                place: url.to_owned(),
                found,
                supported: schema::latest_version(),
            })
        }
        Upgrade::Applied { from, to } => {
            tracing::info!(url, from, to, "account database schema upgraded");
        }
        Upgrade::Current => {}
    }
    let manager = Manager::from_config(
        settings.postgres.clone(),
        settings.tls.clone(),
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(POOL_SIZE)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(CONNECT_TIMEOUT))
        .build()
        .map_err(|error| fail(format!("cannot build the connection pool: {error}")))
}

async fn authenticate_in(
    client: &mut Object,
    kind: IdKind,
    id: &str,
    username: Option<String>,
    create: bool,
) -> Result<Account, AccountError> {
    if let Some(found) = find(client, kind, id).await? {
        return Ok(found);
    }
    if !create {
        return Err(AccountError::NotFound);
    }
    let given = username.filter(|name| !name.is_empty());
    for _ in 0..USERNAME_ATTEMPTS {
        let name = given.clone().unwrap_or_else(generate_username);
        let user_id = UserId(Uuid::new_v4());
        if insert(client, kind, id, user_id, &name).await? {
            return Ok(Account {
                user_id,
                username: name,
                created: true,
            });
        }
        // Nothing inserted: the id was created meanwhile (here or on
        // another node), or the username is taken.
        if let Some(found) = find(client, kind, id).await? {
            return Ok(found);
        }
        if given.is_some() {
            return Err(AccountError::UsernameTaken);
        }
    }
    Err(no_free_username())
}

/// The account of this custom or device id, if any.
async fn find(client: &Object, kind: IdKind, id: &str) -> Result<Option<Account>, AccountError> {
    let sql = match kind {
        IdKind::Custom => FIND_BY_CUSTOM_ID,
        IdKind::Device => FIND_BY_DEVICE_ID,
    };
    let statement = client.prepare_cached(sql).await.map_err(db_error)?;
    let row = client
        .query_opt(&statement, &[&id])
        .await
        .map_err(db_error)?;
    Ok(row.map(|row| Account {
        user_id: UserId(row.get(0)),
        username: row.get::<_, Option<String>>(1).unwrap_or_default(),
        created: false,
    }))
}

/// Inserts a new account; false if a unique index refused it (nothing is left behind then).
async fn insert(
    client: &mut Object,
    kind: IdKind,
    id: &str,
    user_id: UserId,
    username: &str,
) -> Result<bool, AccountError> {
    match kind {
        IdKind::Custom => {
            let statement = client
                .prepare_cached(INSERT_CUSTOM_USER)
                .await
                .map_err(db_error)?;
            let row = client
                .query_opt(&statement, &[&user_id.0, &username, &id])
                .await
                .map_err(db_error)?;
            Ok(row.is_some())
        }
        IdKind::Device => {
            let txn = client.transaction().await.map_err(db_error)?;
            let user = txn.prepare_cached(INSERT_USER).await.map_err(db_error)?;
            let device = txn.prepare_cached(INSERT_DEVICE).await.map_err(db_error)?;
            let inserted = txn
                .query_opt(&user, &[&user_id.0, &username])
                .await
                .map_err(db_error)?
                .is_some()
                && txn
                    .query_opt(&device, &[&id, &user_id.0])
                    .await
                    .map_err(db_error)?
                    .is_some();
            if inserted {
                txn.commit().await.map_err(db_error)?;
            } else {
                txn.rollback().await.map_err(db_error)?;
            }
            Ok(inserted)
        }
    }
}

async fn record_external_in(
    client: &Object,
    user_id: UserId,
    username: String,
) -> Result<Option<String>, AccountError> {
    if let Some(stored) = username_of(client, user_id).await? {
        return Ok(stored);
    }
    let statement = client.prepare_cached(INSERT_USER).await.map_err(db_error)?;
    // A name the column cannot hold is stored as none, like a taken one.
    let storable = !username.is_empty()
        && !username.contains('\0')
        && username.chars().count() <= USERNAME_COLUMN_CHARS;
    if storable
        && client
            .query_opt(&statement, &[&user_id.0, &username])
            .await
            .map_err(db_error)?
            .is_some()
    {
        return Ok(Some(username));
    }
    // The name is taken (or unusable), or another node recorded this user
    // meanwhile: store it without a name unless it exists, then read back.
    client
        .query_opt(&statement, &[&user_id.0, &None::<&str>])
        .await
        .map_err(db_error)?;
    Ok(username_of(client, user_id).await?.flatten())
}

/// `Some(stored username)` if the user exists.
async fn username_of(
    client: &Object,
    user_id: UserId,
) -> Result<Option<Option<String>>, AccountError> {
    let statement = client.prepare_cached(USERNAME_OF).await.map_err(db_error)?;
    let row = client
        .query_opt(&statement, &[&user_id.0])
        .await
        .map_err(db_error)?;
    Ok(row.map(|row| row.get(0)))
}

/// A text for logs: the error, its cause, and for a server error its
/// severity, message and SQLSTATE, but never its DETAIL (which can quote a
/// row's values, such as a custom id).
pub(crate) fn describe(error: &tokio_postgres::Error) -> String {
    if let Some(db) = error.as_db_error() {
        return format!("{}: {} ({})", db.severity(), db.message(), db.code().code());
    }
    match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    }
}

fn db_error(error: tokio_postgres::Error) -> AccountError {
    AccountError::Store(describe(&error))
}

fn pool_error(error: PoolError) -> AccountError {
    match error {
        PoolError::Backend(error) => db_error(error),
        PoolError::Closed => AccountError::Closed,
        other => AccountError::Store(format!("no Postgres connection: {other}")),
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

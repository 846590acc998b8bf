//! Authentication: session tokens and the account store.
//!
//! * [`token`]: HS256 session and refresh tokens with Nakama's exact claims.
//!   Pure and immutable; shared as `Arc<Tokens>` by every runtime thread.
//! * [`store`]: the [`AccountStore`] trait every backend implements, and the
//!   types and errors they share. The rest of Herald holds an [`Accounts`]
//!   handle (`Arc<dyn AccountStore>`).
//! * [`store_sqlite`]: the embedded default, one SQLite file owned by one
//!   dedicated thread that group-commits the requests of all runtime threads.
//! * [`store_postgres`]: `--database-url`, accounts in a Postgres that several
//!   nodes share; a pool on a dedicated thread, versioned migrations, TLS.
//!
//! The HTTP side (Basic auth, request validation, Nakama's error texts) lives
//! in `transport::rest`; this module knows nothing about HTTP.

pub mod store;
pub mod store_postgres;
pub mod store_sqlite;
pub mod token;

pub use store::{
    Account, AccountError, AccountStore, Accounts, IdKind, KnownUser, StoreError, StoreFuture,
};
pub use store_postgres::PostgresStore;
pub use store_sqlite::SqliteStore;
pub use token::{IssuedSession, SessionClaims, TokenError, Tokens, Vars};

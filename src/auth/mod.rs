//! Authentication: session tokens and the embedded account store.
//!
//! * [`token`]: HS256 session and refresh tokens with Nakama's exact claims.
//!   Pure and immutable; shared as `Arc<Tokens>` by every runtime thread.
//! * [`accounts`]: the SQLite account store, owned by one dedicated thread
//!   that group-commits the requests of all runtime threads.
//!
//! The HTTP side (Basic auth, request validation, Nakama's error texts) lives
//! in `transport::rest`; this module knows nothing about HTTP.

pub mod accounts;
pub mod token;

pub use accounts::{Account, AccountError, AccountStore, IdKind, KnownUser, StoreError};
pub use token::{IssuedSession, SessionClaims, TokenError, Tokens, Vars};

//! The transport: everything between a socket and the engine.
//!
//! * [`listener`]: `SO_REUSEPORT` listeners, one accept loop per shard.
//! * [`http`]: hyper HTTP/1.1 routing and CORS for `GET /`, `GET /ws` and REST.
//! * [`rest`]: the REST endpoints (authenticate, session refresh).
//! * [`status_page`]: the live status page at `/status-demo`, embedded in the binary.
//! * [`tls`]: rustls for `--tls-cert`/`--tls-key`, and moving a TLS session between shards.
//! * [`upgrade`]: the `/ws` handshake: format, token, upgrade, hand-off to the home shard.
//! * [`connection`]: a session's task: frames in, requests to the shard, outbox out.
//! * [`frame_reader`] and [`writer`]: websocket frames in, coalesced `writev` out.
//!
//! Every piece runs on a shard thread (see [`crate::engine`]); the only state
//! shared across shards is [`ServerState`], which is read-only apart from
//! atomic counters.

pub mod connection;
pub mod frame_reader;
pub mod http;
pub mod listener;
pub mod rest;
pub mod status_page;
pub mod tls;
pub mod upgrade;
pub mod writer;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use crate::auth::{Accounts, Tokens};
use crate::config::Config;

/// What every shard's transport shares: settings, token keys, the account
/// store, and the count of open websockets.
pub struct ServerState {
    pub config: Config,
    pub tokens: Arc<Tokens>,
    pub accounts: Accounts,
    /// Open websocket sessions, against `max_connections`.
    pub websockets: AtomicUsize,
    /// Most websocket sessions at once; past it the upgrade gets 503.
    pub max_connections: usize,
    /// The TLS acceptor when `--tls-cert`/`--tls-key` are set.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

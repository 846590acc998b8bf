//! Configuration: command-line flags, each with a `HERALD_*` environment
//! variable, and embedded defaults.
//!
//! Precedence is flag > environment > default. Every field is read once at
//! start-up; nothing here changes while the server runs.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;

/// `herald --version`: the crate version and the git commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("HERALD_GIT_COMMIT"),
    ")"
);

/// Nakama's default server key; a warning is logged while it is in use.
pub const DEFAULT_SERVER_KEY: &str = "defaultkey";
/// Nakama's default session token key.
pub const DEFAULT_ENCRYPTION_KEY: &str = "defaultencryptionkey";
/// Nakama's default runtime `http_key`, used by the backend API.
pub const DEFAULT_HTTP_KEY: &str = "defaulthttpkey";
/// Nakama's default refresh token key.
pub const DEFAULT_REFRESH_ENCRYPTION_KEY: &str = "defaultrefreshencryptionkey";

/// Herald: a Nakama-compatible realtime status server.
#[derive(Debug, Clone, Parser)]
#[command(name = "herald", version = VERSION, about, long_about = None)]
pub struct Config {
    /// Address of the one HTTP listener: REST, `GET /ws` and `GET /`.
    #[arg(long, env = "HERALD_LISTEN", default_value = "0.0.0.0:7350")]
    pub listen: SocketAddr,

    /// Directory of the embedded account store (SQLite); created if missing.
    #[arg(long, env = "HERALD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Server key that clients send as the Basic-auth user on REST calls.
    #[arg(long, env = "HERALD_SERVER_KEY", default_value = DEFAULT_SERVER_KEY, hide_default_value = true)]
    pub server_key: String,

    /// HS256 key of session tokens. Use the same key as an existing Nakama to accept its tokens.
    #[arg(long, env = "HERALD_ENCRYPTION_KEY", default_value = DEFAULT_ENCRYPTION_KEY, hide_default_value = true)]
    pub encryption_key: String,

    /// HS256 key of refresh tokens.
    #[arg(long, env = "HERALD_REFRESH_ENCRYPTION_KEY", default_value = DEFAULT_REFRESH_ENCRYPTION_KEY, hide_default_value = true)]
    pub refresh_encryption_key: String,

    /// Session token lifetime in seconds (Nakama's default is 60).
    #[arg(long, env = "HERALD_TOKEN_EXPIRY_SEC", default_value_t = 7200, value_parser = clap::value_parser!(u64).range(1..))]
    pub token_expiry_sec: u64,

    /// Refresh token lifetime in seconds (Nakama's default is 3600).
    #[arg(long, env = "HERALD_REFRESH_TOKEN_EXPIRY_SEC", default_value_t = 604_800, value_parser = clap::value_parser!(u64).range(1..))]
    pub refresh_token_expiry_sec: u64,

    /// Largest websocket message accepted from a client, in bytes; larger ones close the socket with 1009.
    #[arg(long, env = "HERALD_MAX_MESSAGE_BYTES", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(16..=(64 << 20)))]
    pub max_message_bytes: u64,

    /// Number of engine shards, one pinned thread each. 0 means one per CPU core.
    #[arg(long, env = "HERALD_SHARDS", default_value_t = 0)]
    pub shards: usize,

    /// Bytes a session may have queued for sending before it is closed
    /// with `session outgoing queue full`.
    #[arg(long, env = "HERALD_OUTGOING_QUEUE_BYTES", default_value_t = 2 << 20, value_parser = clap::value_parser!(u64).range(1024..))]
    pub outgoing_queue_bytes: u64,

    /// Users one session may follow; past it a follow is answered with error 3 `Too many follows`.
    #[arg(long, env = "HERALD_MAX_FOLLOWS", default_value_t = 100_000)]
    pub max_follows: usize,

    /// Keep follows of well-formed user ids that Herald has never seen, for
    /// deployments whose accounts live elsewhere (Nakama skips them).
    #[arg(long, env = "HERALD_FOLLOW_UNKNOWN_IDS", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    pub follow_unknown_ids: bool,

    /// Interval between websocket pings sent to each client, in seconds.
    #[arg(long, env = "HERALD_PING_PERIOD_SEC", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..))]
    pub ping_period_sec: u64,

    /// A session that sends no pong for this many seconds is closed.
    #[arg(long, env = "HERALD_PONG_WAIT_SEC", default_value_t = 25, value_parser = clap::value_parser!(u64).range(2..))]
    pub pong_wait_sec: u64,

    /// Most websocket sessions at once; past it the upgrade is refused with 503.
    /// Default: the open-file soft limit minus a reserve of 100.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// On SIGTERM/SIGINT, how long sessions get to close before the process exits.
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE_SEC", default_value_t = 3)]
    pub shutdown_grace_sec: u64,

    /// Opt-in rate limit: `status_update`s per session per second (0 = off).
    /// Past it the request gets error 3 and the session stays open.
    #[arg(long, env = "HERALD_STATUS_UPDATE_RATE", default_value_t = 0)]
    pub status_update_rate: u32,

    /// Opt-in rate limit: user ids followed per session per second (0 = off).
    /// Past it the request gets error 3 and the session stays open.
    #[arg(long, env = "HERALD_FOLLOW_RATE", default_value_t = 0)]
    pub follow_rate: u32,

    /// A new socket closes the user's older sockets, as Nakama's `session.single_socket`.
    #[arg(long, env = "HERALD_SINGLE_SOCKET", num_args = 0..=1, default_missing_value = "true", default_value_t = false, action = clap::ArgAction::Set)]
    pub single_socket: bool,

    /// Admin listener (metrics, health, backend API), or `off`.
    #[arg(long, env = "HERALD_ADMIN_LISTEN", default_value = "127.0.0.1:7351")]
    pub admin_listen: String,

    /// Key of the backend API (`?http_key=` or `Authorization: Bearer`), as Nakama's runtime `http_key`.
    #[arg(long, env = "HERALD_HTTP_KEY", default_value = DEFAULT_HTTP_KEY, hide_default_value = true)]
    pub http_key: String,

    /// PEM certificate chain: serve HTTPS and `wss://` on the main listener (with `--tls-key`).
    #[arg(long, env = "HERALD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for `--tls-cert`.
    #[arg(long, env = "HERALD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Log filter (`error`, `warn`, `info`, `debug`, `trace`, or a tracing directive). `RUST_LOG` overrides it.
    #[arg(long, env = "HERALD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log format: `text` or `json`.
    #[arg(long, env = "HERALD_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
}

impl Config {
    /// The number of shards to run: `--shards`, or one per core.
    pub fn shard_count(&self) -> usize {
        if self.shards > 0 {
            self.shards
        } else {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        }
    }

    /// A configuration with every default, listening on `listen` with data in `data_dir` (for tests and tools).
    pub fn for_tests(listen: SocketAddr, data_dir: PathBuf) -> Config {
        let mut config = Config::parse_from(["herald"]);
        config.listen = listen;
        config.data_dir = data_dir;
        config
    }

    /// Validates combinations that single flags cannot check.
    pub fn validate(&self) -> Result<(), String> {
        if self.ping_period_sec >= self.pong_wait_sec {
            return Err(format!(
                "--ping-period-sec ({}) must be less than --pong-wait-sec ({})",
                self.ping_period_sec, self.pong_wait_sec
            ));
        }
        if self.shard_count() > 1024 {
            return Err("--shards must be at most 1024".into());
        }
        Ok(())
    }

    /// Names of the secrets still at Nakama's published defaults.
    pub fn default_keys_in_use(&self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if self.server_key == DEFAULT_SERVER_KEY {
            keys.push("--server-key");
        }
        if self.encryption_key == DEFAULT_ENCRYPTION_KEY {
            keys.push("--encryption-key");
        }
        if self.refresh_encryption_key == DEFAULT_REFRESH_ENCRYPTION_KEY {
            keys.push("--refresh-encryption-key");
        }
        if self.http_key == DEFAULT_HTTP_KEY && self.admin_listen != "off" {
            keys.push("--http-key");
        }
        keys
    }
}

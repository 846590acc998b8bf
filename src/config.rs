//! Configuration: command-line flags, each with a `HERALD_*` environment
//! variable, an optional TOML file (`--config`), and embedded defaults.
//!
//! Precedence is flag > environment > file > default. Every field is read
//! once at start-up; nothing here changes while the server runs.
//!
//! The file's keys are the flags' names in snake case (`max_message_bytes =
//! 4096`). Rather than a second, hand-written schema that could drift from
//! the flags, [`Config::load_from`] feeds the file through clap itself: it
//! parses the command line (clap reads the environment), asks clap which
//! settings are still at their default, validates each file key on its own
//! with that flag's value parser (so an error names the key), and parses
//! again with `--key=value` appended for exactly those settings.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};

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
    /// TOML file of settings (keys are the flag names in snake case); flags and
    /// `HERALD_*` variables override it.
    #[arg(long, env = "HERALD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address of the one HTTP listener: REST, `GET /ws` and `GET /`.
    #[arg(long, env = "HERALD_LISTEN", default_value = "0.0.0.0:7350")]
    pub listen: SocketAddr,

    /// Directory of the embedded account store (SQLite); created if missing.
    /// Unused with `--database-url`.
    #[arg(long, env = "HERALD_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Keep accounts in Postgres instead of SQLite, shared by every node
    /// given the same URL: `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?sslmode=MODE]`,
    /// MODE one of disable, prefer (the default), require, verify-ca,
    /// verify-full (the last two with `sslrootcert=FILE`).
    #[arg(
        long,
        env = "HERALD_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<DatabaseUrl>,

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
    pub admin_listen: AdminListen,

    /// Key of the backend API (`?http_key=` or `Authorization: Bearer`), as Nakama's runtime `http_key`.
    #[arg(long, env = "HERALD_HTTP_KEY", default_value = DEFAULT_HTTP_KEY, hide_default_value = true)]
    pub http_key: String,

    /// PEM certificate chain: serve HTTPS and `wss://` on the main listener (with `--tls-key`).
    #[arg(long, env = "HERALD_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for `--tls-cert`.
    #[arg(long, env = "HERALD_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Cluster mode: NATS server URLs, comma-separated (`nats://HOST:PORT`, or
    /// `tls://` for TLS; credentials as `user:password@` or `token@`).
    /// Requires `--database-url`.
    #[arg(
        long,
        env = "HERALD_NATS_URL",
        value_name = "URLS",
        value_delimiter = ','
    )]
    pub nats_url: Vec<String>,

    /// This node's name in the cluster (letters, digits, `-` and `_`). Default:
    /// derived from the host name and the listen address, stable across restarts.
    #[arg(long, env = "HERALD_NODE_ID", value_name = "NAME")]
    pub node_id: Option<String>,

    /// Replicas of the presence log stream (JetStream `num_replicas`) when Herald creates it.
    #[arg(long, env = "HERALD_NATS_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub nats_replicas: u8,

    /// NATS credentials file (`.creds`: user JWT and NKey seed).
    #[arg(long, env = "HERALD_NATS_CREDS", value_name = "FILE")]
    pub nats_creds: Option<PathBuf>,

    /// PEM file of CA certificates that sign the NATS servers' TLS certificates.
    #[arg(long, env = "HERALD_NATS_CA", value_name = "FILE")]
    pub nats_ca: Option<PathBuf>,

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

    /// Reads the configuration of this process: flags, `HERALD_*` variables,
    /// and the `--config` file if one is named (see the module doc).
    pub fn load() -> Result<Config, LoadError> {
        Config::load_from(std::env::args_os())
    }

    /// As [`Config::load`], with `args` as the command line (the first item is
    /// the program name). The environment is still the process's.
    pub fn load_from<I, T>(args: I) -> Result<Config, LoadError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        // First pass: only to learn the file's name and which settings the
        // command line and environment leave at their defaults. Errors wait for
        // the second pass, because a file may complete what the flags started
        // (`--tls-cert` on the command line, `tls_key` in the file).
        let first = Config::command()
            .ignore_errors(true)
            .try_get_matches_from(&args)?;
        if let Some(path) = first.get_one::<PathBuf>("config") {
            let text = std::fs::read_to_string(path).map_err(|error| LoadError::File {
                path: path.clone(),
                message: format!("cannot read it: {error}"),
            })?;
            let settings = file_settings(&text).map_err(|message| LoadError::File {
                path: path.clone(),
                message,
            })?;
            for (key, value) in settings {
                // Default or absent: the file fills it. Set on the command line or
                // in the environment: the file's value is validated but loses.
                if !matches!(
                    first.value_source(&key),
                    Some(ValueSource::CommandLine | ValueSource::EnvVariable)
                ) {
                    args.push(format!("--{}={value}", key.replace('_', "-")).into());
                }
            }
        }
        let matches = Config::command().try_get_matches_from(&args)?;
        Ok(Config::from_arg_matches(&matches)?)
    }

    /// A configuration with every default, listening on `listen` with data in
    /// `data_dir`, and the admin listener on a free port of 127.0.0.1 (for tests
    /// and tools).
    pub fn for_tests(listen: SocketAddr, data_dir: PathBuf) -> Config {
        let mut config = Config::parse_from(["herald"]);
        config.config = None;
        config.listen = listen;
        config.data_dir = data_dir;
        config.admin_listen = AdminListen::Addr(SocketAddr::from(([127, 0, 0, 1], 0)));
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
        if self.cluster_mode() && self.database_url.is_none() {
            return Err(
                "--nats-url needs --database-url: the nodes of a cluster must share \
                one account store (with SQLite on each node, one custom id would get a different \
                user id on every node)"
                    .into(),
            );
        }
        if !self.cluster_mode()
            && (self.node_id.is_some() || self.nats_creds.is_some() || self.nats_ca.is_some())
        {
            return Err("--node-id, --nats-creds and --nats-ca need --nats-url".into());
        }
        if let Some(id) = &self.node_id {
            crate::cluster::validate_node_id(id).map_err(|e| format!("--node-id: {e}"))?;
        }
        Ok(())
    }

    /// True when `--nats-url` names at least one server: cluster mode.
    pub fn cluster_mode(&self) -> bool {
        self.nats_url.iter().any(|url| !url.trim().is_empty())
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
        if self.http_key == DEFAULT_HTTP_KEY && self.admin_listen != AdminListen::Off {
            keys.push("--http-key");
        }
        keys
    }
}

/// `--admin-listen`: an address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminListen {
    /// No admin listener: no metrics, health or backend API.
    Off,
    /// Serve the admin endpoints here (port 0 picks a free port).
    Addr(SocketAddr),
}

impl FromStr for AdminListen {
    type Err = String;

    fn from_str(text: &str) -> Result<AdminListen, String> {
        if text == "off" {
            return Ok(AdminListen::Off);
        }
        text.parse().map(AdminListen::Addr).map_err(|_| {
            format!("expected an address such as 127.0.0.1:7351, or off; got {text:?}")
        })
    }
}

impl fmt::Display for AdminListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminListen::Off => f.write_str("off"),
            AdminListen::Addr(addr) => addr.fmt(f),
        }
    }
}

/// `--database-url`: a Postgres URL, which may hold a password.
///
/// Parsing never fails here, so that no parse error (clap's, or the config
/// file's) can echo the text: the URL is checked when the store connects, by
/// errors that show it [redacted](DatabaseUrl::redacted). `Debug` and
/// `Display` show it redacted too; only [`DatabaseUrl::expose`] gives the
/// password.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// The URL as given, password included: for connecting, never for logs.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with the password (in the user part, or a `password=`
    /// parameter) replaced by `***`. The user part is split where
    /// tokio-postgres splits it: at the first `@`, then at the first `:`.
    pub fn redacted(&self) -> String {
        redact_database_url(&self.0)
    }
}

impl FromStr for DatabaseUrl {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<DatabaseUrl, Self::Err> {
        Ok(DatabaseUrl(text.to_owned()))
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({:?})", self.redacted())
    }
}

/// See [`DatabaseUrl::redacted`].
fn redact_database_url(url: &str) -> String {
    const HIDDEN: &str = "***";
    let (scheme, rest) = match url.find("://") {
        Some(at) => url.split_at(at + 3),
        None => ("", url),
    };
    let (userinfo, after) = match rest.find('@') {
        Some(at) => (Some(&rest[..at]), &rest[at..]),
        None => (None, rest),
    };
    let mut out = String::with_capacity(url.len());
    out.push_str(scheme);
    if let Some(userinfo) = userinfo {
        match userinfo.split_once(':') {
            Some((user, _password)) => {
                out.push_str(user);
                out.push(':');
                out.push_str(HIDDEN);
            }
            None => out.push_str(userinfo),
        }
    }
    let (base, query) = match after.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (after, None),
    };
    out.push_str(base);
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}={HIDDEN}"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

/// Why [`Config::load`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A flag or variable is wrong, or `--help`/`--version` was asked:
    /// `main` lets clap print it and exit.
    #[error(transparent)]
    Args(#[from] clap::Error),
    /// The config file is unreadable, not TOML, or has a bad key or value.
    #[error("config file {}: {message}", path.display())]
    File { path: PathBuf, message: String },
}

/// Settings that have no place in the file: clap's own, and the file itself.
const NOT_IN_FILE: [&str; 3] = ["config", "help", "version"];

/// Parses the file and checks each key on its own: it must name a setting,
/// and its value must pass that flag's own parser. Returns the settings as
/// command-line values, in file order.
fn file_settings(text: &str) -> Result<Vec<(String, String)>, String> {
    let table: toml::Table = text
        .parse()
        .map_err(|error: toml::de::Error| error.to_string().trim_end().to_owned())?;
    let command = Config::command();
    let known: Vec<&clap::Arg> = command
        .get_arguments()
        .filter(|arg| arg.get_long().is_some() && !NOT_IN_FILE.contains(&arg.get_id().as_str()))
        .collect();
    let mut settings = Vec::with_capacity(table.len());
    for (key, value) in table {
        let Some(arg) = known.iter().find(|arg| arg.get_id() == key.as_str()) else {
            return Err(unknown_key(&key, &known));
        };
        let value = match value {
            toml::Value::String(text) => text,
            toml::Value::Integer(number) => number.to_string(),
            toml::Value::Float(number) => number.to_string(),
            toml::Value::Boolean(flag) => flag.to_string(),
            toml::Value::Datetime(_) | toml::Value::Array(_) | toml::Value::Table(_) => {
                return Err(format!(
                    "invalid value for {key:?}: expected a string, a number or a boolean"
                ));
            }
        };
        // The flag alone, in a command of its own: no environment, no
        // `requires` (those are checked once everything is merged).
        let alone = (*arg)
            .clone()
            .env(None)
            .requires(clap::builder::Resettable::Reset);
        let long = alone.get_long().unwrap_or(key.as_str()).to_owned();
        clap::Command::new("herald")
            .no_binary_name(true)
            .arg(alone)
            .try_get_matches_from([format!("--{long}={value}")])
            .map_err(|error| format!("invalid value for {key:?}: {}", clap_reason(&error)))?;
        settings.push((key, value));
    }
    Ok(settings)
}

/// `unknown key "…"`, with the nearest known key when one is close.
fn unknown_key(key: &str, known: &[&clap::Arg]) -> String {
    let snake = key.replace('-', "_");
    let nearest = known
        .iter()
        .map(|arg| arg.get_id().as_str())
        .map(|name| (edit_distance(&snake, name), name))
        .min();
    match nearest {
        Some((distance, name)) if distance <= 3 => {
            format!("unknown key {key:?} (did you mean {name:?}?)")
        }
        _ => format!("unknown key {key:?}"),
    }
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(row[j + 1] + 1);
        }
    }
    row[b.len()]
}

/// What a clap error says about a value, without clap's usage text.
fn clap_reason(error: &clap::Error) -> String {
    use clap::error::{ContextKind, ContextValue};
    if let Some(source) = std::error::Error::source(error) {
        return source.to_string();
    }
    if let Some(ContextValue::Strings(valid)) = error.get(ContextKind::ValidValue) {
        return format!("expected one of {}", valid.join(", "));
    }
    let text = error.to_string();
    let first = text.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_owned()
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Mutex;

    use super::*;

    /// Parsing reads `HERALD_*` variables, and one test sets some: every
    /// parse here holds this lock.
    static ENVIRONMENT: Mutex<()> = Mutex::new(());

    fn lock() -> std::sync::MutexGuard<'static, ()> {
        ENVIRONMENT
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().expect("temp file");
        file.write_all(text.as_bytes()).expect("write");
        file
    }

    fn load(args: &[&str]) -> Result<Config, LoadError> {
        let _guard = lock();
        Config::load_from(std::iter::once("herald").chain(args.iter().copied()))
    }

    fn load_file(text: &str, flags: &[&str]) -> Result<Config, LoadError> {
        let file = file(text);
        let path = file.path().to_str().expect("utf-8 path").to_owned();
        let mut args = vec!["--config", path.as_str()];
        args.extend_from_slice(flags);
        load(&args)
    }

    fn file_error(text: &str) -> String {
        match load_file(text, &[]) {
            Err(error @ LoadError::File { .. }) => error.to_string(),
            other => panic!("expected a config file error, got {other:?}"),
        }
    }

    #[test]
    fn file_values_replace_defaults() {
        let config = load_file(
            "max_message_bytes = 8192\nlisten = \"127.0.0.1:9000\"\nsingle_socket = true\nadmin_listen = \"off\"\n",
            &[],
        )
        .expect("loads");
        assert_eq!(config.max_message_bytes, 8192);
        assert_eq!(config.listen, "127.0.0.1:9000".parse().expect("addr"));
        assert!(config.single_socket);
        assert_eq!(config.admin_listen, AdminListen::Off);
        assert_eq!(
            config.max_follows, 100_000,
            "untouched settings keep their defaults"
        );
    }

    #[test]
    fn a_flag_beats_the_file() {
        let config = load_file(
            "max_message_bytes = 8192\nsingle_socket = true\n",
            &["--max-message-bytes", "1000", "--single-socket=false"],
        )
        .expect("loads");
        assert_eq!(config.max_message_bytes, 1000);
        assert!(!config.single_socket);
    }

    #[test]
    fn the_environment_beats_the_file_and_a_flag_beats_the_environment() {
        let _guard = lock();
        let file = file("max_follows = 5\nping_period_sec = 4\npong_wait_sec = 30\n");
        let path = file.path().to_str().expect("utf-8 path").to_owned();
        std::env::set_var("HERALD_MAX_FOLLOWS", "7");
        std::env::set_var("HERALD_PING_PERIOD_SEC", "6");
        std::env::set_var("HERALD_CONFIG", &path);
        let from_env = Config::load_from(["herald"]);
        let from_flag = Config::load_from(["herald", "--max-follows", "9"]);
        std::env::remove_var("HERALD_MAX_FOLLOWS");
        std::env::remove_var("HERALD_PING_PERIOD_SEC");
        std::env::remove_var("HERALD_CONFIG");

        let from_env = from_env.expect("loads");
        assert_eq!(
            from_env.config.as_deref(),
            Some(file.path()),
            "HERALD_CONFIG names the file"
        );
        assert_eq!(from_env.max_follows, 7);
        assert_eq!(from_env.ping_period_sec, 6);
        assert_eq!(
            from_env.pong_wait_sec, 30,
            "the file still fills what the environment leaves"
        );
        let from_flag = from_flag.expect("loads");
        assert_eq!(from_flag.max_follows, 9);
        assert_eq!(from_flag.ping_period_sec, 6);
    }

    #[test]
    fn without_a_file_the_defaults_hold() {
        let config = load(&[]).expect("loads");
        assert_eq!(config.config, None);
        assert_eq!(config.max_message_bytes, 4096);
        assert_eq!(
            config.admin_listen,
            AdminListen::Addr("127.0.0.1:7351".parse().expect("addr"))
        );
    }

    #[test]
    fn a_file_may_complete_what_the_flags_started() {
        let config =
            load_file("tls_key = \"key.pem\"\n", &["--tls-cert", "cert.pem"]).expect("loads");
        assert_eq!(config.tls_cert, Some(PathBuf::from("cert.pem")));
        assert_eq!(config.tls_key, Some(PathBuf::from("key.pem")));
    }

    #[test]
    fn an_unknown_key_is_named() {
        let error = file_error("max_mesage_bytes = 4096\n");
        assert!(error.starts_with("config file "), "{error}");
        assert!(
            error.ends_with(
                ": unknown key \"max_mesage_bytes\" (did you mean \"max_message_bytes\"?)"
            ),
            "{error}"
        );
        let error = file_error("colour = \"blue\"\n");
        assert!(error.ends_with(": unknown key \"colour\""), "{error}");
        let error = file_error("config = \"other.toml\"\n");
        assert!(error.ends_with(": unknown key \"config\""), "{error}");
        let error = file_error("max-follows = 3\n");
        assert!(error.contains("did you mean \"max_follows\"?"), "{error}");
    }

    #[test]
    fn an_invalid_value_is_named_with_the_reason() {
        let error = file_error("max_message_bytes = 5\n");
        assert!(
            error.ends_with(": invalid value for \"max_message_bytes\": 5 is not in 16..=67108864"),
            "{error}"
        );
        let error = file_error("log_format = \"xml\"\n");
        assert!(
            error.ends_with(": invalid value for \"log_format\": expected one of text, json"),
            "{error}"
        );
        let error = file_error("admin_listen = \"nowhere\"\n");
        assert!(
            error.contains("invalid value for \"admin_listen\": expected an address"),
            "{error}"
        );
        let error = file_error("listen = 7350\n");
        assert!(error.contains("invalid value for \"listen\""), "{error}");
        let error = file_error("single_socket = \"yes\"\n");
        assert!(
            error.contains("invalid value for \"single_socket\""),
            "{error}"
        );
        let error = file_error("shards = [1, 2]\n");
        assert!(
            error.ends_with(
                ": invalid value for \"shards\": expected a string, a number or a boolean"
            ),
            "{error}"
        );
    }

    #[test]
    fn a_bad_value_in_the_file_stops_start_up_even_when_a_flag_overrides_it() {
        let error = load_file("max_message_bytes = 5\n", &["--max-message-bytes", "100"]);
        assert!(matches!(error, Err(LoadError::File { .. })), "{error:?}");
    }

    #[test]
    fn broken_toml_and_missing_files_are_reported() {
        let error = file_error("max_follows = \n");
        assert!(error.starts_with("config file "), "{error}");
        assert!(error.contains("line 1"), "{error}");
        match load(&["--config", "/nonexistent/herald.toml"]) {
            Err(error @ LoadError::File { .. }) => assert!(
                error
                    .to_string()
                    .starts_with("config file /nonexistent/herald.toml: cannot read it:"),
                "{error}"
            ),
            other => panic!("expected a file error, got {other:?}"),
        }
    }

    #[test]
    fn bad_flags_are_still_clap_errors() {
        assert!(matches!(
            load(&["--max-follows", "many"]),
            Err(LoadError::Args(_))
        ));
        assert!(matches!(load(&["--help"]), Err(LoadError::Args(_))));
        assert!(matches!(load(&["--version"]), Err(LoadError::Args(_))));
    }

    #[test]
    fn a_database_url_shows_its_password_nowhere_but_expose() {
        let secret = "s3cr%40t:x";
        let text = format!(
            "postgres://herald:{secret}@db.internal:5433/herald?sslmode=require&password=other"
        );
        let config = load(&["--database-url", &text]).expect("loads");
        let url = config.database_url.clone().expect("a database url");
        assert_eq!(url.expose(), text);
        let redacted = url.redacted();
        assert_eq!(
            redacted,
            "postgres://herald:***@db.internal:5433/herald?sslmode=require&password=***"
        );
        for shown in [redacted, url.to_string(), format!("{config:?}")] {
            assert!(
                !shown.contains("s3cr") && !shown.contains("other"),
                "{shown}"
            );
        }
        for (given, shown) in [
            (
                "postgres://herald@localhost/db",
                "postgres://herald@localhost/db",
            ),
            (
                "postgres://localhost/db?sslmode=disable",
                "postgres://localhost/db?sslmode=disable",
            ),
            ("postgresql://u:p@h/d", "postgresql://u:***@h/d"),
            ("not a url:p@x", "not a url:***@x"),
        ] {
            assert_eq!(DatabaseUrl(given.into()).redacted(), shown, "{given}");
        }
    }

    #[test]
    fn help_shows_no_database_url_value() {
        let _guard = lock();
        std::env::set_var("HERALD_DATABASE_URL", "postgres://u:hunter2@h/d");
        let help = Config::command().render_long_help().to_string();
        std::env::remove_var("HERALD_DATABASE_URL");
        assert!(help.contains("--database-url <URL>"), "{help}");
        assert!(!help.contains("hunter2"), "{help}");
    }

    /// Every setting is in the example file, and its values are the defaults.
    #[test]
    fn the_example_file_documents_every_setting_with_its_default() {
        let example = include_str!("../herald.example.toml");
        for arg in Config::command().get_arguments() {
            let key = arg.get_id().as_str();
            if arg.get_long().is_none() || NOT_IN_FILE.contains(&key) {
                continue;
            }
            let documented = example.lines().any(|line| {
                let line = line.trim_start_matches('#').trim_start();
                line.strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            });
            assert!(documented, "{key} is missing from herald.example.toml");
        }
        let from_example = load_file(example, &[]).expect("the example loads");
        let defaults = load(&[]).expect("defaults load");
        let mut from_example_text = format!("{from_example:?}");
        from_example_text =
            from_example_text.replace(&format!("{:?}", from_example.config), "None");
        assert_eq!(from_example_text, format!("{defaults:?}"));
    }
}

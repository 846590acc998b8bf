//! The NATS side: connecting (credentials, TLS, the server version check),
//! creating the presence log's stream, and the few JetStream calls the
//! cluster makes. Everything here runs on the cluster thread.
//!
//! Connection settings and why:
//! * pings every second: async-nats drops a connection after two
//!   unanswered pings, so a dead link is noticed in 2-3 s (the fence rule
//!   F1 then needs 2 s more of no connection). Every 500 ms was tried: a
//!   node busy with a burst of follows (a soak's ramp) then missed pongs
//!   and dropped healthy connections;
//! * reconnect attempts every 250 ms at most, forever: a node cut from NATS
//!   must be ready again within 2 s of the link healing;
//! * a large subscription buffer for the watch (1 Mi messages): with the
//!   default 64 Ki, loading a log of a million presences stalls for seconds
//!   on flow control (cluster-spike.md §7);
//! * credentials from the URL (`user:password@` or `token@`) or a `.creds`
//!   file, never logged ([`redact_url`]).

use std::time::Duration;

use async_nats::jetstream::{self, stream};
use async_nats::{Client, ConnectOptions, Event};
use tokio::sync::mpsc;

use super::{ClusterConfig, ClusterError};

/// Time allowed to reach a server at start-up, and for each reconnect attempt.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Timeout of JetStream API calls and publish acknowledgements.
pub const API_TIMEOUT: Duration = Duration::from_secs(2);
/// The oldest nats-server with per-message TTL (purge markers that expire).
const MIN_SERVER: (u64, u64) = (2, 11);
/// Messages a subscription (the watch) may buffer.
const SUBSCRIPTION_CAPACITY: usize = 1 << 20;
/// How long JetStream remembers a message id to drop a retried duplicate.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// Versions the stream keeps of each key at most. A watch reads every
/// version still in the stream; with only the latest kept, a session
/// updating faster than a watch delivers (a burst of updates within a
/// millisecond), or while a watch recovers from a NATS failover, would have
/// intermediate statuses superseded before some node read them. This cap
/// bounds what a session keeps. No write rolls older versions up: in the
/// soak each `Nats-Rollup: sub` cost nats-server milliseconds of CPU (it
/// scans every message between a subject's first and last), and once a
/// soak's sessions rolled up nats-server saturated and the nodes fenced
/// themselves (PERF.md, "Soak"). Older versions are deleted by position
/// instead ([`super::writer`]): a live key's a minute after they are
/// superseded, an ended session's once its purge marker is stored. This cap
/// is the bound if deletes fail.
pub const HISTORY: i64 = 64;
/// Largest value: a 2048-byte status, a username and the header fit easily.
const MAX_VALUE_BYTES: i32 = 8192;

/// `url` with its password or token replaced by `***` (for logs and errors).
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("***"));
            } else if !parsed.username().is_empty() {
                let _ = parsed.set_username("***");
            }
            parsed.to_string()
        }
        Err(_) => "(unparsable URL)".into(),
    }
}

/// Credentials found in the URLs, and the URLs without them.
struct Servers {
    urls: Vec<String>,
    user_password: Option<(String, String)>,
    token: Option<String>,
}

fn split_credentials(urls: &[String]) -> Result<Servers, String> {
    let mut servers = Servers {
        urls: Vec::with_capacity(urls.len()),
        user_password: None,
        token: None,
    };
    for url in urls {
        let mut parsed = url::Url::parse(url)
            .map_err(|e| format!("invalid NATS URL {}: {e}", redact_url(url)))?;
        if !matches!(parsed.scheme(), "nats" | "tls") {
            return Err(format!(
                "NATS URL {} must start with nats:// or tls://",
                redact_url(url)
            ));
        }
        let user = percent_decode(parsed.username());
        let password = parsed.password().map(percent_decode);
        match (user.is_empty(), password) {
            (true, _) => {}
            (false, Some(password)) => servers.user_password = Some((user, password)),
            (false, None) => servers.token = Some(user),
        }
        let _ = parsed.set_username("");
        let _ = parsed.set_password(None);
        servers.urls.push(parsed.to_string());
    }
    Ok(servers)
}

fn percent_decode(text: &str) -> String {
    form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Connects to NATS and checks the server. Connection events (disconnected,
/// connected) go to `events`.
pub async fn connect(
    config: &ClusterConfig,
    events: mpsc::UnboundedSender<Event>,
) -> Result<Client, ClusterError> {
    connect_as(config, "", events).await
}

/// The connection for fetches (direct gets), apart from the one that
/// carries the watch, the heartbeats and the writes: nats-server answers a
/// direct get on the asking connection's read path, so a burst of them
/// (thousands of users followed at once) delayed that connection's pongs
/// past the ping limit, and the node lost its connection and its lease.
/// Its connection events are only logged.
pub async fn connect_for_fetches(config: &ClusterConfig) -> Result<Client, ClusterError> {
    let (events, mut logged) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(event) = logged.recv().await {
            tracing::debug!(%event, "NATS connection for fetches");
        }
    });
    connect_as(config, " fetch", events).await
}

async fn connect_as(
    config: &ClusterConfig,
    role: &str,
    events: mpsc::UnboundedSender<Event>,
) -> Result<Client, ClusterError> {
    let urls = config.redacted_urls();
    let fail = |reason: String| ClusterError::Connect {
        urls: urls.clone(),
        reason,
    };
    let servers = split_credentials(&config.urls).map_err(ClusterError::Config)?;
    let mut options = ConnectOptions::new()
        .name(format!("herald {}{role}", config.node_id))
        .ping_interval(Duration::from_secs(1))
        .connection_timeout(CONNECT_TIMEOUT)
        .request_timeout(Some(API_TIMEOUT))
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(50 * (attempts.min(5) as u64)).max(Duration::from_millis(50))
        })
        .max_reconnects(None)
        .event_callback(move |event| {
            let events = events.clone();
            async move {
                let _ = events.send(event);
            }
        });
    if let Some((user, password)) = servers.user_password {
        options = options.user_and_password(user, password);
    }
    if let Some(token) = servers.token {
        options = options.token(token);
    }
    if let Some(creds) = &config.creds {
        options = options.credentials_file(creds).await.map_err(|e| {
            ClusterError::Config(format!(
                "--nats-creds {}: cannot read it: {e}",
                creds.display()
            ))
        })?;
    }
    if let Some(ca) = &config.ca {
        if !ca.is_file() {
            return Err(ClusterError::Config(format!(
                "--nats-ca {}: no such file",
                ca.display()
            )));
        }
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let addrs: Vec<async_nats::ServerAddr> = servers
        .urls
        .iter()
        .map(|u| u.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| fail(format!("{e}")))?;
    let client = tokio::time::timeout(CONNECT_TIMEOUT * 2, options.connect(addrs))
        .await
        .map_err(|_| fail("timed out".into()))?
        .map_err(|e| fail(e.to_string()))?;
    let info = client.server_info();
    if !version_at_least(&info.version, MIN_SERVER) {
        return Err(ClusterError::ServerTooOld {
            urls,
            found: info.version,
        });
    }
    if !info.jetstream {
        return Err(ClusterError::NoJetStream { urls });
    }
    Ok(client)
}

/// Whether `version` (`2.14.0`, `v2.11.0-beta`) is at least `min`.
fn version_at_least(version: &str, min: (u64, u64)) -> bool {
    let mut parts = version
        .trim_start_matches('v')
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= min
}

/// The JetStream context the cluster uses.
pub fn jetstream(client: Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(API_TIMEOUT)
        .max_ack_inflight(65_536)
        .backpressure_on_inflight(true)
        .build(client)
}

/// How long start-up keeps asking for the stream while JetStream does not
/// answer (a NATS cluster that has just started elects its JetStream
/// leader in a few seconds).
const STREAM_PATIENCE: Duration = Duration::from_secs(20);

/// [`ensure_stream`], asked again while JetStream times out, for up to
/// `STREAM_PATIENCE` (20 s); any other error, or the last timeout, is returned.
pub async fn ensure_stream_patiently(
    js: &jetstream::Context,
    config: &ClusterConfig,
) -> Result<stream::Stream, ClusterError> {
    let deadline = tokio::time::Instant::now() + STREAM_PATIENCE;
    loop {
        match ensure_stream(js, config).await {
            Err(ClusterError::Stream { reason, .. })
                if reason.contains("timed out") && tokio::time::Instant::now() < deadline =>
            {
                tracing::info!(%reason, "JetStream does not answer yet; asking again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            result => return result,
        }
    }
}

/// Creates the presence log's stream if it is missing (a KV bucket keeping
/// [`HISTORY`] versions per key, per-message TTL for purge markers); an
/// existing one is kept, with TTL and the history raised if they were not.
pub async fn ensure_stream(
    js: &jetstream::Context,
    config: &ClusterConfig,
) -> Result<stream::Stream, ClusterError> {
    let subjects = super::record::Subjects::new(&config.bucket);
    let name = subjects.stream(&config.bucket);
    let fail = |reason: String| ClusterError::Stream {
        stream: name.clone(),
        reason,
    };
    match js.get_stream(&name).await {
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .map_err(|e| fail(e.to_string()))?
                .clone();
            if !info.config.allow_message_ttl || info.config.max_messages_per_subject < HISTORY {
                let mut updated = info.config.clone();
                updated.allow_message_ttl = true;
                updated.max_messages_per_subject = HISTORY;
                js.update_stream(updated)
                    .await
                    .map_err(|e| fail(format!("cannot update it: {e}")))?;
            }
            if info.config.deny_delete {
                // Made by an older Herald: ended sessions' older versions
                // cannot be deleted (each key still keeps at most HISTORY).
                let mut updated = info.config.clone();
                updated.deny_delete = false;
                if let Err(error) = js.update_stream(updated).await {
                    tracing::warn!(
                        stream = %name,
                        %error,
                        "the presence log stream denies deletes; ended sessions' older versions stay until it is recreated"
                    );
                }
            }
            if info.config.num_replicas != usize::from(config.replicas) {
                tracing::warn!(
                    stream = %name,
                    existing = info.config.num_replicas,
                    requested = config.replicas,
                    "the presence log stream exists with another replica count; it is kept"
                );
            }
            Ok(existing)
        }
        Err(error)
            if matches!(
                error.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(e)
                    if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            let stream_config = stream::Config {
                name: name.clone(),
                description: Some("Herald presence log".into()),
                subjects: vec![subjects.all()],
                max_messages_per_subject: HISTORY,
                max_message_size: MAX_VALUE_BYTES,
                discard: stream::DiscardPolicy::New,
                allow_rollup: true,
                // An ended session's older versions are deleted one by one.
                deny_delete: false,
                allow_direct: true,
                // Memory: presence is ephemeral (a restart of an R1 server
                // fences every node, which registers again), and with a
                // file store nats-server spent its CPU in block reads when
                // thousands of users were fetched at once (PERF.md, "Soak").
                storage: stream::StorageType::Memory,
                num_replicas: usize::from(config.replicas),
                duplicate_window: DUPLICATE_WINDOW,
                allow_message_ttl: true,
                ..Default::default()
            };
            let stream = js
                .create_stream(stream_config)
                .await
                .map_err(|e| fail(format!("cannot create it: {e}")))?;
            tracing::info!(stream = %name, replicas = config.replicas, "created the presence log stream");
            Ok(stream)
        }
        Err(error) => Err(fail(error.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(
            redact_url("nats://herald:s3cret@10.0.0.1:4222"),
            "nats://herald:***@10.0.0.1:4222"
        );
        assert_eq!(
            redact_url("tls://t0ken@nats.example.com:4222"),
            "tls://***@nats.example.com:4222"
        );
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert!(!redact_url("not a url s3cret").contains("s3cret"));
    }

    #[test]
    fn credentials_leave_the_urls() {
        let servers = split_credentials(&[
            "nats://u%40x:p%3Aw@127.0.0.1:4222".into(),
            "nats://127.0.0.1:4223".into(),
        ])
        .unwrap();
        assert_eq!(
            servers.user_password,
            Some(("u@x".to_owned(), "p:w".to_owned()))
        );
        assert!(servers.urls.iter().all(|u| !u.contains('@')));
        let token = split_credentials(&["tls://tok@h:1".into()]).unwrap();
        assert_eq!(token.token.as_deref(), Some("tok"));
        assert!(split_credentials(&["http://h:1".into()]).is_err());
    }

    #[test]
    fn versions_compare() {
        assert!(version_at_least("2.14.0", (2, 11)));
        assert!(version_at_least("2.11.0-RC.1", (2, 11)));
        assert!(!version_at_least("2.9.10", (2, 11)));
        assert!(!version_at_least("2.10.29", (2, 11)));
        assert!(version_at_least("3.0.0", (2, 11)));
        assert!(!version_at_least("garbage", (2, 11)));
    }
}

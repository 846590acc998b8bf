//! [`Server`]: starting and stopping a whole Herald: account store, shards,
//! listeners. `main` and the integration tests both go through here.
//!
//! Start-up order: start the admin listener (so a bad address fails first,
//! and `/healthz` answers while the rest starts; `/readyz` says 503), open
//! the account store (SQLite: read the user directory; Postgres: connect and
//! upgrade the schema, and users are looked up later as follows need them),
//! bind the listeners (so a busy port fails fast), start the shards (each
//! loads its slice of the directory, then starts accepting), and only then
//! mark the server ready.
//! Shutdown order: `/readyz` turns 503, the shards stop accepting and close
//! every session with 1001, wait for them within the grace period, then the
//! account store is flushed and closed, and the admin listener stops last.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::admin::{AdminListener, AdminState};
use crate::auth::{Accounts, KnownUser, PostgresStore, SqliteStore, Tokens};
use crate::cluster::{Cluster, ClusterConfig};
use crate::config::{AdminListen, Config};
use crate::engine::{Engine, EngineConfig, EngineHandle, ShardContext};
use crate::transport::{listener, tls, ServerState};

/// A running server.
pub struct Server {
    engine: Engine,
    /// Cluster mode: the NATS side (see [`crate::cluster`]).
    cluster: Option<Cluster>,
    accounts: Accounts,
    local_addr: SocketAddr,
    /// `None` with `--admin-listen off`.
    admin: Option<AdminListener>,
}

impl Server {
    /// Starts a server with `config`. Returns once every shard is accepting.
    pub fn start(config: Config) -> anyhow::Result<Server> {
        config.validate().map_err(anyhow::Error::msg)?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(tls::load(cert, key)?),
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key must be given together"),
        };
        // Dropped (and so stopped) if anything below fails.
        let admin_state = Arc::new(AdminState::new(config.http_key.clone()));
        let admin = match config.admin_listen {
            AdminListen::Off => None,
            AdminListen::Addr(addr) => Some(
                AdminListener::start(addr, admin_state.clone())
                    .with_context(|| format!("cannot listen on --admin-listen {addr}"))?,
            ),
        };
        let (accounts, known) = open_accounts(&config)?;
        let directory: Vec<_> = known
            .into_iter()
            .map(|u| {
                (
                    u.user_id,
                    (!u.username.is_empty()).then(|| Arc::from(u.username.as_str())),
                )
            })
            .collect();

        // Cluster mode: reach NATS before anything listens, so that an
        // unreachable or too old server stops start-up with its reason.
        let cluster = match ClusterConfig::from_config(&config) {
            Some(cluster_config) => {
                let node_id = cluster_config.node_id.clone();
                let cluster = Cluster::connect(cluster_config)?;
                tracing::info!(node_id, "connected to NATS");
                Some(cluster)
            }
            None => None,
        };

        let mut engine_config = EngineConfig::from_config(&config);
        if config.database_url.is_some() {
            engine_config.shared_accounts = Some(accounts.clone());
        }
        let listeners = listener::bind(config.listen, engine_config.shards)
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        let local_addr = listeners
            .first()
            .map(|l| l.local_addr())
            .transpose()?
            .unwrap_or(config.listen);

        let tokens = Arc::new(Tokens::new(
            &config.encryption_key,
            &config.refresh_encryption_key,
            config.token_expiry_sec,
            config.refresh_token_expiry_sec,
        ));
        let state = Arc::new(ServerState {
            max_connections: config
                .max_connections
                .unwrap_or_else(default_max_connections),
            config,
            tokens,
            accounts: accounts.clone(),
            websockets: AtomicUsize::new(0),
            tls,
        });
        let listeners = Arc::new(Mutex::new(
            listeners.into_iter().map(Some).collect::<Vec<_>>(),
        ));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let ready_tx = Mutex::new(ready_tx);
        let on_start = Arc::new(move |ctx: &Rc<ShardContext>| {
            let listener = listeners
                .lock()
                .ok()
                .and_then(|mut all| all.get_mut(ctx.index).and_then(Option::take));
            if let Some(listener) = listener {
                tokio::task::spawn_local(listener::accept_loop(
                    ctx.clone(),
                    state.clone(),
                    listener,
                ));
            }
            if let Ok(ready) = ready_tx.lock() {
                let _ = ready.send(());
            }
        });
        let link = cluster.as_ref().map(Cluster::link);
        let engine = Engine::start(engine_config, Arc::new(directory), link, on_start)?;
        for _ in 0..engine.handle().router().shards() {
            ready_rx.recv().context("a shard failed to start")?;
        }
        admin_state.serve(engine.handle().clone());
        if let Some(cluster) = &cluster {
            // `/readyz` says 503 until this is done; sockets are refused.
            cluster.begin(engine.handle().clone());
            if let Err(error) = cluster.wait_ready(CLUSTER_READY_LIMIT) {
                engine.handle().begin_shutdown();
                engine.join();
                cluster.stop(Duration::from_secs(1));
                return Err(error.into());
            }
        }
        Ok(Server {
            engine,
            cluster,
            accounts,
            local_addr,
            admin,
        })
    }

    /// The admin listener's address (the real port when 0 was asked), unless it is off.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminListener::local_addr)
    }

    /// The address the listeners are bound to (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The engine, for stats and the backend API.
    pub fn engine(&self) -> &EngineHandle {
        self.engine.handle()
    }

    /// Marks the server not ready, stops accepting, closes every session with
    /// 1001, waits for the shards (bounded by their grace period), closes the
    /// account store, and stops the admin listener.
    pub fn shutdown(self) {
        let began = Instant::now();
        let handle = self.engine.handle();
        tracing::info!(
            sessions = handle.stats().sessions,
            grace_sec = handle.config().shutdown_grace.as_secs_f64(),
            "shutdown begins: not ready, closing every session"
        );
        if let Some(cluster) = &self.cluster {
            // First: peers send this node's leaves at once.
            cluster.leave(CLUSTER_STOP_STEP);
        }
        handle.begin_shutdown();
        self.engine.join();
        if let Some(cluster) = &self.cluster {
            cluster.stop(CLUSTER_STOP_STEP);
        }
        match tokio::runtime::Builder::new_current_thread().build() {
            Ok(runtime) => runtime.block_on(self.accounts.shutdown()),
            Err(error) => tracing::error!(%error, "cannot close the account store cleanly"),
        }
        if let Some(admin) = self.admin {
            admin.stop();
        }
        tracing::info!(
            elapsed_ms = began.elapsed().as_millis() as u64,
            "shutdown complete"
        );
    }
}

/// How long start-up waits for a cluster node to catch up with the log and register.
const CLUSTER_READY_LIMIT: Duration = Duration::from_secs(60);
/// Bound of each clean-stop step of a cluster node.
const CLUSTER_STOP_STEP: Duration = Duration::from_secs(2);

/// Opens the account store the configuration names: Postgres with
/// `--database-url` (shared with other nodes; users are looked up as needed,
/// so no directory is loaded), else SQLite in `--data-dir` with its whole
/// user directory.
fn open_accounts(config: &Config) -> anyhow::Result<(Accounts, Vec<KnownUser>)> {
    match &config.database_url {
        Some(url) => {
            // The error names the URL, redacted.
            let store = PostgresStore::connect(url).context("cannot open the account store")?;
            Ok((Arc::new(store), Vec::new()))
        }
        None => {
            let (store, known) = SqliteStore::open(&config.data_dir).with_context(|| {
                format!(
                    "cannot open the account store in {}",
                    config.data_dir.display()
                )
            })?;
            Ok((Arc::new(store), known))
        }
    }
}

/// The open-file soft limit minus a reserve for listeners, the store and HTTP requests.
fn default_max_connections() -> usize {
    let soft = rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _hard)| soft);
    usize::try_from(soft)
        .unwrap_or(usize::MAX)
        .saturating_sub(100)
        .max(1)
}

//! [`Server`]: starting and stopping a whole Herald: account store, shards,
//! listeners. `main` and the integration tests both go through here.
//!
//! Start-up order: open the account store (and read the user directory),
//! bind the listeners (so a busy port fails fast), start the shards (each
//! loads its slice of the directory, then starts accepting). Shutdown order:
//! stop accepting and close every session with 1001 (shards), wait for them
//! within the grace period, then flush and close the account store.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};

use anyhow::Context;

use crate::auth::{AccountStore, Tokens};
use crate::config::Config;
use crate::engine::{Engine, EngineConfig, EngineHandle, ShardContext};
use crate::transport::{listener, tls, ServerState};

/// A running server.
pub struct Server {
    engine: Engine,
    accounts: AccountStore,
    local_addr: SocketAddr,
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
        let (accounts, known) = AccountStore::open(&config.data_dir).with_context(|| {
            format!(
                "cannot open the account store in {}",
                config.data_dir.display()
            )
        })?;
        let directory: Vec<_> = known
            .into_iter()
            .map(|u| {
                (
                    u.user_id,
                    (!u.username.is_empty()).then(|| Arc::from(u.username.as_str())),
                )
            })
            .collect();

        let engine_config = EngineConfig::from_config(&config);
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
        let engine = Engine::start(engine_config, Arc::new(directory), on_start)?;
        for _ in 0..engine.handle().router().shards() {
            ready_rx.recv().context("a shard failed to start")?;
        }
        Ok(Server {
            engine,
            accounts,
            local_addr,
        })
    }

    /// The address the listeners are bound to (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The engine, for stats and the backend API.
    pub fn engine(&self) -> &EngineHandle {
        self.engine.handle()
    }

    /// Stops accepting, closes every session with 1001, waits for the shards
    /// (bounded by their grace period), then closes the account store.
    pub fn shutdown(self) {
        self.engine.handle().begin_shutdown();
        self.engine.join();
        match tokio::runtime::Builder::new_current_thread().build() {
            Ok(runtime) => runtime.block_on(self.accounts.shutdown()),
            Err(error) => tracing::error!(%error, "cannot close the account store cleanly"),
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

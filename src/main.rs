//! The `herald` binary: parse the configuration, start the server, and stop
//! it on SIGTERM or SIGINT (a second signal exits at once).

use mimalloc::MiMalloc;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tracing_subscriber::EnvFilter;

use herald::config::{Config, LoadError};
use herald::server::Server;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

fn main() -> std::process::ExitCode {
    let config = match Config::load() {
        Ok(config) => config,
        // --help, --version, or a bad flag: clap prints it and picks the exit code.
        Err(LoadError::Args(error)) => error.exit(),
        // Logging is not set up yet (the file may configure it): plain stderr.
        Err(error) => {
            eprintln!("error: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    if config.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        // Colours only on a terminal: not in files, pipes or the journal.
        let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(ansi)
            .init();
    }

    tracing::info!(
        config = %config.config.as_deref().map_or("(none)".into(), |p| p.display().to_string()),
        listen = %config.listen,
        data_dir = %config.data_dir.display(),
        // Redacted: the password never reaches a log.
        database_url = %config.database_url.as_ref().map_or("(none: SQLite in data_dir)".into(), |url| url.redacted()),
        shards = config.shard_count(),
        max_message_bytes = config.max_message_bytes,
        outgoing_queue_bytes = config.outgoing_queue_bytes,
        max_follows = config.max_follows,
        follow_unknown_ids = config.follow_unknown_ids,
        token_expiry_sec = config.token_expiry_sec,
        refresh_token_expiry_sec = config.refresh_token_expiry_sec,
        single_socket = config.single_socket,
        status_update_rate = config.status_update_rate,
        follow_rate = config.follow_rate,
        admin_listen = %config.admin_listen,
        tls = config.tls_cert.is_some(),
        "configuration (keys redacted)"
    );
    for key in config.default_keys_in_use() {
        tracing::warn!(
            "{key} is Nakama's published default; set your own before going to production"
        );
    }
    let mut signals = match Signals::install() {
        Ok(signals) => signals,
        Err(error) => {
            tracing::error!(%error, "cannot install the SIGTERM and SIGINT handlers");
            return std::process::ExitCode::FAILURE;
        }
    };
    let server = match Server::start(config) {
        Ok(server) => server,
        Err(error) => {
            tracing::error!("{error:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    tracing::info!(
        listen = %server.local_addr(),
        admin = %server.admin_addr().map_or("off".into(), |a| a.to_string()),
        version = herald::config::VERSION,
        "herald is serving"
    );

    signals.wait();
    tracing::info!("signal received");
    std::thread::spawn(move || {
        // A second signal exits at once.
        signals.wait();
        tracing::warn!("second signal: exiting now");
        std::process::exit(1);
    });
    server.shutdown();
    std::process::ExitCode::SUCCESS
}

/// SIGTERM and SIGINT, caught from before start-up on. The handlers are
/// installed once, first thing: a signal that arrives while the server is
/// still starting is kept and answered with a clean shutdown as soon as it
/// runs, rather than killing the process with the default action.
struct Signals {
    runtime: tokio::runtime::Runtime,
    term: Signal,
    interrupt: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let context = runtime.enter();
        let term = signal(SignalKind::terminate())?;
        let interrupt = signal(SignalKind::interrupt())?;
        drop(context);
        Ok(Signals {
            runtime,
            term,
            interrupt,
        })
    }

    /// Blocks until SIGTERM or SIGINT (returns at once if one came already).
    fn wait(&mut self) {
        let Signals {
            runtime,
            term,
            interrupt,
        } = self;
        runtime.block_on(async {
            tokio::select! {
                _ = term.recv() => {}
                _ = interrupt.recv() => {}
            }
        });
    }
}

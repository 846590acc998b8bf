//! The admin listener (`--admin-listen`, default `127.0.0.1:7351`): metrics,
//! health and the backend API, kept off the client-facing port.
//!
//! Routes:
//! * `GET /metrics`: Prometheus text ([`metrics`]); OpenMetrics when asked
//!   for in `Accept`.
//! * `GET /healthz`: liveness, 200 for as long as the process serves.
//! * `GET /readyz`: readiness, 200 only between "account store open and every
//!   shard running" and "shutdown began"; 503 before and after.
//! * `GET /v2/status`, `POST /v2/session/{id}/disconnect`: the backend API
//!   ([`backend`]), behind `--http-key`.
//!
//! # Lifecycle
//!
//! [`crate::server::Server::start`] binds and starts the listener first, so
//! that a bad address fails start-up before anything else happens and so
//! that `/healthz` answers (and `/readyz` says 503) while the account store
//! loads, which can take a while with many accounts. Once every shard runs,
//! the server hands the engine over with [`AdminState::serve`]. Shutdown
//! stops the listener last: `/readyz` turns 503 as soon as the engine starts
//! shutting down, and `/healthz` keeps answering until the process is done.
//!
//! # Threads
//!
//! The listener runs on its own OS thread (`herald-admin`) with a
//! single-threaded tokio runtime, never on a shard thread: a slow scrape or a
//! backend call waiting on the shards cannot delay fan-out. Requests reach the
//! shards only through their inboxes ([`crate::engine::EngineHandle`]).

pub mod backend;
pub mod metrics;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ACCEPT, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use crate::engine::EngineHandle;
use crate::transport::rest;

/// Time allowed for a request head to arrive.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

type Body = Full<Bytes>;

/// What the admin endpoints read. Shared by the server (which fills it in as
/// start-up proceeds) and the admin thread.
pub struct AdminState {
    /// `--http-key`, for the backend API.
    http_key: String,
    /// The running engine and its metrics registry; set once by [`AdminState::serve`].
    serving: OnceLock<(EngineHandle, Registry)>,
    /// Set with `serving`; read by `/readyz`. (Kept apart so that readiness
    /// is one atomic load.)
    ready: AtomicBool,
}

impl AdminState {
    /// A state for a server that is still starting: not ready.
    pub fn new(http_key: String) -> AdminState {
        AdminState {
            http_key,
            serving: OnceLock::new(),
            ready: AtomicBool::new(false),
        }
    }

    /// Called once the account store is open and every shard runs: metrics and
    /// the backend API start answering, and `/readyz` says 200.
    pub fn serve(&self, engine: EngineHandle) {
        let registry = metrics::registry(engine.clone());
        if self.serving.set((engine, registry)).is_ok() {
            self.ready.store(true, Ordering::Release);
        }
    }

    /// The engine, once serving.
    fn engine(&self) -> Option<&EngineHandle> {
        self.serving.get().map(|(engine, _)| engine)
    }

    /// Ready: serving, and shutdown has not begun.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && self
                .engine()
                .is_some_and(|e| !e.is_shutting_down() && e.cluster().is_none_or(|c| c.is_ready()))
    }
}

/// The running admin listener. Dropping it stops it.
pub struct AdminListener {
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl AdminListener {
    /// Binds `addr` (here, so that a bad or busy address fails the caller at
    /// once) and starts serving on the `herald-admin` thread.
    pub fn start(addr: SocketAddr, state: Arc<AdminState>) -> std::io::Result<AdminListener> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let local_addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("herald-admin".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(listener) => accept_loop(listener, state, stopped).await,
                        Err(error) => tracing::error!(%error, "cannot register the admin listener"),
                    }
                });
                // Dropping the runtime here cancels requests still in flight.
            })?;
        tracing::info!(admin_listen = %local_addr, "admin listener started: /metrics, /healthz, /readyz, backend API");
        Ok(AdminListener {
            local_addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The bound address (the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting, drops open admin connections, and joins the thread.
    pub fn stop(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the admin thread panicked");
            }
        }
    }
}

impl Drop for AdminListener {
    fn drop(&mut self) {
        self.stop_now();
    }
}

async fn accept_loop(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream, state.clone()));
                }
                Err(error) => {
                    // Out of file descriptors, most likely: back off instead of spinning.
                    tracing::warn!(%error, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

async fn serve(stream: TcpStream, state: Arc<AdminState>) {
    let service = service_fn(move |request| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(route(&state, request).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT);
    if let Err(error) = builder
        .serve_connection(TokioIo::new(stream), service)
        .await
    {
        tracing::debug!(%error, "admin connection ended with an error");
    }
}

async fn route(state: &AdminState, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    let get = method == Method::GET || method == Method::HEAD;
    match path.as_str() {
        "/healthz" if get => text(StatusCode::OK, "ok\n"),
        "/readyz" if get => {
            if state.is_ready() {
                text(StatusCode::OK, "ready\n")
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
            }
        }
        "/metrics" if get => metrics_response(state, &request),
        "/v2/status" if method == Method::GET => {
            let query = request.uri().query();
            if let Err(refused) = backend::check_http_key(query, request.headers(), &state.http_key)
            {
                return *refused;
            }
            match ready_engine(state) {
                Some(engine) => backend::status(engine, query).await,
                None => backend::unavailable(backend::messages::NOT_READY),
            }
        }
        "/healthz" | "/readyz" | "/metrics" | "/v2/status" => method_not_allowed(),
        _ => match disconnect_target(&path) {
            Some(session_id) if method == Method::POST => {
                let session_id = session_id.to_owned();
                if let Err(refused) = backend::check_http_key(
                    request.uri().query(),
                    request.headers(),
                    &state.http_key,
                ) {
                    return *refused;
                }
                match ready_engine(state) {
                    Some(engine) => backend::disconnect(engine, &session_id, request).await,
                    None => backend::unavailable(backend::messages::NOT_READY),
                }
            }
            Some(_) => method_not_allowed(),
            None => rest::error_response(StatusCode::NOT_FOUND, 5, "Not Found"),
        },
    }
}

/// `{id}` of `/v2/session/{id}/disconnect`.
fn disconnect_target(path: &str) -> Option<&str> {
    path.strip_prefix("/v2/session/")?
        .strip_suffix("/disconnect")
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// The engine, if it serves and is not shutting down.
fn ready_engine(state: &AdminState) -> Option<&EngineHandle> {
    state.engine().filter(|engine| !engine.is_shutting_down())
}

fn metrics_response(state: &AdminState, request: &Request<Incoming>) -> Response<Body> {
    let Some((_, registry)) = state.serving.get() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "starting\n");
    };
    let openmetrics = request
        .headers()
        .get(ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    match metrics::encode(registry, openmetrics) {
        Ok(body) => {
            let mut response = Response::new(Body::new(Bytes::from(body)));
            let content_type = if openmetrics {
                metrics::OPENMETRICS_TEXT
            } else {
                metrics::PROMETHEUS_TEXT
            };
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            response
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "cannot encode metrics\n"),
    }
}

fn method_not_allowed() -> Response<Body> {
    rest::error_response(StatusCode::METHOD_NOT_ALLOWED, 12, "Method Not Allowed")
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disconnect_paths_name_one_session() {
        assert_eq!(disconnect_target("/v2/session/abc/disconnect"), Some("abc"));
        assert_eq!(disconnect_target("/v2/session//disconnect"), None);
        assert_eq!(disconnect_target("/v2/session/a/b/disconnect"), None);
        assert_eq!(disconnect_target("/v2/session/abc"), None);
    }
}

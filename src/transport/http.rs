//! HTTP/1.1 on the main listener (hyper): routing and CORS.
//!
//! Routes: `GET /` (200, empty body, for load balancers), `GET /ws` (the
//! realtime socket, see [`super::upgrade`]), the REST endpoints in
//! [`super::rest`], and the live status page under `/status-demo`
//! ([`super::status_page`]). Every response carries Nakama's CORS headers, and
//! `OPTIONS` preflights are answered for every path, as gorilla's CORS
//! handler in Nakama does.
//!
//! Limits against hostile clients: request heads over [`MAX_HEAD_BYTES`] get
//! 431 (hyper), a head must arrive within [`HEAD_TIMEOUT`], and bodies are
//! capped by the REST layer.

use std::convert::Infallible;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN,
};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::rest::{self, RestContext};
use super::{status_page, upgrade, ServerState};
use crate::auth::IdKind;
use crate::engine::ShardContext;

/// Largest request head (request line and headers) accepted.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Time allowed for a request head to arrive (slowloris guard).
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest REST request body accepted, as Nakama's `max_request_size_bytes`.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// A response body: always a complete buffer.
pub type Body = Full<Bytes>;

/// Serves one accepted connection (plain TCP, or TLS after its handshake):
/// HTTP requests until it closes or is upgraded to a websocket.
pub async fn serve<I>(ctx: Rc<ShardContext>, state: Arc<ServerState>, io: I)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let rest = Rc::new(RestContext {
        tokens: state.tokens.clone(),
        accounts: state.accounts.clone(),
        server_key: state.config.server_key.clone(),
        engine: ctx.engine.clone(),
        max_body_bytes: MAX_BODY_BYTES,
        stats: ctx.stats.clone(),
    });
    let service = service_fn(move |request| {
        let (ctx, state, rest) = (ctx.clone(), state.clone(), rest.clone());
        async move { Ok::<_, Infallible>(route(&ctx, &state, &rest, request).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES.max(8192));
    let connection = builder
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(error) = connection.await {
        tracing::debug!(%error, "http connection ended with an error");
    }
}

async fn route(
    ctx: &Rc<ShardContext>,
    state: &Arc<ServerState>,
    rest: &RestContext,
    request: Request<Incoming>,
) -> Response<Body> {
    let mut response = match (request.method(), request.uri().path()) {
        (&Method::OPTIONS, _) => preflight(),
        (&Method::GET | &Method::HEAD, "/") => Response::new(Body::default()),
        (&Method::GET, "/ws") => upgrade::websocket(ctx, state, request).await,
        (&Method::POST, "/v2/account/authenticate/custom") => {
            rest::authenticate(rest, IdKind::Custom, request).await
        }
        (&Method::POST, "/v2/account/authenticate/device") => {
            rest::authenticate(rest, IdKind::Device, request).await
        }
        (&Method::POST, "/v2/account/session/refresh") => rest::refresh(rest, request).await,
        (&Method::GET | &Method::HEAD, path) if status_page::PATHS.contains(&path) => {
            status_page::asset(path)
                .unwrap_or_else(|| rest::error_response(StatusCode::NOT_FOUND, 5, "Not Found"))
        }
        (
            _,
            "/"
            | "/ws"
            | "/v2/account/authenticate/custom"
            | "/v2/account/authenticate/device"
            | "/v2/account/session/refresh"
            | "/status-demo",
        ) => rest::error_response(StatusCode::METHOD_NOT_ALLOWED, 12, "Method Not Allowed"),
        _ => rest::error_response(StatusCode::NOT_FOUND, 5, "Not Found"),
    };
    response
        .headers_mut()
        .insert(ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

/// Answers a CORS preflight like Nakama's gorilla handler.
fn preflight() -> Response<Body> {
    let mut response = Response::new(Body::default());
    let headers = response.headers_mut();
    headers.insert(
        ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, User-Agent"),
    );
    headers.insert(
        ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE"),
    );
    response
}

/// A plain-text response, as Nakama's handshake errors are.
pub fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

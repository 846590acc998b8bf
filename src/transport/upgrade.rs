//! `GET /ws`: the websocket handshake, in Nakama's order (reference §2):
//!
//! 1. `format`: `""`/`json` or `protobuf`; anything else → 400 `Invalid format parameter`.
//! 2. The token: `Authorization: Bearer …` if that header is present (any
//!    other Authorization → 401), else `?token=`. It must verify (HS256,
//!    unexpired, UUID `uid`) → else 401 `Missing or invalid token`.
//! 3. `status` parsed like Go's `strconv.ParseBool`, unparsable = false; `lang` is ignored.
//! 4. Past `--max-connections` open sessions → 503, never a hang. In cluster
//!    mode also while the node is not ready (starting, or fenced) → 503
//!    `Node not ready`: the client retries, on any node.
//! 5. The upgrade (fastwebsockets checks the key and version; no extensions,
//!    no subprotocol), then the socket (with its TLS state, under
//!    `--tls-cert`) moves to the user's home shard, where the session is
//!    registered and its task starts.

use std::io;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::connection::Connection;
use super::http::{plain, Body};
use super::tls::{DetachedTls, TlsIo};
use super::ServerState;
use crate::auth::SessionClaims;
use crate::engine::{Outbox, SessionSpec, ShardContext};
use crate::ids::SessionId;
use crate::protocol::Format;

const INVALID_FORMAT: &str = "Invalid format parameter";
const INVALID_TOKEN: &str = "Missing or invalid token";

/// What the handshake learned, carried to the home shard.
struct Handshake {
    claims: SessionClaims,
    format: Format,
    appear_online: bool,
}

/// Handles `GET /ws` (see the module doc).
pub async fn websocket(
    ctx: &Rc<ShardContext>,
    state: &Arc<ServerState>,
    mut request: Request<Incoming>,
) -> Response<Body> {
    let query = Query::parse(request.uri().query().unwrap_or(""));
    let Some(format) = Format::from_query(query.format.as_deref().unwrap_or("")) else {
        return plain(StatusCode::BAD_REQUEST, INVALID_FORMAT);
    };
    let token = match request.headers().get(hyper::header::AUTHORIZATION) {
        Some(header) => match header.to_str().ok().and_then(|h| h.strip_prefix("Bearer ")) {
            Some(token) => token.trim().to_owned(),
            None => return plain(StatusCode::UNAUTHORIZED, INVALID_TOKEN),
        },
        None => query.token.unwrap_or_default(),
    };
    if token.is_empty() {
        return plain(StatusCode::UNAUTHORIZED, INVALID_TOKEN);
    }
    let Ok(claims) = state.tokens.verify_session(&token) else {
        return plain(StatusCode::UNAUTHORIZED, INVALID_TOKEN);
    };
    let appear_online = query.status.as_deref().is_some_and(go_parse_bool);

    if !fastwebsockets::upgrade::is_upgrade_request(&request) {
        return plain(StatusCode::BAD_REQUEST, "Bad Request");
    }
    if ctx.engine.cluster().is_some_and(|c| !c.is_ready()) {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "Node not ready");
    }
    if state.websockets.fetch_add(1, Ordering::AcqRel) >= state.max_connections {
        state.websockets.fetch_sub(1, Ordering::AcqRel);
        return plain(StatusCode::SERVICE_UNAVAILABLE, "Too many connections");
    }
    let (response, upgrading) = match fastwebsockets::upgrade::upgrade(&mut request) {
        Ok(pair) => pair,
        Err(_) => {
            state.websockets.fetch_sub(1, Ordering::AcqRel);
            return plain(StatusCode::BAD_REQUEST, "Bad Request");
        }
    };
    let handshake = Handshake {
        claims,
        format,
        appear_online,
    };
    let (ctx, state) = (ctx.clone(), state.clone());
    tokio::task::spawn_local(async move {
        let slot = WebsocketSlot(state.clone());
        match upgrading.await {
            Ok(websocket) => hand_off(
                &ctx,
                state,
                websocket.into_inner().into_inner(),
                handshake,
                slot,
            ),
            Err(error) => tracing::debug!(%error, "websocket upgrade failed"),
        }
    });
    let (parts, _) = response.into_parts();
    Response::from_parts(parts, Body::default())
}

/// Holds one unit of `--max-connections` until the session ends.
struct WebsocketSlot(Arc<ServerState>);

impl Drop for WebsocketSlot {
    fn drop(&mut self) {
        self.0.websockets.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream a websocket session runs on, and how it moves to another shard:
/// detached from the accepting shard's reactor, sent, attached on the home
/// shard. Plain TCP moves as a `std` socket; TLS moves with its rustls state
/// (see [`super::tls`]).
trait SessionIo: AsyncRead + AsyncWrite + Unpin + Sized + 'static {
    type Detached: Send + 'static;
    fn detach(self) -> io::Result<Self::Detached>;
    fn attach(detached: Self::Detached) -> io::Result<Self>;
}

impl SessionIo for TcpStream {
    type Detached = std::net::TcpStream;

    fn detach(self) -> io::Result<std::net::TcpStream> {
        self.into_std()
    }

    fn attach(detached: std::net::TcpStream) -> io::Result<TcpStream> {
        TcpStream::from_std(detached)
    }
}

impl SessionIo for TlsIo {
    type Detached = DetachedTls;

    fn detach(self) -> io::Result<DetachedTls> {
        DetachedTls::detach(self)
    }

    fn attach(detached: DetachedTls) -> io::Result<TlsIo> {
        detached.attach()
    }
}

/// Takes the socket out of the upgraded connection (plain or TLS) and hands
/// it to the user's home shard.
fn hand_off(
    ctx: &Rc<ShardContext>,
    state: Arc<ServerState>,
    upgraded: hyper::upgrade::Upgraded,
    handshake: Handshake,
    slot: WebsocketSlot,
) {
    let upgraded = match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let stream = parts.io.into_inner();
            return move_home(ctx, state, stream, parts.read_buf, handshake, slot);
        }
        Err(upgraded) => upgraded,
    };
    match upgraded.downcast::<TokioIo<TlsIo>>() {
        Ok(parts) => {
            let stream = parts.io.into_inner();
            move_home(ctx, state, stream, parts.read_buf, handshake, slot);
        }
        Err(_) => tracing::error!("upgraded connection is neither TCP nor TLS"),
    }
}

/// Starts the session here if this is the user's home shard, else moves the
/// socket there first.
fn move_home<S: SessionIo>(
    ctx: &Rc<ShardContext>,
    state: Arc<ServerState>,
    stream: S,
    early: Bytes,
    handshake: Handshake,
    slot: WebsocketSlot,
) {
    let home = ctx.engine.router().shard_of_user(handshake.claims.user_id);
    if home == ctx.index {
        start_session(ctx, state, stream, early, handshake, slot);
        return;
    }
    let detached = match stream.detach() {
        Ok(detached) => detached,
        Err(error) => {
            tracing::warn!(%error, "cannot move a socket to its home shard");
            return;
        }
    };
    ctx.engine
        .run_on(home, move |ctx| match S::attach(detached) {
            Ok(stream) => start_session(ctx, state, stream, early, handshake, slot),
            Err(error) => tracing::warn!(%error, "cannot adopt a socket on its home shard"),
        });
}

/// On the home shard: registers the session and spawns its task.
fn start_session<S: SessionIo>(
    ctx: &Rc<ShardContext>,
    state: Arc<ServerState>,
    stream: S,
    early: Bytes,
    handshake: Handshake,
    slot: WebsocketSlot,
) {
    let Handshake {
        claims,
        format,
        appear_online,
    } = handshake;
    let limit = usize::try_from(state.config.outgoing_queue_bytes).unwrap_or(usize::MAX);
    let outbox = Arc::new(Outbox::new(format, limit, ctx.engine.now()));
    let spec = SessionSpec {
        id: SessionId::random(),
        user: claims.user_id,
        username: Arc::from(claims.username.as_str()),
        appear_online,
        outbox: outbox.clone(),
    };
    let (key, first_seen) = ctx.shard.borrow_mut().connect(spec);
    if first_seen {
        // This shard owns the user's id and has just recorded it.
        ctx.engine.user_connected(claims.user_id);
        record_external_user(ctx, &state, &claims);
    }
    let max_message = usize::try_from(state.config.max_message_bytes).unwrap_or(usize::MAX);
    let connection = Connection::new(stream, ctx.clone(), key, outbox, max_message, &early);
    tokio::task::spawn_local(async move {
        connection.await;
        drop(slot);
    });
}

/// A user first seen through a token minted elsewhere (another Nakama with
/// the same key): store it, and index its username so follow-by-username
/// finds it.
fn record_external_user(ctx: &Rc<ShardContext>, state: &ServerState, claims: &SessionClaims) {
    let (accounts, engine) = (state.accounts.clone(), ctx.engine.clone());
    let (user, username) = (claims.user_id, claims.username.clone());
    tokio::task::spawn_local(async move {
        match accounts.record_external(user, username).await {
            Ok(Some(stored)) => engine.register_user(user, &stored).await,
            Ok(None) => {}
            Err(error) => tracing::warn!(%user, %error, "cannot record an external user"),
        }
    });
}

/// The query parameters `/ws` reads (first value of each, as Go's `Query().Get`).
#[derive(Default)]
struct Query {
    format: Option<String>,
    token: Option<String>,
    status: Option<String>,
}

impl Query {
    fn parse(query: &str) -> Query {
        let mut parsed = Query::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match key.as_ref() {
                "format" => &mut parsed.format,
                "token" => &mut parsed.token,
                "status" => &mut parsed.status,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value.into_owned());
            }
        }
        parsed
    }
}

/// Go's `strconv.ParseBool`, with errors read as false (Nakama ignores them).
pub fn go_parse_bool(value: &str) -> bool {
    matches!(value, "1" | "t" | "T" | "TRUE" | "true" | "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_is_parsed_like_go_parse_bool() {
        for yes in ["1", "t", "T", "TRUE", "true", "True"] {
            assert!(go_parse_bool(yes), "{yes}");
        }
        for no in ["0", "f", "false", "False", "yes", "", "tRUE"] {
            assert!(!go_parse_bool(no), "{no}");
        }
    }

    #[test]
    fn query_keeps_the_first_value_and_decodes_percent_escapes() {
        let q = Query::parse("lang=en&status=true&token=a%2Eb.c&token=other&format=");
        assert_eq!(q.token.as_deref(), Some("a.b.c"));
        assert_eq!(q.status.as_deref(), Some("true"));
        assert_eq!(q.format.as_deref(), Some(""));
    }
}

//! The listening sockets and the accept loop.
//!
//! Every shard accepts on its own `SO_REUSEPORT` socket bound to the same
//! address; the kernel spreads new connections across them, so accepting
//! scales with shards and no thread hands sockets to another just to accept.
//! The sockets are bound on the main thread before the shards start, so a
//! busy port fails start-up with a clear error.

use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

use super::ServerState;
use super::{http, tls};
use crate::engine::ShardContext;

/// Pending connections the kernel may queue per listener.
const BACKLOG: i32 = 4096;

/// Binds `count` listeners to `addr` with `SO_REUSEPORT`. With port 0, the
/// first picks a free port and the others join it.
pub fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut listeners = Vec::with_capacity(count);
    let mut bound = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(
            Domain::for_address(bound),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&bound.into())?;
        socket.listen(BACKLOG)?;
        let listener: std::net::TcpListener = socket.into();
        bound = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Accepts connections on this shard until shutdown reaches it, serving each
/// as HTTP on this shard's thread (after the TLS handshake, with `--tls-cert`).
pub async fn accept_loop(
    ctx: Rc<ShardContext>,
    state: Arc<ServerState>,
    listener: std::net::TcpListener,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(shard = ctx.index, %error, "cannot register the listener");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            biased;
            () = ctx.stopped() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                match &state.tls {
                    None => {
                        tokio::task::spawn_local(http::serve(ctx.clone(), state.clone(), stream));
                    }
                    Some(acceptor) => {
                        let (ctx, state, acceptor) = (ctx.clone(), state.clone(), acceptor.clone());
                        tokio::task::spawn_local(async move {
                            match tls::handshake(&acceptor, stream).await {
                                Ok(stream) => http::serve(ctx, state, stream).await,
                                Err(error) => tracing::debug!(%error, "TLS handshake failed"),
                            }
                        });
                    }
                }
            }
            Err(error) => {
                // Out of descriptors or memory: back off instead of spinning.
                tracing::warn!(shard = ctx.index, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

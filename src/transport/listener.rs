//! The listening sockets and the accept loop.
//!
//! Every shard accepts on its own `SO_REUSEPORT` socket bound to the same
//! address; the kernel spreads new connections across them, so accepting
//! scales with shards and no thread hands sockets to another just to accept.
//! The sockets are bound on the main thread before the shards start, so a
//! busy port fails start-up with a clear error, even when what holds it is
//! another herald (whose `SO_REUSEPORT` listeners would otherwise accept
//! ours into their group: see `refuse_a_taken_port`).
//!
//! The kernel hands over a connection only once its first bytes arrived
//! (`TCP_DEFER_ACCEPT`), already with `TCP_NODELAY` (inherited from the
//! listener); see `defer_accept_until_data`.

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
/// first picks a free port (the kernel never picks one another
/// `SO_REUSEPORT` group holds) and the others join it.
pub fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    if addr.port() != 0 {
        refuse_a_taken_port(addr)?;
    }
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
        // Accepted sockets inherit it, which saves a system call per connection.
        socket.set_tcp_nodelay(true)?;
        defer_accept_until_data(&socket)?;
        socket.bind(&bound.into())?;
        socket.listen(BACKLOG)?;
        let listener: std::net::TcpListener = socket.into();
        bound = listener.local_addr()?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// Checks that no other process listens on `addr`, by binding a socket
/// without `SO_REUSEPORT` there and closing it again.
///
/// Without this check a second herald on the same port (same user, both
/// with `SO_REUSEPORT`) would start without error, and the kernel would
/// split new connections between the two processes: each would see only
/// its half of the players, and follows across the halves would never
/// deliver. `SO_REUSEADDR` keeps connections of an earlier run still in
/// `TIME_WAIT` from failing the check; only a listener does.
fn refuse_a_taken_port(addr: SocketAddr) -> io::Result<()> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into()).map_err(|error| {
        if error.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(
                error.kind(),
                format!("{addr} is in use by another process (another herald?)"),
            )
        } else {
            error
        }
    })?;
    Ok(())
}

/// How long the kernel keeps a connected but silent client from `accept`.
const DEFER_ACCEPT_SECS: libc::c_int = 1;

/// Sets `TCP_DEFER_ACCEPT`: the kernel hands a connection to `accept` only
/// once its first bytes (the HTTP request or the TLS hello) have arrived, so
/// the first read finds them instead of a wait on epoll. In the connect
/// scenario that cut the server's CPU per connection by about a fifth (84
/// against 100–108 µs in one binary, PERF.md "connect and follow rates"). A client that stays silent is handed over after
/// [`DEFER_ACCEPT_SECS`] all the same, and then meets the usual head or
/// handshake timeout. Elsewhere than Linux this is a no-op.
fn defer_accept_until_data(socket: &Socket) -> io::Result<()> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::fd::AsRawFd;
        let value: libc::c_int = DEFER_ACCEPT_SECS;
        // SAFETY: `socket` owns an open descriptor for the whole call, and
        // the option value points at a live `c_int` whose exact size is
        // passed; the kernel only reads those bytes.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                std::ptr::from_ref(&value).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = socket;
    Ok(())
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
            Ok((stream, _peer)) => match &state.tls {
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
            },
            Err(error) => {
                // Out of descriptors or memory: back off instead of spinning.
                tracing::warn!(shard = ctx.index, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::time::Instant;

    /// Polls the non-blocking listener for up to `wait`.
    fn accept_within(
        listener: &std::net::TcpListener,
        wait: Duration,
    ) -> Option<std::net::TcpStream> {
        let until = Instant::now() + wait;
        while Instant::now() < until {
            match listener.accept() {
                Ok((stream, _)) => return Some(stream),
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(error) => panic!("accept: {error}"),
            }
        }
        None
    }

    #[test]
    fn a_connection_is_accepted_once_it_speaks_and_without_nagle() {
        let listeners = bind("127.0.0.1:0".parse().expect("addr"), 1).expect("bind");
        let listener = &listeners[0];
        let addr = listener.local_addr().expect("local addr");
        let mut client = std::net::TcpStream::connect(addr).expect("connect");
        assert!(
            accept_within(listener, Duration::from_millis(300)).is_none(),
            "a silent connection must wait in the kernel"
        );
        client.write_all(b"GET / HTTP/1.1\r\n").expect("write");
        let accepted = accept_within(listener, Duration::from_secs(5)).expect("accepted");
        assert!(
            accepted.nodelay().expect("nodelay"),
            "TCP_NODELAY inherited"
        );
    }

    #[test]
    fn a_port_held_by_another_servers_listeners_is_refused() {
        let first = bind("127.0.0.1:0".parse().expect("addr"), 2).expect("bind");
        let addr = first[0].local_addr().expect("addr");
        assert!(first.iter().all(|l| l.local_addr().ok() == Some(addr)));
        let error = bind(addr, 2).expect_err("a second group on the same port");
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
        assert!(error.to_string().contains("in use by another process"));
        drop(first);
        let again = bind(addr, 2).expect("the port is free once the first group closed");
        assert_eq!(again[1].local_addr().expect("addr"), addr);
    }

    #[test]
    fn a_silent_connection_is_still_accepted_after_the_deferral() {
        let listeners = bind("127.0.0.1:0".parse().expect("addr"), 1).expect("bind");
        let _client = std::net::TcpStream::connect(listeners[0].local_addr().expect("addr"))
            .expect("connect");
        // The first SYN-ACK retransmit after the 1 s deferral brings it in;
        // allow for the retransmit timer's slack.
        assert!(accept_within(&listeners[0], Duration::from_secs(8)).is_some());
    }
}

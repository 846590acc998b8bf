//! The kernel's floor for one websocket-sized connection on loopback: what a
//! connect storm costs a server and its clients before any server code runs.
//!
//! Two threads in this process. The client thread opens `N` connections in
//! batches of `BATCH`: a blocking `connect` (on loopback the three-way
//! handshake completes inside it) and one `REQUEST`-byte write each, then it
//! reads the batch's answers. The server thread does only what any
//! event-loop server must per connection: `accept4` on a listener bound by
//! Herald's own `listener::bind` (so with `TCP_DEFER_ACCEPT` and an
//! inherited `TCP_NODELAY`), one `epoll_ctl` to register the socket, one read
//! of the request and one `RESPONSE`-byte write. No HTTP parsing, no token, no
//! allocation per connection beyond the socket. Every socket stays open to
//! the end, as in loadgen's `connect`. Each thread's CPU time (user + system,
//! `RUSAGE_THREAD`) is divided by `N`; `two_core_bound_per_sec` is the rate
//! two cores could sustain at those costs, `1 / (server + client)` per core.
//!
//! Defaults: 9900 connections (2 descriptors each, under the 20,000 limit),
//! batches of 256, a 520-byte request (loadgen's upgrade request with its
//! token) and a 166-byte answer (Herald's `101 Switching Protocols`).
//!
//! `cargo run --release -p loadgen --example connect_floor -- [N] [BATCH] [REQUEST] [RESPONSE]`
//! Prints one JSON line.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

mod common;
use common::{arg, thread_cpu_seconds};

fn main() -> std::io::Result<()> {
    let conns = arg(1, 9_900).max(1);
    let batch = arg(2, 256).max(1);
    let (request_len, response_len) = (arg(3, 520).max(1), arg(4, 166).max(1));
    let listener = herald::transport::listener::bind("127.0.0.1:0".parse().expect("literal"), 1)?
        .pop()
        .expect("bind returns one listener");
    listener.set_nonblocking(false)?;
    let addr = listener.local_addr()?;
    let started = Instant::now();

    let server = std::thread::spawn(move || -> std::io::Result<(f64, Vec<TcpStream>)> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative result is a
        // new descriptor that nothing else owns, handed to `OwnedFd` at once.
        let epoll = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epoll < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: see above: `epoll` is a fresh descriptor owned only here.
        let epoll = unsafe { OwnedFd::from_raw_fd(epoll) };
        let mut request = vec![0u8; request_len];
        let response = vec![b'h'; response_len];
        let mut kept = Vec::with_capacity(conns);
        let before = thread_cpu_seconds();
        for _ in 0..conns {
            let (mut stream, _) = listener.accept()?;
            let mut event = libc::epoll_event {
                events: (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
                u64: kept.len() as u64,
            };
            // SAFETY: both descriptors are open for the call, and `event`
            // is a live epoll_event the kernel only reads.
            let rc = unsafe {
                libc::epoll_ctl(
                    epoll.as_raw_fd(),
                    libc::EPOLL_CTL_ADD,
                    stream.as_raw_fd(),
                    &mut event,
                )
            };
            if rc != 0 {
                return Err(std::io::Error::last_os_error());
            }
            stream.read_exact(&mut request)?;
            stream.write_all(&response)?;
            kept.push(stream);
        }
        Ok((thread_cpu_seconds() - before, kept))
    });

    let request = vec![b'g'; request_len];
    let mut answer = vec![0u8; response_len];
    let mut clients: Vec<TcpStream> = Vec::with_capacity(conns);
    let before = thread_cpu_seconds();
    while clients.len() < conns {
        let first = clients.len();
        for _ in first..(first + batch).min(conns) {
            let mut stream = TcpStream::connect(addr)?;
            stream.write_all(&request)?;
            clients.push(stream);
        }
        for stream in &mut clients[first..] {
            stream.read_exact(&mut answer)?;
        }
    }
    let client_cpu = thread_cpu_seconds() - before;
    let wall = started.elapsed().as_secs_f64();
    let (server_cpu, _server_sockets) = server.join().expect("server thread")?;
    let per_conn = |seconds: f64| seconds / conns as f64 * 1e6;
    let (server_us, client_us) = (per_conn(server_cpu), per_conn(client_cpu));
    println!(
        "{{\"bench\":\"connect_floor\",\"conns\":{conns},\"batch\":{batch},\"request_bytes\":{request_len},\"response_bytes\":{response_len},\"server_cpu_us_per_conn\":{server_us:.2},\"client_cpu_us_per_conn\":{client_us:.2},\"two_core_bound_per_sec\":{:.0},\"conns_per_sec\":{:.0}}}",
        2e6 / (server_us + client_us),
        conns as f64 / wall
    );
    Ok(())
}

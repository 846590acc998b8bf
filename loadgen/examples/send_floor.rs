//! The kernel's floor for one small write per loopback TCP socket: what a
//! fan-out to N followers costs the sender before any server code runs.
//!
//! Opens `N` connected loopback pairs in this process, then for each of
//! `ROUNDS` rounds writes one `BYTES`-byte message to every accepted socket
//! (`TCP_NODELAY`, as Herald sets) and measures the writing thread's CPU time
//! (`RUSAGE_THREAD`, user + system) across those writes. The reading sides
//! are drained between rounds, outside the measurement. On loopback the
//! receiver's TCP processing (and its immediate ACK) runs inside the
//! sender's `write`, so this is the per-delivery cost a server pays however
//! lean its own code is.
//!
//! Rounds alternate between `send` and a one-element `writev`, on the same
//! sockets in the same process (socket memory placement differs from run to
//! run, which moves the cost more than the call does), and both are
//! reported: `cpu_us_per_send` (also `cpu_us_per_write`) and
//! `cpu_us_per_writev`.
//!
//! `cargo run --release -p loadgen --example send_floor -- [N] [ROUNDS] [BYTES]`
//! (defaults 9900 10 200; N is capped by the open-file limit: 2 descriptors
//! per pair). Prints one JSON line.

use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

mod common;
use common::{arg, thread_cpu_seconds};

fn main() -> std::io::Result<()> {
    let (pairs, rounds, bytes) = (arg(1, 9_900), arg(2, 10).max(1), arg(3, 200).max(1));
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut readers = Vec::with_capacity(pairs);
    let mut writers = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        let reader = TcpStream::connect(addr)?;
        let (writer, _) = listener.accept()?;
        writer.set_nodelay(true)?;
        reader.set_nonblocking(true)?;
        readers.push(reader);
        writers.push(writer);
    }
    let message = vec![b'x'; bytes];
    let mut buffer = vec![0u8; 64 * 1024];
    // CPU seconds spent in [send rounds, writev rounds].
    let mut cpu = [0.0; 2];
    let started = Instant::now();
    for round in 0..rounds * 2 {
        let writev = round % 2 == 1;
        let before = thread_cpu_seconds();
        for writer in &mut writers {
            let written = if writev {
                writer.write_vectored(&[IoSlice::new(&message)])?
            } else {
                writer.write(&message)?
            };
            assert_eq!(written, bytes, "a loopback socket with room takes it all");
        }
        cpu[usize::from(writev)] += thread_cpu_seconds() - before;
        for reader in &mut readers {
            loop {
                match reader.read(&mut buffer) {
                    Ok(0) => break,
                    Ok(_) => continue,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
        }
    }
    let per_write = |seconds: f64| seconds / (pairs * rounds) as f64 * 1e6;
    let (send, writev) = (per_write(cpu[0]), per_write(cpu[1]));
    println!(
        "{{\"bench\":\"send_floor\",\"sockets\":{pairs},\"rounds\":{rounds},\"bytes\":{bytes},\"cpu_us_per_write\":{send:.2},\"cpu_us_per_send\":{send:.2},\"cpu_us_per_writev\":{writev:.2},\"wall_s\":{:.2}}}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

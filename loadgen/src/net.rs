//! One event loop over many client websockets: mio (epoll, edge-triggered),
//! one large read buffer per loop, frames parsed in place, no task or
//! buffer per idle connection beyond a few empty `Vec`s.
//!
//! A connection's life: [`Net::open`] binds a source address, starts a
//! non-blocking connect and queues the HTTP upgrade request; when the socket
//! becomes writable the request is flushed; the `101` response moves it to
//! `Open` and [`Handler::on_open`] runs. Text frames go to
//! [`Handler::on_text`]; server pings are answered with masked pongs; a
//! server close frame is echoed and reported through [`Handler::on_close`].

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4};
use std::time::Duration;

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};
use socket2::{Domain, Protocol, Socket, Type};

use crate::sys::now_ns;
use crate::ws::{self, Header, MaskGen};

/// Token of the control waker.
pub const WAKER: Token = Token(usize::MAX);
/// Bytes read per `read()`.
const RBUF: usize = 256 * 1024;
/// Source ports: 10000..61000.
const PORT_LO: u16 = 10_000;
const PORT_SPAN: u32 = 51_000;
/// A poll that finds this many ready sockets is followed by the next one at once.
const BATCH_ENOUGH: usize = 64;
/// Reads per readiness event before the connection yields to others.
const MAX_READS_PER_EVENT: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Idle,
    Connecting,
    Handshake,
    Open,
    Closed,
}

/// Why a connection ended.
#[derive(Debug, Clone)]
pub enum CloseWhy {
    /// The server sent a close frame.
    ServerClose { code: u16, reason: String },
    /// EOF or a socket error without a close frame.
    Dropped(String),
    /// The upgrade was refused or the TCP connect failed.
    ConnectFailed(String),
}

/// What the loop tells its owner.
pub trait Handler {
    fn on_open(&mut self, _conn: usize, _now: u64) {}
    fn on_text(&mut self, conn: usize, payload: &[u8], now: u64);
    fn on_close(&mut self, _conn: usize, _why: &CloseWhy, _now: u64) {}
}

pub struct Conn {
    stream: Option<TcpStream>,
    pub state: State,
    /// Partial frame (or partial upgrade response) carried between reads.
    rx: Vec<u8>,
    /// Bytes not yet accepted by the socket.
    tx: Vec<u8>,
    /// A fragmented message being assembled.
    frag: Vec<u8>,
    frag_active: bool,
    /// When the connect started (ns), for connect latency.
    pub started: u64,
}

impl Conn {
    fn new() -> Conn {
        Conn {
            stream: None,
            state: State::Idle,
            rx: Vec::new(),
            tx: Vec::new(),
            frag: Vec::new(),
            frag_active: false,
            started: 0,
        }
    }
}

/// Counters of the transport, summed into the report.
#[derive(Debug, Default, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct NetStats {
    pub reads: u64,
    pub bytes_in: u64,
    pub frames_in: u64,
    pub text_in: u64,
    pub frames_out: u64,
    pub bytes_out: u64,
    pub pings: u64,
    pub server_closes: u64,
    pub dropped: u64,
    pub connect_failed: u64,
    pub protocol_errors: u64,
    pub opened: u64,
}

pub struct Net {
    poll: Poll,
    events: Events,
    pub conns: Vec<Conn>,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    mask: MaskGen,
    /// The servers (cluster nodes) and their `Host` headers; a connection
    /// names one by index when it opens.
    servers: Vec<(SocketAddr, String)>,
    /// Connections with unread data left after `MAX_READS_PER_EVENT`.
    backlog: Vec<usize>,
    ready: Vec<(usize, bool, bool)>,
    last_ready: usize,
    ports: Vec<(Ipv4Addr, u32)>,
    port_lane: u32,
    port_step: u32,
    port_offset: u32,
    /// Sleep before polling again after a poll that found few sockets ready.
    pub batch: Duration,
    pub stats: NetStats,
    pub woken: bool,
    /// Connections in `Connecting` or `Handshake`.
    pub in_flight: usize,
    /// Connections in `Open`.
    pub open: usize,
    /// Last upgrade refusal, for the report.
    pub last_connect_error: Option<String>,
}

impl Net {
    pub fn new(n: usize, servers: &[SocketAddr], seed: u64) -> io::Result<Net> {
        if servers.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no server"));
        }
        let poll = Poll::new()?;
        Ok(Net {
            poll,
            events: Events::with_capacity(4096),
            conns: (0..n).map(|_| Conn::new()).collect(),
            rbuf: vec![0u8; RBUF],
            wbuf: Vec::with_capacity(4096),
            mask: MaskGen::new(seed ^ 0x9e37_79b9_7f4a_7c15),
            servers: servers.iter().map(|s| (*s, s.to_string())).collect(),
            backlog: Vec::new(),
            ready: Vec::with_capacity(4096),
            last_ready: 0,
            ports: Vec::new(),
            port_lane: 0,
            port_step: 1,
            port_offset: 0,
            batch: Duration::ZERO,
            stats: NetStats::default(),
            woken: false,
            in_flight: 0,
            open: 0,
            last_connect_error: None,
        })
    }

    /// Sets the number of connection slots (grows or shrinks the table; shrinking drops connections).
    pub fn set_conns(&mut self, n: usize) {
        while self.conns.len() > n {
            let last = self.conns.len() - 1;
            self.drop_conn(last, true);
            self.conns.pop();
        }
        while self.conns.len() < n {
            self.conns.push(Conn::new());
        }
    }

    pub fn waker(&self) -> io::Result<Waker> {
        Waker::new(self.poll.registry(), WAKER)
    }

    /// Servers this loop connects to.
    pub fn nodes(&self) -> usize {
        self.servers.len()
    }

    /// Starts connecting `conn` from `source` to `GET path` on server `node`.
    pub fn open(
        &mut self,
        conn: usize,
        source: Ipv4Addr,
        node: usize,
        path: &str,
    ) -> io::Result<()> {
        let state = self.conns[conn].state;
        if state != State::Idle && state != State::Closed {
            return Ok(());
        }
        let Some(&(server, _)) = self.servers.get(node) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("no server {node}"),
            ));
        };
        let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
        sock.set_nonblocking(true)?;
        sock.set_tcp_nodelay(true)?;
        sock.set_reuse_address(true)?;
        self.bind_port(&sock, source)?;
        match sock.connect(&server.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(115) || e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        let std: std::net::TcpStream = sock.into();
        let mut stream = TcpStream::from_std(std);
        let c = &mut self.conns[conn];
        self.poll.registry().register(
            &mut stream,
            Token(conn),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        c.stream = Some(stream);
        c.state = State::Connecting;
        c.started = now_ns();
        c.rx.clear();
        c.tx.clear();
        c.frag.clear();
        c.frag_active = false;
        c.tx.extend_from_slice(b"GET ");
        c.tx.extend_from_slice(path.as_bytes());
        c.tx.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        c.tx.extend_from_slice(self.servers[node].1.as_bytes());
        c.tx.extend_from_slice(
            b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        );
        self.in_flight += 1;
        Ok(())
    }

    /// Binds `sock` to `source` and a port of our own choosing. The kernel's
    /// own choice costs O(ports in use) per socket, for bind(addr, 0) and for
    /// connect() alike (≈600 and ≈2,400 conn/s at 15k sockets); an explicit
    /// port is one hash lookup. Ports cycle through 10000..61000 per source
    /// address, from a per-run offset, interleaved between the shards of a process.
    fn bind_port(&mut self, sock: &Socket, source: Ipv4Addr) -> io::Result<()> {
        let slot = match self.ports.iter().position(|(a, _)| *a == source) {
            Some(i) => i,
            None => {
                let start = self.port_offset - self.port_offset % self.port_step + self.port_lane;
                self.ports.push((source, start));
                self.ports.len() - 1
            }
        };
        for _ in 0..512 {
            let cursor = self.ports[slot].1;
            self.ports[slot].1 = cursor.wrapping_add(self.port_step);
            let port = PORT_LO + (cursor % PORT_SPAN) as u16;
            match sock.bind(&SocketAddrV4::new(source, port).into()) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("no free port on {source}"),
        ))
    }

    /// Port lanes: this shard uses ports `lane, lane + step, ...` (from a per-run offset).
    pub fn set_port_lane(&mut self, lane: u32, step: u32, offset: u32) {
        self.port_lane = lane;
        self.port_step = step.max(1);
        self.port_offset = offset % PORT_SPAN;
    }

    /// Sends one text frame. Returns false if the connection is not open.
    pub fn send_text(&mut self, conn: usize, payload: &[u8]) -> bool {
        self.send_frame(conn, ws::OP_TEXT, payload)
    }

    pub fn send_frame(&mut self, conn: usize, opcode: u8, payload: &[u8]) -> bool {
        let c = &mut self.conns[conn];
        if c.state != State::Open {
            return false;
        }
        let key = self.mask.next();
        self.stats.frames_out += 1;
        if !c.tx.is_empty() {
            ws::push_frame(&mut c.tx, opcode, payload, key);
            return true;
        }
        self.wbuf.clear();
        ws::push_frame(&mut self.wbuf, opcode, payload, key);
        let Some(stream) = c.stream.as_mut() else {
            return false;
        };
        let mut at = 0;
        while at < self.wbuf.len() {
            match stream.write(&self.wbuf[at..]) {
                Ok(0) => break,
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        self.stats.bytes_out += at as u64;
        if at < self.wbuf.len() {
            c.tx.extend_from_slice(&self.wbuf[at..]);
        }
        true
    }

    /// Closes `conn`: a close frame 1000 first when `graceful`, and with
    /// `abortive` an RST (SO_LINGER 0) so no TIME_WAIT is left behind.
    pub fn close(&mut self, conn: usize, graceful: bool, abortive: bool) {
        if graceful && self.conns[conn].state == State::Open {
            self.send_frame(conn, ws::OP_CLOSE, &1000u16.to_be_bytes());
        }
        self.drop_conn(conn, abortive);
    }

    fn drop_conn(&mut self, conn: usize, abortive: bool) {
        let c = &mut self.conns[conn];
        match c.state {
            State::Connecting | State::Handshake => self.in_flight -= 1,
            State::Open => self.open -= 1,
            _ => {}
        }
        c.state = State::Closed;
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
            if abortive {
                let sock = socket2::SockRef::from(&s);
                let _ = sock.set_linger(Some(Duration::ZERO));
            } else {
                let _ = s.shutdown(Shutdown::Write);
            }
        }
        c.rx = Vec::new();
        c.tx = Vec::new();
        c.frag = Vec::new();
    }

    /// Waits up to `timeout` for events and handles them all.
    pub fn poll_once<H: Handler>(&mut self, h: &mut H, timeout: Duration) -> io::Result<()> {
        let timeout = if self.backlog.is_empty() {
            timeout
        } else {
            Duration::ZERO
        };
        // Coalesce wake-ups: after a poll that found only a few ready sockets,
        // let more arrive before the next one (one context switch per batch).
        if self.batch > Duration::ZERO
            && self.last_ready > 0
            && self.last_ready < BATCH_ENOUGH
            && !timeout.is_zero()
        {
            std::thread::sleep(self.batch.min(timeout));
        }
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e),
        }
        let now = now_ns();
        let mut ready = std::mem::take(&mut self.ready);
        ready.clear();
        for ev in self.events.iter() {
            if ev.token() == WAKER {
                self.woken = true;
                continue;
            }
            ready.push((
                ev.token().0,
                ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                ev.is_writable(),
            ));
        }
        let backlog = std::mem::take(&mut self.backlog);
        for conn in backlog {
            self.on_ready(h, conn, true, false, now);
        }
        self.last_ready = ready.len();
        for &(conn, r, w) in &ready {
            self.on_ready(h, conn, r, w, now);
        }
        self.ready = ready;
        Ok(())
    }

    fn on_ready<H: Handler>(
        &mut self,
        h: &mut H,
        conn: usize,
        readable: bool,
        writable: bool,
        now: u64,
    ) {
        if conn >= self.conns.len() {
            return;
        }
        match self.conns[conn].state {
            State::Connecting => {
                let Some(s) = self.conns[conn].stream.as_ref() else {
                    return;
                };
                match s.take_error() {
                    Ok(Some(e)) | Err(e) => {
                        self.fail_connect(h, conn, format!("connect: {e}"), now);
                        return;
                    }
                    Ok(None) => {}
                }
                match s.peer_addr() {
                    Ok(_) => {
                        self.conns[conn].state = State::Handshake;
                        self.flush(h, conn, now);
                        if readable {
                            self.read(h, conn, now);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                        if readable && !writable {
                            // Refused: readable with an error pending.
                            self.fail_connect(h, conn, "connect refused".into(), now);
                        }
                    }
                    Err(e) => self.fail_connect(h, conn, format!("connect: {e}"), now),
                }
            }
            State::Handshake | State::Open => {
                if writable && !self.conns[conn].tx.is_empty() {
                    self.flush(h, conn, now);
                }
                if readable {
                    self.read(h, conn, now);
                }
            }
            State::Idle | State::Closed => {}
        }
    }

    fn fail_connect<H: Handler>(&mut self, h: &mut H, conn: usize, why: String, now: u64) {
        self.stats.connect_failed += 1;
        self.last_connect_error = Some(why.clone());
        self.drop_conn(conn, true);
        h.on_close(conn, &CloseWhy::ConnectFailed(why), now);
    }

    fn dropped<H: Handler>(&mut self, h: &mut H, conn: usize, why: String, now: u64) {
        if self.conns[conn].state == State::Handshake {
            self.fail_connect(h, conn, why, now);
            return;
        }
        self.stats.dropped += 1;
        self.drop_conn(conn, true);
        h.on_close(conn, &CloseWhy::Dropped(why), now);
    }

    fn flush<H: Handler>(&mut self, h: &mut H, conn: usize, now: u64) {
        let c = &mut self.conns[conn];
        let Some(stream) = c.stream.as_mut() else {
            return;
        };
        let mut at = 0;
        let mut err = None;
        while at < c.tx.len() {
            match stream.write(&c.tx[at..]) {
                Ok(0) => break,
                Ok(n) => at += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        self.stats.bytes_out += at as u64;
        c.tx.drain(..at);
        if let Some(e) = err {
            self.dropped(h, conn, format!("write: {e}"), now);
        }
    }

    fn read<H: Handler>(&mut self, h: &mut H, conn: usize, now: u64) {
        for _ in 0..MAX_READS_PER_EVENT {
            let c = &mut self.conns[conn];
            let Some(stream) = c.stream.as_mut() else {
                return;
            };
            // A frame larger than the read buffer is read straight into rx.
            let big = !c.rx.is_empty()
                && c.state == State::Open
                && ws::needed(&c.rx).map(|n| n > RBUF / 2).unwrap_or(false);
            let r = if big {
                let need = ws::needed(&c.rx).unwrap_or(0);
                let have = c.rx.len();
                c.rx.resize(need, 0);
                let r = stream.read(&mut c.rx[have..]);
                let got = *r.as_ref().unwrap_or(&0);
                c.rx.truncate(have + got);
                r.map(|n| (n, true))
            } else {
                stream.read(&mut self.rbuf).map(|n| (n, false))
            };
            match r {
                Ok((0, _)) => {
                    self.dropped(h, conn, "eof".into(), now);
                    return;
                }
                Ok((n, into_rx)) => {
                    self.stats.reads += 1;
                    self.stats.bytes_in += n as u64;
                    let short = if into_rx {
                        let c = &mut self.conns[conn];
                        let rx = std::mem::take(&mut c.rx);
                        if ws::needed(&rx).map(|x| x == rx.len()).unwrap_or(false) {
                            self.process(h, conn, &rx, now);
                        } else {
                            self.conns[conn].rx = rx;
                        }
                        false
                    } else {
                        let rbuf = std::mem::take(&mut self.rbuf);
                        match self.conns[conn].state {
                            State::Handshake => self.handshake(h, conn, &rbuf[..n], now),
                            _ => self.process(h, conn, &rbuf[..n], now),
                        }
                        self.rbuf = rbuf;
                        n < RBUF
                    };
                    if self.conns[conn].stream.is_none() {
                        return;
                    }
                    if !self.conns[conn].tx.is_empty() {
                        self.flush(h, conn, now);
                    }
                    if short {
                        // Drained: epoll reports the next arrival as a new edge.
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.dropped(h, conn, format!("read: {e}"), now);
                    return;
                }
            }
        }
        self.backlog.push(conn);
    }

    fn handshake<H: Handler>(&mut self, h: &mut H, conn: usize, data: &[u8], now: u64) {
        let c = &mut self.conns[conn];
        c.rx.extend_from_slice(data);
        let Some(end) = memchr::memmem::find(&c.rx, b"\r\n\r\n") else {
            if c.rx.len() > 16 * 1024 {
                self.fail_connect(h, conn, "upgrade response too long".into(), now);
            }
            return;
        };
        let ok = c.rx.starts_with(b"HTTP/1.1 101");
        if !ok {
            let line_end = memchr::memchr(b'\r', &c.rx).unwrap_or(c.rx.len());
            let line = String::from_utf8_lossy(&c.rx[..line_end.min(64)]).into_owned();
            self.fail_connect(h, conn, format!("upgrade refused: {line}"), now);
            return;
        }
        let rest = c.rx.split_off(end + 4);
        c.rx.clear();
        c.state = State::Open;
        self.in_flight -= 1;
        self.open += 1;
        self.stats.opened += 1;
        h.on_open(conn, now);
        if !rest.is_empty() {
            self.process(h, conn, &rest, now);
        }
    }

    /// Parses every complete frame of `rx ++ data`, keeping the tail.
    fn process<H: Handler>(&mut self, h: &mut H, conn: usize, data: &[u8], now: u64) {
        let mut pos = 0;
        if !self.conns[conn].rx.is_empty() {
            // Complete the frame that spans reads.
            loop {
                let rx = &mut self.conns[conn].rx;
                let need = match ws::needed(rx) {
                    Ok(n) => n,
                    Err(()) => return self.protocol_error(h, conn, "frame too long", now),
                };
                if rx.len() < need {
                    let take = (need - rx.len()).min(data.len() - pos);
                    rx.extend_from_slice(&data[pos..pos + take]);
                    pos += take;
                    if rx.len() < need {
                        return;
                    }
                    continue;
                }
                // need == rx.len() and the header is known: complete frame.
                let Ok(Some(hd)) = ws::parse_header(rx) else {
                    return;
                };
                if hd.total() != rx.len() {
                    continue;
                }
                let mut frame = std::mem::take(rx);
                self.frame(h, conn, hd, &mut frame, now);
                if self.conns[conn].stream.is_none() {
                    return;
                }
                frame.clear();
                if self.conns[conn].rx.is_empty() {
                    self.conns[conn].rx = frame;
                }
                break;
            }
        }
        while pos < data.len() {
            let hd = match ws::parse_header(&data[pos..]) {
                Ok(Some(hd)) => hd,
                Ok(None) => break,
                Err(()) => return self.protocol_error(h, conn, "frame too long", now),
            };
            if data.len() - pos < hd.total() {
                break;
            }
            let frame = &data[pos..pos + hd.total()];
            pos += hd.total();
            if hd.mask.is_none()
                && hd.fin
                && hd.opcode == ws::OP_TEXT
                && !self.conns[conn].frag_active
            {
                // The hot path: one unmasked, unfragmented text frame.
                self.stats.frames_in += 1;
                self.stats.text_in += 1;
                h.on_text(conn, &frame[hd.header_len..], now);
            } else {
                let mut owned = frame.to_vec();
                self.frame(h, conn, hd, &mut owned, now);
                if self.conns[conn].stream.is_none() {
                    return;
                }
            }
        }
        if pos < data.len() {
            self.conns[conn].rx.extend_from_slice(&data[pos..]);
        }
    }

    /// Any frame other than the hot path: control frames, fragments, masked frames.
    fn frame<H: Handler>(
        &mut self,
        h: &mut H,
        conn: usize,
        hd: Header,
        frame: &mut [u8],
        now: u64,
    ) {
        self.stats.frames_in += 1;
        let payload = &mut frame[hd.header_len..hd.total()];
        if let Some(key) = hd.mask {
            self.stats.protocol_errors += 1;
            ws::apply_mask(payload, key);
        }
        match hd.opcode {
            ws::OP_TEXT | ws::OP_BINARY | ws::OP_CONT => {
                let c = &mut self.conns[conn];
                if hd.opcode == ws::OP_CONT && !c.frag_active {
                    return self.protocol_error(h, conn, "stray continuation", now);
                }
                if hd.opcode != ws::OP_CONT && c.frag_active {
                    return self.protocol_error(
                        h,
                        conn,
                        "new message inside a fragmented one",
                        now,
                    );
                }
                if hd.opcode == ws::OP_BINARY {
                    self.stats.protocol_errors += 1;
                }
                if hd.fin && !c.frag_active {
                    self.stats.text_in += 1;
                    h.on_text(conn, payload, now);
                    return;
                }
                c.frag_active = true;
                c.frag.extend_from_slice(payload);
                if hd.fin {
                    c.frag_active = false;
                    let msg = std::mem::take(&mut c.frag);
                    self.stats.text_in += 1;
                    h.on_text(conn, &msg, now);
                }
            }
            ws::OP_PING => {
                self.stats.pings += 1;
                let p = payload.to_vec();
                self.send_frame(conn, ws::OP_PONG, &p);
            }
            ws::OP_PONG => {}
            ws::OP_CLOSE => {
                let code = if payload.len() >= 2 {
                    u16::from_be_bytes([payload[0], payload[1]])
                } else {
                    1005
                };
                let reason = if payload.len() > 2 {
                    String::from_utf8_lossy(&payload[2..]).into_owned()
                } else {
                    String::new()
                };
                self.stats.server_closes += 1;
                // Echo the close, then drop the socket.
                self.send_frame(conn, ws::OP_CLOSE, &code.to_be_bytes());
                self.drop_conn(conn, false);
                h.on_close(conn, &CloseWhy::ServerClose { code, reason }, now);
            }
            _ => self.protocol_error(h, conn, "reserved opcode", now),
        }
    }

    fn protocol_error<H: Handler>(&mut self, h: &mut H, conn: usize, what: &str, now: u64) {
        self.stats.protocol_errors += 1;
        self.dropped(h, conn, format!("protocol error: {what}"), now);
    }
}

#[cfg(test)]
mod tests {
    //! The event loop against a scripted websocket server on loopback:
    //! frames split at every awkward boundary, 16- and 64-bit lengths, a
    //! fragmented message, a ping (answered with a masked pong) and a close.

    use std::io::{Read, Write};
    use std::net::TcpListener;

    use super::*;

    #[derive(Default)]
    struct Rec {
        opened: usize,
        texts: Vec<Vec<u8>>,
        closes: Vec<String>,
    }

    impl Handler for Rec {
        fn on_open(&mut self, _conn: usize, _now: u64) {
            self.opened += 1;
        }
        fn on_text(&mut self, _conn: usize, payload: &[u8], _now: u64) {
            self.texts.push(payload.to_vec());
        }
        fn on_close(&mut self, _conn: usize, why: &CloseWhy, _now: u64) {
            self.closes.push(format!("{why:?}"));
        }
    }

    use crate::ws::server_frame as frame;

    #[test]
    fn frames_split_across_reads_are_reassembled() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let big = vec![b'b'; 300_000]; // larger than half the read buffer: read straight into rx
        let mid = vec![b'm'; 300];
        let (big_s, mid_s) = (big.clone(), mid.clone());
        let server = std::thread::spawn(move || {
            let (big, mid) = (big_s, mid_s);
            let (mut s, _) = listener.accept().expect("accept");
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).expect("read request");
                assert!(n > 0);
                req.extend_from_slice(&buf[..n]);
            }
            let mut out = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n".to_vec();
            out.extend(frame(true, ws::OP_TEXT, b"first"));
            out.extend(frame(true, ws::OP_TEXT, &mid));
            out.extend(frame(true, ws::OP_PING, b"hi"));
            out.extend(frame(false, ws::OP_TEXT, b"frag-"));
            out.extend(frame(true, ws::OP_CONT, b"ment"));
            out.extend(frame(true, ws::OP_TEXT, &big));
            out.extend(frame(true, ws::OP_TEXT, b"last"));
            // Dribble it out in odd-sized pieces.
            let mut at = 0;
            let mut step = 1;
            while at < out.len() {
                let end = (at + step).min(out.len());
                s.write_all(&out[at..end]).expect("write");
                s.flush().expect("flush");
                at = end;
                step = step * 3 % 997 + 1;
                if step < 50 {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            // The pong comes back masked.
            let mut pong = [0u8; 8];
            s.read_exact(&mut pong).expect("pong");
            assert_eq!(pong[0], 0x80 | ws::OP_PONG);
            assert_eq!(pong[1], 0x80 | 2);
            let key = [pong[2], pong[3], pong[4], pong[5]];
            let mut body = [pong[6], pong[7]];
            ws::apply_mask(&mut body, key);
            assert_eq!(&body, b"hi");
            s.write_all(&frame(true, ws::OP_CLOSE, b"\x03\xe8bye"))
                .expect("close");
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        });
        let mut net = Net::new(1, &[addr], 7).expect("net");
        let mut rec = Rec::default();
        net.open(0, Ipv4Addr::new(127, 0, 0, 1), 0, "/ws?token=x")
            .expect("open");
        let deadline = now_ns() + 10_000_000_000;
        while rec.closes.is_empty() && now_ns() < deadline {
            net.poll_once(&mut rec, Duration::from_millis(20))
                .expect("poll");
        }
        server.join().expect("server thread");
        assert_eq!(rec.opened, 1);
        assert_eq!(
            rec.texts.len(),
            5,
            "{:?}",
            rec.texts.iter().map(|t| t.len()).collect::<Vec<_>>()
        );
        assert_eq!(rec.texts[0], b"first");
        assert_eq!(rec.texts[1], mid);
        assert_eq!(rec.texts[2], b"frag-ment");
        assert_eq!(rec.texts[3], big);
        assert_eq!(rec.texts[4], b"last");
        assert_eq!(net.stats.pings, 1);
        assert_eq!(net.stats.protocol_errors, 0);
        assert!(
            rec.closes[0].contains("1000") && rec.closes[0].contains("bye"),
            "{:?}",
            rec.closes
        );
    }
}

//! Blocking clients for integration tests over real sockets: HTTP/1.1 with
//! `Connection: close`, and a minimal websocket client speaking Nakama's
//! JSON protocol. No client library, so what goes over the wire is exactly
//! what is written here.

#![allow(dead_code)]

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Longest wait for any single answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// base64("defaultkey:"), what nakama-js sends as the server key.
pub const DEFAULT_KEY_AUTH: &str = "Basic ZGVmYXVsdGtleTo=";

/// An HTTP response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection; reads until the server closes it.
pub fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).expect("write request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|line| line.split_once(": "))
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
    Reply {
        status,
        headers,
        body: body.to_owned(),
    }
}

pub fn get(addr: SocketAddr, target: &str) -> Reply {
    http(addr, "GET", target, &[], "")
}

/// Authenticates custom id `id` (creating the account, with `username`)
/// on the main listener; returns `(token, user_id)`.
pub fn authenticate(addr: SocketAddr, id: &str, username: &str) -> (String, String) {
    let reply = http(
        addr,
        "POST",
        &format!("/v2/account/authenticate/custom?create=true&username={username}"),
        &[
            ("Authorization", DEFAULT_KEY_AUTH),
            ("Content-Type", "application/json"),
        ],
        &format!(r#"{{"id":"{id}"}}"#),
    );
    assert_eq!(reply.status, 200, "authenticate {id}: {}", reply.body);
    let token = reply.json()["token"].as_str().expect("token").to_owned();
    (token.clone(), user_id_of(&token))
}

/// The `uid` claim of a session token.
pub fn user_id_of(token: &str) -> String {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).expect("JWT payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64 payload");
    let claims: Value = serde_json::from_slice(&bytes).expect("JSON claims");
    claims["uid"].as_str().expect("uid").to_owned()
}

/// The value of the sample `name` in a Prometheus exposition (with its
/// labels, e.g. `herald_sessions_closed_total{reason="kicked"}`).
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let (sample, value) = line.rsplit_once(' ')?;
            (sample == name).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
}

pub fn scrape(admin: SocketAddr) -> String {
    let reply = get(admin, "/metrics");
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.body
}

/// Scrapes until `done` holds for the exposition, or fails after [`TIMEOUT`].
pub fn scrape_until(admin: SocketAddr, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let text = scrape(admin);
        if done(&text) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A websocket frame from the server.
#[derive(Debug)]
pub enum Frame {
    Text(Value),
    Close(u16, String),
    Other(u8),
}

/// A websocket session with `format=json`.
pub struct Socket {
    stream: TcpStream,
    buffer: Vec<u8>,
    next_cid: u32,
}

impl Socket {
    /// Opens `/ws` with `token`; `appear_online` adds `status=true`.
    pub fn connect(addr: SocketAddr, token: &str, appear_online: bool) -> Socket {
        let stream = TcpStream::connect(addr).expect("connect");
        Socket::handshake(stream, addr, token, appear_online)
    }

    /// As [`Socket::connect`], with a receive buffer of a few KiB: a client
    /// that stops reading backs up into the server quickly.
    pub fn connect_small_buffer(addr: SocketAddr, token: &str) -> Socket {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        socket.connect(&addr.into()).expect("connect");
        Socket::handshake(socket.into(), addr, token, false)
    }

    fn handshake(
        mut stream: TcpStream,
        addr: SocketAddr,
        token: &str,
        appear_online: bool,
    ) -> Socket {
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        let request = format!(
            "GET /ws?token={token}&format=json&status={appear_online} HTTP/1.1\r\nHost: {addr}\r\n\
             Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).expect("handshake");
        let mut socket = Socket {
            stream,
            buffer: Vec::new(),
            next_cid: 1,
        };
        let head = loop {
            if let Some(end) = socket.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                let head: Vec<u8> = socket.buffer.drain(..end + 4).collect();
                break String::from_utf8(head).expect("utf-8 head");
            }
            socket.fill();
        };
        assert!(
            head.starts_with("HTTP/1.1 101"),
            "handshake refused: {head}"
        );
        socket
    }

    fn fill(&mut self) {
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => panic!("the server closed the connection"),
            Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == ErrorKind::Interrupted => {}
            Err(error) => panic!("read failed: {error}"),
        }
    }

    fn take(&mut self, n: usize) -> Vec<u8> {
        while self.buffer.len() < n {
            self.fill();
        }
        self.buffer.drain(..n).collect()
    }

    /// Sends a masked frame.
    fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= 0xffff => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).expect("send frame");
    }

    /// Reads the next frame (the server never fragments nor masks).
    pub fn recv(&mut self) -> Frame {
        let head = self.take(2);
        let opcode = head[0] & 0x0f;
        let len = match head[1] & 0x7f {
            126 => u16::from_be_bytes(self.take(2).try_into().expect("2 bytes")) as usize,
            127 => u64::from_be_bytes(self.take(8).try_into().expect("8 bytes")) as usize,
            n => n as usize,
        };
        let payload = self.take(len);
        match opcode {
            0x1 => Frame::Text(serde_json::from_slice(&payload).expect("JSON frame")),
            0x8 => {
                let code = payload
                    .get(..2)
                    .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
                Frame::Close(code, reason.into_owned())
            }
            other => Frame::Other(other),
        }
    }

    /// The next JSON message, skipping pings.
    pub fn recv_json(&mut self) -> Value {
        loop {
            match self.recv() {
                Frame::Text(value) => return value,
                Frame::Other(_) => continue,
                Frame::Close(code, reason) => panic!("closed with {code} {reason:?}"),
            }
        }
    }

    /// Sends `body` (e.g. `"status_update":{"status":"x"}`) with a fresh cid
    /// and returns the reply with that cid; events received meanwhile go to
    /// `events`.
    pub fn request(&mut self, body: &str, events: &mut Vec<Value>) -> Value {
        let cid = self.next_cid.to_string();
        self.next_cid += 1;
        let text = format!(r#"{{{body},"cid":"{cid}"}}"#);
        self.send_frame(0x1, text.as_bytes());
        loop {
            let message = self.recv_json();
            if message["cid"] == cid.as_str() {
                return message;
            }
            events.push(message);
        }
    }

    pub fn follow(&mut self, user_id: &str) -> Value {
        let mut events = Vec::new();
        let reply = self.request(
            &format!(r#""status_follow":{{"user_ids":["{user_id}"]}}"#),
            &mut events,
        );
        assert!(reply.get("status").is_some(), "follow failed: {reply}");
        reply
    }

    /// Sets the status; returns the events received before the ack.
    pub fn update_status(&mut self, status: &str) -> Vec<Value> {
        let mut events = Vec::new();
        let reply = self.request(
            &format!(r#""status_update":{{"status":"{status}"}}"#),
            &mut events,
        );
        assert!(reply.get("error").is_none(), "update failed: {reply}");
        events
    }

    /// The next `status_presence_event`.
    pub fn next_event(&mut self) -> Value {
        loop {
            let message = self.recv_json();
            if let Some(event) = message.get("status_presence_event") {
                return event.clone();
            }
        }
    }

    /// Starts a client-side close (1000) and waits for the server's answer.
    pub fn close(mut self) {
        self.send_frame(0x8, &1000u16.to_be_bytes());
        loop {
            if let Frame::Close(..) = self.recv() {
                return;
            }
        }
    }
}

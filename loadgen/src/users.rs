//! Users and their session tokens: minted offline with Herald's own token
//! code (`--token-key`), or obtained from `POST /v2/account/authenticate/custom`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use herald::auth::{Tokens, Vars};
use herald::ids::UserId;

/// splitmix64.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// The node (index into `--url`) that user id `user_id`'s sessions go to
/// when nothing places them: FNV-1a (64-bit) of the id's text, modulo the
/// node count. Stable across runs and processes; one node → always 0.
pub fn node_of(user_id: &str, nodes: usize) -> usize {
    if nodes <= 1 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user_id.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % nodes as u64) as usize
}

/// A deterministic v4-shaped UUID for user `i` of run `seed`.
pub fn minted_user_id(seed: u64, i: usize) -> String {
    let a = mix(seed ^ 0x6c6f_6164_6765_6e00 ^ mix(i as u64));
    let b = mix(a ^ i as u64);
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        (a >> 32) as u32,
        (a >> 16) as u16,
        (a & 0xfff) as u16,
        (0x8000 | (b >> 48) & 0x3fff) as u16,
        b & 0xffff_ffff_ffff
    )
}

pub fn minted_username(seed: u64, i: usize) -> String {
    format!("lm{seed}u{i}")
}

/// The users of a run: ids for everyone (computed on demand when minted,
/// so a million-user run holds no table), tokens on demand.
pub struct UserDir {
    /// Empty when minted.
    ids: Vec<String>,
    n: usize,
    tokens: Option<Vec<String>>,
    minter: Option<Tokens>,
    seed: u64,
}

impl UserDir {
    /// Offline: ids derived from the seed, tokens minted with `key`.
    pub fn minted(seed: u64, n: usize, key: &str) -> UserDir {
        UserDir {
            ids: Vec::new(),
            n,
            tokens: None,
            minter: Some(Tokens::new(
                key,
                "loadgen-unused-refresh-key",
                86_400,
                86_400,
            )),
            seed,
        }
    }

    /// From a file of `uid token` lines written by [`authenticate_all`].
    pub fn from_file(path: &str, seed: u64) -> Result<UserDir> {
        let f = std::fs::File::open(path).with_context(|| format!("open {path}"))?;
        let mut ids = Vec::new();
        let mut tokens = Vec::new();
        for line in BufReader::new(f).lines().take(50_000_000) {
            let line = line?;
            let mut it = line.split(' ');
            let (Some(u), Some(t)) = (it.next(), it.next()) else {
                continue;
            };
            ids.push(u.to_owned());
            tokens.push(t.to_owned());
        }
        Ok(UserDir {
            n: ids.len(),
            ids,
            tokens: Some(tokens),
            minter: None,
            seed,
        })
    }

    pub fn id(&self, i: usize) -> std::borrow::Cow<'_, str> {
        match self.ids.get(i) {
            Some(s) => std::borrow::Cow::Borrowed(s),
            None => std::borrow::Cow::Owned(minted_user_id(self.seed, i)),
        }
    }

    pub fn len(&self) -> usize {
        self.n
    }

    /// The node user `i`'s sessions go to, of `nodes` ([`node_of`]).
    pub fn node(&self, i: usize, nodes: usize) -> usize {
        if nodes <= 1 {
            return 0;
        }
        node_of(&self.id(i), nodes)
    }

    pub fn token(&self, i: usize) -> Result<String> {
        if let Some(t) = &self.tokens {
            return t
                .get(i)
                .cloned()
                .ok_or_else(|| anyhow!("no token for user {i}"));
        }
        let minter = self
            .minter
            .as_ref()
            .ok_or_else(|| anyhow!("no token source"))?;
        if i >= self.n {
            bail!("user {i} out of range");
        }
        let uid = UserId::parse(&self.id(i)).ok_or_else(|| anyhow!("bad user id"))?;
        let issued = minter
            .issue(uid, &minted_username(self.seed, i), &Vars::new())
            .map_err(|e| anyhow!("mint: {e}"))?;
        Ok(issued.token)
    }

    /// `/ws?...` for user `i`.
    pub fn ws_path(&self, i: usize, status: bool) -> Result<String> {
        Ok(format!(
            "/ws?lang=en&status={status}&token={}",
            self.token(i)?
        ))
    }
}

/// The `uid` claim of a JWT (not verified: the server minted it).
pub fn token_uid(token: &str) -> Result<String> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| anyhow!("token has no payload"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .context("token payload base64")?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).context("token payload json")?;
    v.get("uid")
        .and_then(|u| u.as_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("token has no uid"))
}

/// A user id and its session token.
type UidToken = (String, String);

/// Authenticates users `0..n` (custom ids `loadgen-<seed>-<i>`, created on
/// first use) with `threads` keep-alive HTTP connections; writes `uid token`
/// lines to `out_path`.
pub fn authenticate_all(
    server: SocketAddr,
    server_key: &str,
    seed: u64,
    n: usize,
    threads: usize,
    out_path: &str,
) -> Result<()> {
    let results: Arc<Mutex<Vec<Option<UidToken>>>> = Arc::new(Mutex::new(vec![None; n]));
    let next = Arc::new(AtomicUsize::new(0));
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{server_key}:"))
    );
    let mut handles = Vec::new();
    for _ in 0..threads.clamp(1, 64) {
        let results = results.clone();
        let next = next.clone();
        let auth = auth.clone();
        handles.push(std::thread::spawn(move || -> Result<()> {
            let mut conn: Option<BufReader<TcpStream>> = None;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok(());
                }
                let mut attempt = 0;
                let pair = loop {
                    attempt += 1;
                    match auth_one(&mut conn, server, &auth, seed, i) {
                        Ok(p) => break p,
                        Err(e) if attempt < 5 => {
                            conn = None;
                            let _ = e;
                            std::thread::sleep(Duration::from_millis(50 * attempt));
                        }
                        Err(e) => return Err(e.context(format!("authenticate user {i}"))),
                    }
                };
                if let Ok(mut r) = results.lock() {
                    r[i] = Some(pair);
                }
                if i % 1000 == 999 {
                    eprint!("\rauthenticate: {}/{n}   ", i + 1);
                }
            }
        }));
    }
    for h in handles {
        h.join().map_err(|_| anyhow!("auth thread panicked"))??;
    }
    eprintln!();
    let results = results.lock().map_err(|_| anyhow!("poisoned"))?;
    let mut f = std::io::BufWriter::new(std::fs::File::create(out_path)?);
    for (i, r) in results.iter().enumerate() {
        let (u, t) = r
            .as_ref()
            .ok_or_else(|| anyhow!("user {i} not authenticated"))?;
        writeln!(f, "{u} {t}")?;
    }
    f.flush()?;
    Ok(())
}

fn auth_one(
    conn: &mut Option<BufReader<TcpStream>>,
    server: SocketAddr,
    auth: &str,
    seed: u64,
    i: usize,
) -> Result<(String, String)> {
    let body = format!("{{\"id\":\"loadgen-{seed}-{i}\"}}");
    let (status, body) = http_exchange(
        conn,
        server,
        "POST",
        &format!("/v2/account/authenticate/custom?create=true&username=lh{seed}u{i}"),
        &format!("Authorization: {auth}\r\nContent-Type: application/json\r\n"),
        body.as_bytes(),
    )?;
    if !status.starts_with("HTTP/1.1 200") {
        bail!("{}: {}", status.trim_end(), String::from_utf8_lossy(&body));
    }
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    let token = v
        .get("token")
        .and_then(|t| t.as_str())
        .ok_or_else(|| anyhow!("no token"))?;
    Ok((token_uid(token)?, token.to_owned()))
}

/// One HTTP/1.1 request over a kept-alive connection (opened first when
/// `conn` is `None`, dropped when the server says `Connection: close`):
/// `headers` are extra `Name: value\r\n` lines. Returns the status line
/// and the body (at most 16 MiB, by `Content-Length`).
pub fn http_exchange(
    conn: &mut Option<BufReader<TcpStream>>,
    server: SocketAddr,
    method: &str,
    target: &str,
    headers: &str,
    body: &[u8],
) -> Result<(String, Vec<u8>)> {
    if conn.is_none() {
        let s = TcpStream::connect_timeout(&server, Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_write_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        *conn = Some(BufReader::new(s));
    }
    let Some(r) = conn.as_mut() else {
        bail!("no connection")
    };
    let mut req = format!(
        "{method} {target} HTTP/1.1\r\nHost: {server}\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    r.get_mut().write_all(&req)?;
    let mut status = String::new();
    r.read_line(&mut status)?;
    let mut len = 0usize;
    let mut close = false;
    for _ in 0..100 {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 {
            bail!("eof in headers");
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let lower = l.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().context("content-length")?;
        }
        if lower.starts_with("connection:") && lower.contains("close") {
            close = true;
        }
    }
    if len > 16 << 20 {
        bail!("response too long");
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    if close {
        *conn = None;
    }
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_ids_parse_and_differ() {
        let a = minted_user_id(1, 0);
        let b = minted_user_id(1, 1);
        let c = minted_user_id(2, 0);
        assert_ne!(a, b);
        assert_ne!(a, c);
        for id in [&a, &b, &c] {
            assert_eq!(id.len(), 36);
            assert!(UserId::parse(id).is_some(), "{id}");
        }
    }

    #[test]
    fn users_spread_over_nodes_stably() {
        assert_eq!(node_of("anything", 1), 0);
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c.
        assert_eq!(node_of("a", 7), (0xaf63_dc4c_8601_ec8c_u64 % 7) as usize);
        let d = UserDir::minted(1, 10_000, "k");
        let mut per = [0usize; 4];
        for i in 0..10_000 {
            let n = d.node(i, 4);
            assert_eq!(n, node_of(&d.id(i), 4));
            per[n] += 1;
        }
        for n in per {
            assert!((2_300..2_700).contains(&n), "{per:?}");
        }
    }

    #[test]
    fn minted_tokens_carry_the_uid() {
        let d = UserDir::minted(5, 3, "defaultencryptionkey");
        let t = d.token(2).expect("token");
        assert_eq!(token_uid(&t).expect("uid"), d.id(2));
        assert_eq!(d.len(), 3);
        let tokens = Tokens::new("defaultencryptionkey", "x", 60, 60);
        let claims = tokens.verify_session(&t).expect("verifies");
        assert_eq!(claims.username, "lm5u2");
    }
}

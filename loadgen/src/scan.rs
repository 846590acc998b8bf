//! Field scanning without a JSON parse: classify a server envelope and pull
//! out the few values a scenario checks. Tolerates the whitespace Go's
//! protojson inserts, so it also works against Nakama.

use std::sync::LazyLock;

use memchr::memmem::Finder;

static JOINS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"joins\""));
static LEAVES: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"leaves\""));
static STATUS: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"status\""));
static ERROR: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"error\""));

/// What kind of envelope a text frame holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Event,
    /// A reply (ack, snapshot, pong) with its numeric cid (0 if none).
    Reply {
        cid: u64,
        snapshot: bool,
        error: bool,
    },
    Other,
}

const EVENT_PREFIX: &[u8] = b"{\"status_presence_event\":";

#[inline]
pub fn classify(p: &[u8]) -> Kind {
    if p.starts_with(EVENT_PREFIX) {
        return Kind::Event;
    }
    let body = skip_ws(p, 1);
    if p.first() != Some(&b'{') {
        return Kind::Other;
    }
    let rest = &p[body..];
    if rest.starts_with(b"\"status_presence_event\"") {
        return Kind::Event;
    }
    let cid = if rest.starts_with(b"\"cid\"") {
        let at = skip_ws(rest, 5);
        if rest.get(at) != Some(&b':') {
            return Kind::Other;
        }
        let at = skip_ws(rest, at + 1);
        if rest.get(at) != Some(&b'"') {
            return Kind::Other;
        }
        parse_u64(&rest[at + 1..]).map(|(v, _)| v).unwrap_or(0)
    } else {
        0
    };
    let error = ERROR.find(rest).is_some();
    let snapshot = !error && STATUS.find(rest).is_some();
    Kind::Reply {
        cid,
        snapshot,
        error,
    }
}

#[inline]
fn skip_ws(p: &[u8], mut at: usize) -> usize {
    while at < p.len() && matches!(p[at], b' ' | b'\n' | b'\r' | b'\t') {
        at += 1;
    }
    at
}

/// Parses leading decimal digits: (value, digits consumed).
#[inline]
pub fn parse_u64(p: &[u8]) -> Option<(u64, usize)> {
    let mut v: u64 = 0;
    let mut i = 0;
    while i < p.len() && i < 20 {
        let d = p[i].wrapping_sub(b'0');
        if d > 9 {
            break;
        }
        v = v.checked_mul(10)?.checked_add(d as u64)?;
        i += 1;
    }
    if i == 0 {
        None
    } else {
        Some((v, i))
    }
}

/// The raw `status` string value of the first presence after `"joins"`
/// (or after `"leaves"` when `leaves`), without unescaping.
#[inline]
pub fn presence_status(p: &[u8], leaves: bool) -> Option<&[u8]> {
    let (finder, key_len) = if leaves { (&*LEAVES, 8) } else { (&*JOINS, 7) };
    let at = finder.find(p)?;
    let rest = &p[at + key_len..];
    let s = STATUS.find(rest)?;
    let rest = &rest[s + 8..];
    let at = skip_ws(rest, 0);
    if rest.get(at) != Some(&b':') {
        return None;
    }
    let at = skip_ws(rest, at + 1);
    if rest.get(at) != Some(&b'"') {
        return None;
    }
    let rest = &rest[at + 1..];
    let end = memchr::memchr(b'"', rest)?;
    Some(&rest[..end])
}

/// A status `"<user>:<seq>:<nanos>"` written by the mesh, fanout and soak scenarios.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub user: u32,
    pub seq: u32,
    pub sent_ns: u64,
}

#[inline]
pub fn parse_stamp(s: &[u8]) -> Option<Stamp> {
    let (user, a) = parse_u64(s)?;
    if s.get(a) != Some(&b':') {
        return None;
    }
    let (seq, b) = parse_u64(&s[a + 1..])?;
    let at = a + 1 + b;
    if s.get(at) != Some(&b':') {
        return None;
    }
    let (sent_ns, c) = parse_u64(&s[at + 1..])?;
    if at + 1 + c != s.len() {
        return None;
    }
    Some(Stamp {
        user: u32::try_from(user).ok()?,
        seq: u32::try_from(seq).ok()?,
        sent_ns,
    })
}

/// Writes a stamp into `out` (no allocation).
pub fn write_stamp(out: &mut Vec<u8>, st: Stamp) {
    use std::io::Write;
    let _ = write!(out, "{}:{}:{}", st.user, st.seq, st.sent_ns);
}

#[cfg(test)]
mod tests {
    use super::*;

    const EV: &[u8] = br#"{"status_presence_event":{"joins":[{"user_id":"4c2ae592-0000-4000-8000-000000000001","session_id":"a3d1b2c0-0000-4000-8000-000000000002","username":"u1","status":"7:42:1700000000123456789"}],"leaves":[{"user_id":"4c2ae592-0000-4000-8000-000000000001","session_id":"a3d1b2c0-0000-4000-8000-000000000002","username":"u1","status":"7:41:1700000000000000000"}]}}"#;

    #[test]
    fn event_stamp_is_found_in_joins() {
        assert_eq!(classify(EV), Kind::Event);
        let s = presence_status(EV, false).expect("status");
        let st = parse_stamp(s).expect("stamp");
        assert_eq!(
            st,
            Stamp {
                user: 7,
                seq: 42,
                sent_ns: 1_700_000_000_123_456_789
            }
        );
        let l = parse_stamp(presence_status(EV, true).expect("leave")).expect("stamp");
        assert_eq!(l.seq, 41);
    }

    #[test]
    fn go_whitespace_is_tolerated() {
        let ev = br#"{"status_presence_event":{"joins":[{"user_id":"x", "session_id":"y", "username":"u", "status": "1:2:3"}]}}"#;
        let st = parse_stamp(presence_status(ev, false).expect("status")).expect("stamp");
        assert_eq!(st.seq, 2);
        assert_eq!(presence_status(ev, true), None);
    }

    #[test]
    fn replies_are_classified() {
        assert_eq!(
            classify(br#"{"cid":"12"}"#),
            Kind::Reply {
                cid: 12,
                snapshot: false,
                error: false
            }
        );
        assert_eq!(
            classify(br#"{"cid":"3", "status":{}}"#),
            Kind::Reply {
                cid: 3,
                snapshot: true,
                error: false
            }
        );
        assert_eq!(
            classify(br#"{"cid":"4","error":{"code":3,"message":"Invalid user identifier"}}"#),
            Kind::Reply {
                cid: 4,
                snapshot: false,
                error: true
            }
        );
        assert_eq!(
            classify(br#"{}"#),
            Kind::Reply {
                cid: 0,
                snapshot: false,
                error: false
            }
        );
        assert_eq!(classify(b"nope"), Kind::Other);
    }

    #[test]
    fn bad_stamps_are_rejected() {
        assert_eq!(parse_stamp(b""), None);
        assert_eq!(parse_stamp(b"1:2"), None);
        assert_eq!(parse_stamp(b"1:2:3x"), None);
        assert_eq!(parse_stamp(b"c17"), None);
    }
}

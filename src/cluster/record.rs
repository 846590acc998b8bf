//! The presence log's keys and values: how a record is named in the bucket
//! and what its bytes hold. Pure functions, no I/O; used by the writer (to
//! build subjects and payloads) and by the replicator (to read them back).
//!
//! The bucket is a JetStream KV bucket (stream `KV_<bucket>`, subjects
//! `$KV.<bucket>.>`, at most the last [`super::nats::HISTORY`] versions of
//! each key kept, a superseded one for [`super::SUPERSEDED_GRACE`]), so
//! `nats kv` tools can inspect it. Three kinds of keys live in it:
//!
//! | key | value | written by |
//! | --- | --- | --- |
//! | `s.<node>.<incarnation>.<user>.<session>` | a session's status ([`PresenceValue`]); a KV purge when it ends | the session's node |
//! | `n.<node>` | the node's lease ([`LeaseValue`]) | the node (heartbeats), a peer (verdict) |
//! | `c.<user>` | the user's newest session, for `--single-socket` | the session's node |
//!
//! The node and incarnation are part of a presence key so that the keys of
//! one dead incarnation can be removed with one filtered stream purge
//! (`$KV.<bucket>.s.<node>.<incarnation>.>`), and so that a reader knows a
//! record's writer from its subject alone.
//!
//! Values start with a version byte ([`VERSION`]); a reader skips a record
//! whose version it does not know (and counts it), so a newer Herald can
//! add fields without breaking an older one during a rolling upgrade.

use std::sync::Arc;

use uuid::Uuid;

use crate::ids::{SessionId, UserId};

/// Version byte of every value this build writes.
pub const VERSION: u8 = 1;

/// The longest node id: short enough for readable subjects and logs.
pub const MAX_NODE_ID_LEN: usize = 64;

/// Checks a node id: 1 to [`MAX_NODE_ID_LEN`] letters, digits, `-` or `_`
/// (a single NATS subject token).
pub fn validate_node_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_NODE_ID_LEN {
        return Err(format!(
            "{id:?} must be 1 to {MAX_NODE_ID_LEN} characters long"
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "{id:?} may only contain letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}

/// A node's lease state, as its lease record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// The incarnation serves and heartbeats.
    Live = 1,
    /// A peer declared the incarnation dead (a verdict): it missed its heartbeats.
    Dead = 2,
    /// The incarnation stopped cleanly (SIGTERM).
    Left = 3,
}

/// The value of a lease key `n.<node>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseValue {
    pub state: LeaseState,
    /// Which start of the node this lease belongs to (random, never reused).
    pub incarnation: u64,
    /// Heartbeats written by this incarnation so far.
    pub beat: u64,
}

impl LeaseValue {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(18);
        out.push(VERSION);
        out.push(self.state as u8);
        out.extend_from_slice(&self.incarnation.to_le_bytes());
        out.extend_from_slice(&self.beat.to_le_bytes());
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<LeaseValue> {
        let (&version, rest) = bytes.split_first()?;
        if version != VERSION || rest.len() < 17 {
            return None;
        }
        let state = match rest[0] {
            1 => LeaseState::Live,
            2 => LeaseState::Dead,
            3 => LeaseState::Left,
            _ => return None,
        };
        Some(LeaseValue {
            state,
            incarnation: read_u64(&rest[1..9])?,
            beat: read_u64(&rest[9..17])?,
        })
    }
}

/// The value of a presence key: the session's current status. A purge of
/// the key (the session went offline or closed) carries only the change
/// number ([`encode_purge`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceValue {
    /// The session's change counter: 1 for its first write, +1 per write.
    /// A gap tells a reader it skipped an intermediate status (coalescing).
    pub change: u64,
    /// The token's `usn`, shown in presences.
    pub username: Arc<str>,
    pub status: Arc<str>,
}

impl PresenceValue {
    pub fn encode(&self) -> Vec<u8> {
        let name = self.username.as_bytes();
        let name_len = name.len().min(u16::MAX as usize);
        let mut out = Vec::with_capacity(11 + name_len + self.status.len());
        out.push(VERSION);
        out.extend_from_slice(&self.change.to_le_bytes());
        out.extend_from_slice(&(name_len as u16).to_le_bytes());
        out.extend_from_slice(&name[..name_len]);
        out.extend_from_slice(self.status.as_bytes());
        out
    }

    /// Decodes a value; `username` is reused when it equals the bytes read,
    /// so that the presences of one user share one allocation.
    pub fn decode(bytes: &[u8], username: Option<&Arc<str>>) -> Option<PresenceValue> {
        let (&version, rest) = bytes.split_first()?;
        if version != VERSION || rest.len() < 10 {
            return None;
        }
        let change = read_u64(&rest[..8])?;
        let name_len = u16::from_le_bytes([rest[8], rest[9]]) as usize;
        let rest = &rest[10..];
        if rest.len() < name_len {
            return None;
        }
        let (name, status) = rest.split_at(name_len);
        let name = std::str::from_utf8(name).ok()?;
        let status = std::str::from_utf8(status).ok()?;
        let username = match username {
            Some(known) if known.as_ref() == name => known.clone(),
            _ => Arc::from(name),
        };
        Some(PresenceValue {
            change,
            username,
            status: Arc::from(status),
        })
    }
}

/// The payload of a presence key's purge: the change number of the purge.
pub fn encode_purge(change: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(9);
    out.push(VERSION);
    out.extend_from_slice(&change.to_le_bytes());
    out
}

/// The change number a purge carries (0 when it carries none).
pub fn decode_purge(bytes: &[u8]) -> u64 {
    match bytes.split_first() {
        Some((&VERSION, rest)) if rest.len() >= 8 => read_u64(&rest[..8]).unwrap_or(0),
        _ => 0,
    }
}

/// The value of `c.<user>`: the session that connected last.
pub fn encode_newest_session(session: SessionId) -> Vec<u8> {
    let mut out = Vec::with_capacity(17);
    out.push(VERSION);
    out.extend_from_slice(session.0.as_bytes());
    out
}

pub fn decode_newest_session(bytes: &[u8]) -> Option<SessionId> {
    match bytes.split_first() {
        Some((&VERSION, rest)) if rest.len() >= 16 => {
            Uuid::from_slice(&rest[..16]).ok().map(SessionId)
        }
        _ => None,
    }
}

fn read_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// Subject names of one bucket.
#[derive(Debug, Clone)]
pub struct Subjects {
    /// `$KV.<bucket>.`
    prefix: String,
}

/// What a subject of the bucket names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key<'a> {
    Presence {
        node: &'a str,
        incarnation: u64,
        user: UserId,
        session: SessionId,
    },
    Lease {
        node: &'a str,
    },
    NewestSession {
        user: UserId,
    },
}

impl Subjects {
    pub fn new(bucket: &str) -> Subjects {
        Subjects {
            prefix: format!("$KV.{bucket}."),
        }
    }

    /// The stream's name.
    pub fn stream(&self, bucket: &str) -> String {
        format!("KV_{bucket}")
    }

    /// Every subject of the bucket (`$KV.<bucket>.>`).
    pub fn all(&self) -> String {
        format!("{}>", self.prefix)
    }

    pub fn presence(
        &self,
        node: &str,
        incarnation: u64,
        user: UserId,
        session: SessionId,
    ) -> String {
        format!(
            "{}s.{node}.{incarnation:016x}.{}.{}",
            self.prefix, user, session
        )
    }

    /// Every presence key of one incarnation, for a filtered purge.
    pub fn incarnation_presences(&self, node: &str, incarnation: u64) -> String {
        format!("{}s.{node}.{incarnation:016x}.>", self.prefix)
    }

    /// Every presence key of one user, on any node (a fetch filter).
    pub fn user_presences(&self, user: UserId) -> String {
        format!("{}s.*.*.{user}.*", self.prefix)
    }

    pub fn lease(&self, node: &str) -> String {
        format!("{}n.{node}", self.prefix)
    }

    pub fn newest_session(&self, user: UserId) -> String {
        format!("{}c.{user}", self.prefix)
    }

    /// Reads a subject of this bucket; `None` for anything else.
    pub fn parse<'a>(&self, subject: &'a str) -> Option<Key<'a>> {
        let key = subject.strip_prefix(self.prefix.as_str())?;
        let mut tokens = key.split('.');
        let key = match tokens.next()? {
            "s" => Key::Presence {
                node: tokens.next()?,
                incarnation: u64::from_str_radix(tokens.next()?, 16).ok()?,
                user: UserId(Uuid::try_parse(tokens.next()?).ok()?),
                session: SessionId(Uuid::try_parse(tokens.next()?).ok()?),
            },
            "n" => Key::Lease {
                node: tokens.next()?,
            },
            "c" => Key::NewestSession {
                user: UserId(Uuid::try_parse(tokens.next()?).ok()?),
            },
            _ => return None,
        };
        tokens.next().is_none().then_some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_subjects_round_trip() {
        let subjects = Subjects::new("herald");
        let (user, session) = (UserId(Uuid::new_v4()), SessionId(Uuid::new_v4()));
        let subject = subjects.presence("node-a", 0xfeed, user, session);
        assert!(subject.starts_with("$KV.herald.s.node-a.000000000000feed."));
        assert_eq!(
            subjects.parse(&subject),
            Some(Key::Presence {
                node: "node-a",
                incarnation: 0xfeed,
                user,
                session
            })
        );
        assert!(subject.starts_with(
            subjects
                .incarnation_presences("node-a", 0xfeed)
                .trim_end_matches('>')
        ));
        assert_eq!(
            subjects.parse(&subjects.lease("n1")),
            Some(Key::Lease { node: "n1" })
        );
        assert_eq!(
            subjects.parse(&subjects.newest_session(user)),
            Some(Key::NewestSession { user })
        );
        assert_eq!(subjects.parse("$KV.other.n.x"), None);
        assert_eq!(subjects.parse("$KV.herald.n.x.y"), None);
        assert_eq!(subjects.parse("$KV.herald.s.n.zz.u.s"), None);
    }

    #[test]
    fn values_round_trip_and_reject_garbage() {
        let lease = LeaseValue {
            state: LeaseState::Dead,
            incarnation: u64::MAX,
            beat: 7,
        };
        assert_eq!(LeaseValue::decode(&lease.encode()), Some(lease));
        assert_eq!(LeaseValue::decode(&[VERSION, 9]), None);
        assert_eq!(LeaseValue::decode(&[]), None);

        let value = PresenceValue {
            change: 3,
            username: Arc::from("alice"),
            status: Arc::from("{\"match\":\"é\"}"),
        };
        let bytes = value.encode();
        assert_eq!(PresenceValue::decode(&bytes, None), Some(value.clone()));
        let shared: Arc<str> = Arc::from("alice");
        let decoded = PresenceValue::decode(&bytes, Some(&shared)).unwrap();
        assert!(Arc::ptr_eq(&decoded.username, &shared));
        assert_eq!(PresenceValue::decode(&bytes[..5], None), None);
        assert_eq!(PresenceValue::decode(&[2, 0, 0], None), None);

        assert_eq!(decode_purge(&encode_purge(42)), 42);
        assert_eq!(decode_purge(b""), 0);
        let session = SessionId(Uuid::new_v4());
        assert_eq!(
            decode_newest_session(&encode_newest_session(session)),
            Some(session)
        );
    }

    #[test]
    fn node_ids_are_one_subject_token() {
        assert!(validate_node_id("herald-7350_a").is_ok());
        assert!(validate_node_id("").is_err());
        assert!(validate_node_id("a.b").is_err());
        assert!(validate_node_id("a*").is_err());
        assert!(validate_node_id(&"x".repeat(65)).is_err());
    }
}

//! The protocol's data model, independent of any wire format.
//!
//! A client sends one [`Request`] per websocket message; the server answers
//! with one [`Reply`] per request (same `cid`) and pushes
//! [`StatusPresenceEvent`]s, which never carry a cid. Codecs
//! ([`super::json`], [`super::protobuf`]) translate between these types and
//! bytes; nothing else in Herald looks at wire bytes.

use std::sync::Arc;

use crate::ids::{SessionId, UserId};

/// One decoded client → server envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The correlation id, echoed verbatim in the reply. Empty when the
    /// client sent none (or sent `""`): the reply then carries no cid.
    pub cid: String,
    /// What the envelope asks for.
    pub body: RequestBody,
}

/// The envelope's `message` oneof, as far as Herald serves it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestBody {
    /// `status_follow`: ids and usernames exactly as sent (validated later).
    StatusFollow {
        user_ids: Vec<String>,
        usernames: Vec<String>,
    },
    /// `status_unfollow`: ids exactly as sent (validated later).
    StatusUnfollow { user_ids: Vec<String> },
    /// `status_update`. `None` means the wrapper was absent (go offline);
    /// `Some("")` is an empty but present status (stay online).
    StatusUpdate { status: Option<String> },
    /// App-level `ping`, answered with `pong`.
    Ping,
    /// App-level `pong`, accepted and ignored.
    Pong,
    /// A member of the envelope oneof that is not a request Herald serves
    /// (for example `status`, `error`, `channel_join`). Answered with
    /// [`ErrorCode::UnrecognizedPayload`], then the socket closes.
    Unrecognized,
    /// An envelope with no message at all (`{"cid":"1"}`). Answered with
    /// [`ErrorCode::MissingPayload`], then the socket closes.
    Missing,
}

/// A payload that could not be decoded at all. The session is closed with
/// reason `received malformed payload` and no error envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("received malformed payload: {0}")]
pub struct Malformed(pub &'static str);

/// `Error.Code` of the realtime protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum ErrorCode {
    RuntimeException = 0,
    UnrecognizedPayload = 1,
    MissingPayload = 2,
    BadInput = 3,
}

/// A user's status on one session, as listed in snapshots and events.
///
/// `persistence` is always false on the wire for status presences and is
/// therefore not modelled. `status` is always present (possibly `""`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub user_id: UserId,
    pub session_id: SessionId,
    pub username: Arc<str>,
    pub status: Arc<str>,
}

/// One status change of one session: `joins` holds the new status,
/// `leaves` the previous one. At least one of them is set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusPresenceEvent {
    pub joins: Option<Presence>,
    pub leaves: Option<Presence>,
}

/// The server's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply<'a> {
    /// The request's cid, echoed verbatim (empty: no cid on the wire).
    pub cid: &'a str,
    pub body: ReplyBody<'a>,
}

/// What a [`Reply`] carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyBody<'a> {
    /// An envelope with only the cid: the ack of `status_update` and `status_unfollow`.
    Ack,
    /// `pong`, the answer to `ping`.
    Pong,
    /// `status`: the snapshot that answers `status_follow`.
    Status(&'a [Presence]),
    /// `error`.
    Error { code: ErrorCode, message: &'a str },
    /// `notifications` with one notification, pushed without a cid (the
    /// single-socket notice: Herald sends no other notifications).
    Notification(&'a Notification),
}

/// One `api.Notification`, as Nakama sends it to a socket that a newer
/// socket of the same user replaces (`--single-socket`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// A fresh UUID.
    pub id: String,
    pub subject: &'static str,
    pub content: &'static str,
    pub code: i32,
    /// Unix seconds; written as `create_time` (an RFC 3339 string in JSON).
    pub create_time: i64,
}

impl Notification {
    /// The notice Nakama sends before closing a socket replaced by a newer one.
    pub fn single_socket(now_unix: i64) -> Notification {
        Notification {
            id: uuid::Uuid::new_v4().to_string(),
            subject: "single_socket",
            content: "{}",
            code: -7,
            create_time: now_unix,
        }
    }
}

/// Any server → client envelope, owned. The server never decodes these; tools
/// and tests do (the loadgen's `--strict` mode, codec property tests).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerMessage {
    /// Empty for events and for replies to requests without a cid.
    pub cid: String,
    pub body: ServerBody,
}

/// The message carried by a [`ServerMessage`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerBody {
    /// An envelope with a cid and no message.
    Ack,
    Pong,
    Status(Vec<Presence>),
    Error {
        code: i32,
        message: String,
    },
    Event {
        joins: Vec<Presence>,
        leaves: Vec<Presence>,
    },
}

//! The realtime protocol: Nakama's envelope model and its wire codecs.
//!
//! * [`message`]: the format-independent data model (requests, replies, events).
//! * [`errors`]: every client-visible error code, text and close reason.
//! * [`json`]: the JSON codec (text frames), decoding with simd-json.
//! * [`protobuf`]: the protobuf codec (binary frames, `format=protobuf`).
//! * [`frame`]: complete server → client websocket frames, built once and shared.
//!
//! [`Format`] picks the codec per session; everything above this module
//! deals only in [`message`] types.

pub mod errors;
pub mod frame;
pub mod json;
pub mod message;
pub mod protobuf;
pub mod time;

pub use frame::Frame;
pub use message::{
    ErrorCode, Malformed, Notification, Presence, Reply, ReplyBody, Request, RequestBody,
    ServerBody, ServerMessage, StatusPresenceEvent,
};

/// A session's wire format, fixed at connect time by the `format` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// JSON in text frames (`format` absent, `""` or `json`).
    Json = 0,
    /// Protobuf `Envelope`s in binary frames (`format=protobuf`).
    Protobuf = 1,
}

impl Format {
    /// Every format, in index order.
    pub const ALL: [Format; 2] = [Format::Json, Format::Protobuf];

    /// Parses the `format` query value. Case-sensitive, as in Nakama.
    pub fn from_query(value: &str) -> Option<Format> {
        match value {
            "" | "json" => Some(Format::Json),
            "protobuf" => Some(Format::Protobuf),
            _ => None,
        }
    }

    /// The websocket opcode this format's messages travel in.
    pub fn opcode(self) -> fastwebsockets::OpCode {
        match self {
            Format::Json => fastwebsockets::OpCode::Text,
            Format::Protobuf => fastwebsockets::OpCode::Binary,
        }
    }

    /// Decodes one client message. `payload` may be modified in place.
    pub fn decode(self, payload: &mut [u8]) -> Result<Request, Malformed> {
        match self {
            Format::Json => json::decode(payload),
            Format::Protobuf => protobuf::decode(payload),
        }
    }

    /// Appends the encoding of `reply` to `out`.
    pub fn encode_reply(self, reply: &Reply<'_>, out: &mut Vec<u8>) {
        match self {
            Format::Json => json::encode_reply(reply, out),
            Format::Protobuf => protobuf::encode_reply(reply, out),
        }
    }

    /// Appends the encoding of `event` to `out`.
    pub fn encode_event(self, event: &StatusPresenceEvent, out: &mut Vec<u8>) {
        match self {
            Format::Json => json::encode_event(event, out),
            Format::Protobuf => protobuf::encode_event(event, out),
        }
    }
}

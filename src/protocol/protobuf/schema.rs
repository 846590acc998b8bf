//! The protobuf schema: hand-written `prost` structs with Nakama's field
//! numbers (`nakama.realtime.Envelope` and the status messages, reference §4).
//!
//! Only the messages Herald serves or sends are modelled field by field. Every
//! other member of the envelope's `message` oneof is still declared, as
//! [`Unserved`], so that decoding tells "a member Herald does not serve"
//! (Unrecognized, code 1) apart from "no member at all" (Missing, code 2).
//!
//! The hot encode paths do not build these structs (see `encode.rs`); they
//! are used for decoding, for `encode_request`, and as the reference the
//! hand-written encoder is tested against.

use std::collections::HashMap;

/// `nakama.realtime.Envelope`: one per websocket message.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Envelope {
    /// Correlation id; `""` (the proto3 default) means none.
    #[prost(string, tag = "1")]
    pub cid: String,
    #[prost(
        oneof = "Body",
        tags = "2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, \
                24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, \
                44, 45, 46, 47, 48, 49, 50, 51"
    )]
    pub message: Option<Body>,
}

/// The envelope's `message` oneof, every member Nakama defines.
///
/// Members Herald neither serves nor sends carry [`Unserved`]. Their proto
/// names are kept as variant names only so that the numbering can be checked
/// against Nakama's schema at a glance.
#[derive(Clone, PartialEq, prost::Oneof)]
pub(super) enum Body {
    #[prost(message, tag = "2")]
    Channel(Unserved),
    #[prost(message, tag = "3")]
    ChannelJoin(Unserved),
    #[prost(message, tag = "4")]
    ChannelLeave(Unserved),
    #[prost(message, tag = "5")]
    ChannelMessage(Unserved),
    #[prost(message, tag = "6")]
    ChannelMessageAck(Unserved),
    #[prost(message, tag = "7")]
    ChannelMessageSend(Unserved),
    #[prost(message, tag = "8")]
    ChannelMessageUpdate(Unserved),
    #[prost(message, tag = "9")]
    ChannelMessageRemove(Unserved),
    #[prost(message, tag = "10")]
    ChannelPresenceEvent(Unserved),
    #[prost(message, tag = "11")]
    Error(Error),
    #[prost(message, tag = "12")]
    Match(Unserved),
    #[prost(message, tag = "13")]
    MatchCreate(Unserved),
    #[prost(message, tag = "14")]
    MatchData(Unserved),
    #[prost(message, tag = "15")]
    MatchDataSend(Unserved),
    #[prost(message, tag = "16")]
    MatchJoin(Unserved),
    #[prost(message, tag = "17")]
    MatchLeave(Unserved),
    #[prost(message, tag = "18")]
    MatchPresenceEvent(Unserved),
    #[prost(message, tag = "19")]
    MatchmakerAdd(Unserved),
    #[prost(message, tag = "20")]
    MatchmakerMatched(Unserved),
    #[prost(message, tag = "21")]
    MatchmakerRemove(Unserved),
    #[prost(message, tag = "22")]
    MatchmakerTicket(Unserved),
    #[prost(message, tag = "23")]
    Notifications(Unserved),
    #[prost(message, tag = "24")]
    Rpc(Unserved),
    #[prost(message, tag = "25")]
    Status(Status),
    #[prost(message, tag = "26")]
    StatusFollow(StatusFollow),
    #[prost(message, tag = "27")]
    StatusPresenceEvent(StatusPresenceEvent),
    #[prost(message, tag = "28")]
    StatusUnfollow(StatusUnfollow),
    #[prost(message, tag = "29")]
    StatusUpdate(StatusUpdate),
    #[prost(message, tag = "30")]
    StreamData(Unserved),
    #[prost(message, tag = "31")]
    StreamPresenceEvent(Unserved),
    #[prost(message, tag = "32")]
    Ping(Ping),
    #[prost(message, tag = "33")]
    Pong(Pong),
    #[prost(message, tag = "34")]
    Party(Unserved),
    #[prost(message, tag = "35")]
    PartyCreate(Unserved),
    #[prost(message, tag = "36")]
    PartyJoin(Unserved),
    #[prost(message, tag = "37")]
    PartyLeave(Unserved),
    #[prost(message, tag = "38")]
    PartyPromote(Unserved),
    #[prost(message, tag = "39")]
    PartyLeader(Unserved),
    #[prost(message, tag = "40")]
    PartyAccept(Unserved),
    #[prost(message, tag = "41")]
    PartyRemove(Unserved),
    #[prost(message, tag = "42")]
    PartyClose(Unserved),
    #[prost(message, tag = "43")]
    PartyJoinRequestList(Unserved),
    #[prost(message, tag = "44")]
    PartyJoinRequest(Unserved),
    #[prost(message, tag = "45")]
    PartyMatchmakerAdd(Unserved),
    #[prost(message, tag = "46")]
    PartyMatchmakerRemove(Unserved),
    #[prost(message, tag = "47")]
    PartyMatchmakerTicket(Unserved),
    #[prost(message, tag = "48")]
    PartyData(Unserved),
    #[prost(message, tag = "49")]
    PartyDataSend(Unserved),
    #[prost(message, tag = "50")]
    PartyPresenceEvent(Unserved),
    #[prost(message, tag = "51")]
    PartyUpdate(Unserved),
}

/// Stand-in for every envelope member Herald does not model: a message with
/// no known fields.
///
/// Decoding it skips all of its fields, so it accepts the encoding of any
/// message type and allocates nothing. It still has to be well-formed
/// protobuf (bytes Go could not parse either). What it cannot check is the
/// content against the real type (a string field holding invalid UTF-8, say):
/// such a frame is Unrecognized here where Go would call it malformed. Both
/// close the session.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub(super) struct Unserved {}

/// `nakama.realtime.Error`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Error {
    /// An `Error.Code` value; 0 (RUNTIME_EXCEPTION) is omitted on the wire.
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    /// Never set by Herald or by Nakama's status paths; modelled so that a
    /// peer's error with context decodes (and is checked) like in Go.
    #[prost(map = "string, string", tag = "3")]
    pub context: HashMap<String, String>,
}

/// `nakama.realtime.Status`: the snapshot answering `status_follow`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Status {
    #[prost(message, repeated, tag = "1")]
    pub presences: Vec<UserPresence>,
}

/// `nakama.realtime.StatusFollow`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct StatusFollow {
    #[prost(string, repeated, tag = "1")]
    pub user_ids: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub usernames: Vec<String>,
}

/// `nakama.realtime.StatusPresenceEvent`. There is no field 1.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct StatusPresenceEvent {
    #[prost(message, repeated, tag = "2")]
    pub joins: Vec<UserPresence>,
    #[prost(message, repeated, tag = "3")]
    pub leaves: Vec<UserPresence>,
}

/// `nakama.realtime.StatusUnfollow` (no usernames, unlike follow).
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct StatusUnfollow {
    #[prost(string, repeated, tag = "1")]
    pub user_ids: Vec<String>,
}

/// `nakama.realtime.StatusUpdate`. `None` (wrapper absent) means "go
/// offline"; `Some` with an empty value means "online, empty status".
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct StatusUpdate {
    #[prost(message, optional, tag = "1")]
    pub status: Option<StringValue>,
}

/// `nakama.realtime.Ping`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub(super) struct Ping {}

/// `nakama.realtime.Pong`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub(super) struct Pong {}

/// `nakama.realtime.UserPresence`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct UserPresence {
    #[prost(string, tag = "1")]
    pub user_id: String,
    #[prost(string, tag = "2")]
    pub session_id: String,
    #[prost(string, tag = "3")]
    pub username: String,
    /// Always false for status presences.
    #[prost(bool, tag = "4")]
    pub persistence: bool,
    /// Always set for status presences, possibly to `""`.
    #[prost(message, optional, tag = "5")]
    pub status: Option<StringValue>,
}

/// `google.protobuf.StringValue`, used as `Option<StringValue>`: prost encodes
/// a `Some` message field even when it is empty (`2a 00`) and decodes an
/// empty submessage as `Some`, so `Some("")` and absent stay distinct.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub(super) struct StringValue {
    #[prost(string, tag = "1")]
    pub value: String,
}

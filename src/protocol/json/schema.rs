//! Field numbers and names of every message the JSON codec reads or writes.
//!
//! protojson accepts a field under its proto name (`status_update`) or its
//! JSON name (`statusUpdate`, the lowerCamelCase form protoc derives), and
//! identifies it by number, so that giving both spellings is a duplicate.
//! Each lookup here maps a key to that number; `None` is an unknown field.
//! Numbers are Nakama's (`rtapi/realtime.proto`), so they double as the
//! bit index of the duplicate check and stay below 64.

/// `Envelope.cid`.
pub(super) const CID: u8 = 1;

// The envelope members Herald serves or decodes as a server message.
pub(super) const ERROR: u8 = 11;
pub(super) const STATUS: u8 = 25;
pub(super) const STATUS_FOLLOW: u8 = 26;
pub(super) const STATUS_PRESENCE_EVENT: u8 = 27;
pub(super) const STATUS_UNFOLLOW: u8 = 28;
pub(super) const STATUS_UPDATE: u8 = 29;
pub(super) const PING: u8 = 32;
pub(super) const PONG: u8 = 33;

/// Declares the envelope's `message` oneof once, producing both the table
/// (for tests and tools) and the key lookup (a `match`, which the compiler
/// turns into length-bucketed comparisons).
macro_rules! envelope_members {
    ($($number:literal $proto:literal $json:literal,)*) => {
        /// Every member of the envelope's `message` oneof:
        /// `(field number, proto name, JSON name)`, in field order.
        #[cfg_attr(not(test), allow(dead_code))]
        pub(super) const ENVELOPE_MEMBERS: &[(u8, &str, &str)] = &[$(($number, $proto, $json),)*];

        /// The members Herald does not serve, looked up after the hot ones.
        // Members whose two spellings coincide (`ping`, `error`) repeat a pattern.
        #[allow(unreachable_patterns)]
        fn other_envelope_field(key: &str) -> Option<u8> {
            match key {
                $($proto | $json => Some($number),)*
                _ => None,
            }
        }
    };
}

envelope_members! {
    2 "channel" "channel",
    3 "channel_join" "channelJoin",
    4 "channel_leave" "channelLeave",
    5 "channel_message" "channelMessage",
    6 "channel_message_ack" "channelMessageAck",
    7 "channel_message_send" "channelMessageSend",
    8 "channel_message_update" "channelMessageUpdate",
    9 "channel_message_remove" "channelMessageRemove",
    10 "channel_presence_event" "channelPresenceEvent",
    11 "error" "error",
    12 "match" "match",
    13 "match_create" "matchCreate",
    14 "match_data" "matchData",
    15 "match_data_send" "matchDataSend",
    16 "match_join" "matchJoin",
    17 "match_leave" "matchLeave",
    18 "match_presence_event" "matchPresenceEvent",
    19 "matchmaker_add" "matchmakerAdd",
    20 "matchmaker_matched" "matchmakerMatched",
    21 "matchmaker_remove" "matchmakerRemove",
    22 "matchmaker_ticket" "matchmakerTicket",
    23 "notifications" "notifications",
    24 "rpc" "rpc",
    25 "status" "status",
    26 "status_follow" "statusFollow",
    27 "status_presence_event" "statusPresenceEvent",
    28 "status_unfollow" "statusUnfollow",
    29 "status_update" "statusUpdate",
    30 "stream_data" "streamData",
    31 "stream_presence_event" "streamPresenceEvent",
    32 "ping" "ping",
    33 "pong" "pong",
    34 "party" "party",
    35 "party_create" "partyCreate",
    36 "party_join" "partyJoin",
    37 "party_leave" "partyLeave",
    38 "party_promote" "partyPromote",
    39 "party_leader" "partyLeader",
    40 "party_accept" "partyAccept",
    41 "party_remove" "partyRemove",
    42 "party_close" "partyClose",
    43 "party_join_request_list" "partyJoinRequestList",
    44 "party_join_request" "partyJoinRequest",
    45 "party_matchmaker_add" "partyMatchmakerAdd",
    46 "party_matchmaker_remove" "partyMatchmakerRemove",
    47 "party_matchmaker_ticket" "partyMatchmakerTicket",
    48 "party_data" "partyData",
    49 "party_data_send" "partyDataSend",
    50 "party_presence_event" "partyPresenceEvent",
    51 "party_update" "partyUpdate",
}

/// `Envelope`: `cid` and the fifty oneof members.
pub(super) fn envelope_field(key: &str) -> Option<u8> {
    // The keys real clients send, checked before the long tail.
    match key {
        "cid" => Some(CID),
        "ping" => Some(PING),
        "status_update" | "statusUpdate" => Some(STATUS_UPDATE),
        "status_follow" | "statusFollow" => Some(STATUS_FOLLOW),
        "status_unfollow" | "statusUnfollow" => Some(STATUS_UNFOLLOW),
        "pong" => Some(PONG),
        _ => other_envelope_field(key),
    }
}

/// `StatusFollow { repeated string user_ids = 1; repeated string usernames = 2; }`
pub(super) fn status_follow_field(key: &str) -> Option<u8> {
    match key {
        "user_ids" | "userIds" => Some(1),
        "usernames" => Some(2),
        _ => None,
    }
}

/// `StatusUnfollow { repeated string user_ids = 1; }`
pub(super) fn status_unfollow_field(key: &str) -> Option<u8> {
    match key {
        "user_ids" | "userIds" => Some(1),
        _ => None,
    }
}

/// `StatusUpdate { google.protobuf.StringValue status = 1; }`
pub(super) fn status_update_field(key: &str) -> Option<u8> {
    match key {
        "status" => Some(1),
        _ => None,
    }
}

/// `Ping {}` and `Pong {}`: no fields at all.
pub(super) fn no_field(_key: &str) -> Option<u8> {
    None
}

/// `Status { repeated UserPresence presences = 1; }`
pub(super) fn status_field(key: &str) -> Option<u8> {
    match key {
        "presences" => Some(1),
        _ => None,
    }
}

/// `StatusPresenceEvent { repeated UserPresence joins = 2; repeated UserPresence leaves = 3; }`
pub(super) fn status_presence_event_field(key: &str) -> Option<u8> {
    match key {
        "joins" => Some(2),
        "leaves" => Some(3),
        _ => None,
    }
}

/// `Error { int32 code = 1; string message = 2; map<string, string> context = 3; }`
pub(super) fn error_field(key: &str) -> Option<u8> {
    match key {
        "code" => Some(1),
        "message" => Some(2),
        "context" => Some(3),
        _ => None,
    }
}

/// `UserPresence { string user_id = 1; string session_id = 2; string username = 3;
/// bool persistence = 4; google.protobuf.StringValue status = 5; }`
pub(super) fn user_presence_field(key: &str) -> Option<u8> {
    match key {
        "user_id" | "userId" => Some(1),
        "session_id" | "sessionId" => Some(2),
        "username" => Some(3),
        "persistence" => Some(4),
        "status" => Some(5),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// protoc's JSON name: drop each `_` and upper-case the letter after it.
    fn lower_camel(proto: &str) -> String {
        let mut out = String::new();
        let mut upper = false;
        for c in proto.chars() {
            if c == '_' {
                upper = true;
            } else if upper {
                out.extend(c.to_uppercase());
                upper = false;
            } else {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn envelope_members_are_fields_two_to_fifty_one_in_order() {
        let numbers: Vec<u8> = ENVELOPE_MEMBERS.iter().map(|m| m.0).collect();
        assert_eq!(numbers, (2..=51).collect::<Vec<u8>>());
    }

    #[test]
    fn json_names_are_the_lower_camel_form_of_proto_names() {
        for &(_, proto, json) in ENVELOPE_MEMBERS {
            assert_eq!(lower_camel(proto), json, "member {proto}");
        }
    }

    #[test]
    fn both_spellings_of_every_member_find_its_number() {
        for &(number, proto, json) in ENVELOPE_MEMBERS {
            assert_eq!(envelope_field(proto), Some(number), "{proto}");
            assert_eq!(envelope_field(json), Some(number), "{json}");
        }
        assert_eq!(envelope_field("cid"), Some(CID));
    }

    #[test]
    fn near_miss_keys_are_unknown() {
        for key in [
            "",
            "Cid",
            "CID",
            "Ping",
            "status-update",
            "StatusUpdate",
            "statusupdate",
            "status_Update",
            "user_ids",
            "ping ",
        ] {
            assert_eq!(envelope_field(key), None, "{key:?}");
        }
    }

    #[test]
    fn message_numbers_fit_the_duplicate_bitmask() {
        assert!(ENVELOPE_MEMBERS.iter().all(|m| m.0 < 64));
    }
}

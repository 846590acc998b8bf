//! Every error a client can see, with its protocol code and exact text.
//!
//! The texts are Nakama's, byte for byte (reference §5); clients and
//! conformance suites compare them. Nothing else in Herald spells them out.

use super::message::ErrorCode;

/// An error answered with an `error` envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: &'static str,
    /// Whether the session is closed after the error is sent.
    pub closes_session: bool,
}

const fn keep_open(code: ErrorCode, message: &'static str) -> ProtocolError {
    ProtocolError {
        code,
        message,
        closes_session: false,
    }
}

const fn then_close(code: ErrorCode, message: &'static str) -> ProtocolError {
    ProtocolError {
        code,
        message,
        closes_session: true,
    }
}

pub const MISSING_MESSAGE: ProtocolError =
    then_close(ErrorCode::MissingPayload, "Missing message.");
pub const UNRECOGNIZED_MESSAGE: ProtocolError =
    then_close(ErrorCode::UnrecognizedPayload, "Unrecognized message.");
pub const INVALID_USER_ID: ProtocolError =
    keep_open(ErrorCode::BadInput, "Invalid user identifier");
pub const INVALID_USERNAME: ProtocolError = keep_open(ErrorCode::BadInput, "Invalid username");
pub const STATUS_TOO_LONG: ProtocolError = keep_open(
    ErrorCode::BadInput,
    "Status must be 2048 characters or less",
);
/// Herald's follow cap (`--max-follows`); Nakama has no such limit.
pub const TOO_MANY_FOLLOWS: ProtocolError = keep_open(ErrorCode::BadInput, "Too many follows");
/// Herald's opt-in `--status-update-rate`.
pub const UPDATE_RATE_LIMITED: ProtocolError =
    keep_open(ErrorCode::BadInput, "Status update rate limit exceeded");
/// Herald's opt-in `--follow-rate`.
pub const FOLLOW_RATE_LIMITED: ProtocolError =
    keep_open(ErrorCode::BadInput, "Follow rate limit exceeded");
pub const COULD_NOT_CHECK_USERS: ProtocolError =
    keep_open(ErrorCode::RuntimeException, "Could not check users");
pub const ERROR_TRACKING_STATUS: ProtocolError =
    keep_open(ErrorCode::RuntimeException, "Error tracking status update");

/// Close reasons (websocket close code 1000 unless noted), as Nakama sends them.
pub mod close_reason {
    pub const MALFORMED_PAYLOAD: &str = "received malformed payload";
    pub const ERROR_PROCESSING: &str = "error processing message";
    pub const UNEXPECTED_MESSAGE_TYPE: &str = "received unexpected WebSocket message type";
    pub const OUTGOING_QUEUE_FULL: &str = "session outgoing queue full";
    pub const SERVER_SIDE_DISCONNECT: &str = "server-side session disconnect";
}

/// The longest status accepted, in UTF-8 bytes.
pub const MAX_STATUS_BYTES: usize = 2048;

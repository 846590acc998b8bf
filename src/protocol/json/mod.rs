//! JSON codec (PLACEHOLDER: being written; see protocol/message.rs for the model).
use super::{Malformed, Reply, Request, StatusPresenceEvent};

pub fn decode(_payload: &mut [u8]) -> Result<Request, Malformed> {
    Err(Malformed("json codec not yet implemented"))
}
pub fn encode_reply(_reply: &Reply<'_>, _out: &mut Vec<u8>) {}
pub fn encode_event(_event: &StatusPresenceEvent, _out: &mut Vec<u8>) {}

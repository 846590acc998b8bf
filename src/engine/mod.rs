//! The engine (PLACEHOLDER: being written).
use crate::ids::UserId;

/// A cloneable, thread-safe handle to the running shards.
#[derive(Clone)]
pub struct EngineHandle {}

impl EngineHandle {
    /// Announces a user account (new, or first seen in a token) to the shards
    /// that own its id and its username. Resolves once both have recorded it,
    /// so a follow issued after this returns finds the user.
    pub async fn register_user(&self, _user: UserId, _username: &str) {}
}

//! [`UserStatus`]: who is online and with what, for the backend API
//! (`GET /v2/status`), mirroring the `online` flag Nakama puts on users.

use std::sync::Arc;

use crate::ids::{SessionId, UserId};

/// The statuses of one user: one entry per session that has a status.
/// No entries means offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserStatus {
    pub user_id: UserId,
    pub sessions: Vec<(SessionId, Arc<str>)>,
}

impl UserStatus {
    /// Online means at least one session with a status.
    pub fn online(&self) -> bool {
        !self.sessions.is_empty()
    }
}

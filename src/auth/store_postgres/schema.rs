//! Herald's tables in Postgres, and the versioned migrations that create
//! and upgrade them.
//!
//! Column names are Nakama's where Nakama has the column (`users.id`,
//! `username`, `custom_id`, `create_time`; `user_device.id`, `user_id`, from
//! Nakama's `20180103142001_initial_schema.sql`), so that a later mode can
//! read a Nakama database. One difference: `users.username` may be NULL, for
//! a user first seen in a token whose username another account holds
//! ([`AccountStore::record_external`](crate::auth::AccountStore::record_external)).
//!
//! Migrations: [`MIGRATIONS`] in order, each applied once, in one
//! transaction with its row in `herald_schema_migrations`. The whole
//! upgrade runs in one transaction that first takes a transaction-level
//! advisory lock ([`MIGRATION_LOCK`]), so nodes starting together upgrade
//! one after the other: the first applies what is missing, the others find
//! nothing left to do. A database whose highest version is above this
//! build's is refused before anything is touched. Released migrations are
//! never edited; a change is a new migration.

use tokio_postgres::Client;

/// `pg_advisory_xact_lock` key of the schema upgrade (ASCII "herald" + 1).
pub const MIGRATION_LOCK: i64 = 0x6865_7261_6c64_0001;

/// One schema step.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub description: &'static str,
    pub sql: &'static str,
}

/// Every migration, oldest first; versions count up from 1 without gaps.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "users and user_device",
        sql: "
            CREATE TABLE users (
                id          UUID PRIMARY KEY,
                username    VARCHAR(128) UNIQUE,  -- NULL only for external users whose name was taken
                custom_id   VARCHAR(128) UNIQUE,  -- NULL unless created by authenticate/custom
                create_time TIMESTAMPTZ NOT NULL DEFAULT now()
            );
            CREATE TABLE user_device (
                id      VARCHAR(128) PRIMARY KEY,
                user_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE
            );",
    },
    // Its own step (not part of 1) so that the upgrade path is exercised
    // from the first release on; see tests/integration/postgres.rs.
    Migration {
        version: 2,
        description: "index user_device by user",
        sql: "CREATE INDEX user_device_user_id_idx ON user_device (user_id);",
    },
];

/// The version this build brings a database to.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// What [`upgrade`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    /// Applied migrations `from + 1 ..= to` (`from` 0: a new database).
    Applied { from: i64, to: i64 },
    /// The database was already at this build's version.
    Current,
    /// The database's version is above this build's; nothing was changed.
    TooNew { found: i64 },
}

/// Brings the database up to [`latest_version`] (see the module doc).
pub async fn upgrade(client: &mut Client) -> Result<Upgrade, tokio_postgres::Error> {
    upgrade_to(client, latest_version()).await
}

/// As [`upgrade`], stopping at `target` (tests use it to leave a database
/// at an earlier version, exactly as an older build would have).
pub async fn upgrade_to(
    client: &mut Client,
    target: i64,
) -> Result<Upgrade, tokio_postgres::Error> {
    let txn = client.transaction().await?;
    txn.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    txn.batch_execute(
        "CREATE TABLE IF NOT EXISTS herald_schema_migrations (
            version     BIGINT PRIMARY KEY,
            description TEXT NOT NULL,
            applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
        )",
    )
    .await?;
    let current: i64 = txn
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM herald_schema_migrations",
            &[],
        )
        .await?
        .get(0);
    if current > latest_version() {
        return Ok(Upgrade::TooNew { found: current });
    }
    let mut applied = None;
    for migration in MIGRATIONS
        .iter()
        .filter(|m| m.version > current && m.version <= target)
    {
        txn.batch_execute(migration.sql).await?;
        txn.execute(
            "INSERT INTO herald_schema_migrations (version, description) VALUES ($1, $2)",
            &[&migration.version, &migration.description],
        )
        .await?;
        applied = Some(migration.version);
    }
    txn.commit().await?;
    Ok(match applied {
        Some(to) => Upgrade::Applied { from: current, to },
        None => Upgrade::Current,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_count_up_from_one_without_gaps() {
        for (index, migration) in MIGRATIONS.iter().enumerate() {
            assert_eq!(migration.version, index as i64 + 1, "{migration:?}");
        }
        assert_eq!(latest_version(), MIGRATIONS.len() as i64);
    }
}

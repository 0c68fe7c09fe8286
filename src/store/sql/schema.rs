//! Which of syncback's migrations the database behind `store.url` has had. Commands that
//! only read open the store without migrating (README "CLI"); they ask this first, so a
//! database nobody has prepared yet is reported as such instead of "relation does not
//! exist".

use sqlx::Row;

use super::{map_err, Backend, SqlStore, PG_MIGRATIONS, SQLITE_MIGRATIONS};
use crate::store::StoreError;

/// How far the schema of a database is from this build's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SchemaState {
    /// No syncback migration was ever applied (no `_sqlx_migrations` table, or none
    /// succeeded): none of syncback's tables exist.
    Missing,
    /// Migrations up to `applied` ran; this build has them up to `latest`.
    Behind { applied: i64, latest: i64 },
    /// Every migration of this build ran (or a newer build's).
    Current,
}

impl SqlStore {
    /// The newest migration this build carries.
    pub fn latest_schema_version(&self) -> i64 {
        let all = match self.backend {
            Backend::Postgres => PG_MIGRATIONS,
            Backend::Sqlite => SQLITE_MIGRATIONS,
        };
        all.iter().map(|(v, _, _)| *v).max().unwrap_or_default()
    }

    /// The newest migration applied successfully, `None` when there is none.
    pub async fn schema_version(&self) -> Result<Option<i64>, StoreError> {
        // sqlx's migrator keeps its ledger in `_sqlx_migrations` (search path / main).
        let ledger = match self.backend {
            Backend::Postgres => {
                sqlx::query("SELECT to_regclass('_sqlx_migrations') IS NOT NULL AS present")
                    .fetch_one(&self.pool)
                    .await
                    .map_err(map_err)?
                    .try_get::<bool, _>("present")
                    .map_err(map_err)?
            }
            Backend::Sqlite => {
                sqlx::query(
                    "SELECT COUNT(*) AS n FROM sqlite_master
                     WHERE type = 'table' AND name = '_sqlx_migrations'",
                )
                .fetch_one(&self.pool)
                .await
                .map_err(map_err)?
                .try_get::<i64, _>("n")
                .map_err(map_err)?
                    > 0
            }
        };
        if !ledger {
            return Ok(None);
        }
        sqlx::query("SELECT MAX(version) AS v FROM _sqlx_migrations WHERE success")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?
            .try_get::<Option<i64>, _>("v")
            .map_err(map_err)
    }

    /// [`SqlStore::schema_version`] against this build's migrations.
    pub async fn schema_state(&self) -> Result<SchemaState, StoreError> {
        let latest = self.latest_schema_version();
        Ok(match self.schema_version().await? {
            None => SchemaState::Missing,
            Some(applied) if applied < latest => SchemaState::Behind { applied, latest },
            Some(_) => SchemaState::Current,
        })
    }
}

//! [`ConsoleStore`] for [`SqlStore`] (migration 3, `migrations/*/0003_console.sql`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{event_from_row, from_micros, map_err, micros, SqlStore, LEARNER_COLUMNS};
use crate::config::SyncSettings;
use crate::store::{
    AuditEntry, ConsoleStore, EventRecord, LearnerState, MappingVersion, OutcomeCount, StoreError,
    WorkerSeen,
};

#[async_trait]
impl ConsoleStore for SqlStore {
    async fn latest_mapping(&self) -> Result<Option<MappingVersion>, StoreError> {
        let row = sqlx::query(
            "SELECT version, settings, saved_by, saved_at FROM mapping_versions
             ORDER BY version DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        let Some(row) = row else { return Ok(None) };
        let json: String = row.try_get("settings").map_err(map_err)?;
        let settings: SyncSettings = serde_json::from_str(&json)
            .map_err(|e| StoreError::Other(format!("stored mapping does not read: {e}")))?;
        Ok(Some(MappingVersion {
            version: row.try_get("version").map_err(map_err)?,
            settings,
            saved_by: row.try_get("saved_by").map_err(map_err)?,
            saved_at: from_micros(row.try_get("saved_at").map_err(map_err)?),
        }))
    }

    async fn latest_mapping_version(&self) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT MAX(version) AS v FROM mapping_versions")
            .fetch_one(&self.pool)
            .await
            .map_err(map_err)?;
        row.try_get::<Option<i64>, _>("v").map_err(map_err)
    }

    async fn save_mapping(
        &self,
        settings: &SyncSettings,
        saved_by: &str,
        expected: Option<i64>,
    ) -> Result<Option<i64>, StoreError> {
        let json = serde_json::to_string(settings)
            .map_err(|e| StoreError::Other(format!("mapping does not serialize: {e}")))?;
        let next = expected.unwrap_or(0) + 1;
        // The primary key makes concurrent saves of the same base version fail but one;
        // the NOT EXISTS makes a save based on an old version fail too.
        let done = sqlx::query(
            "INSERT INTO mapping_versions (version, settings, saved_by, saved_at)
             SELECT $1, $2, $3, $4
             WHERE NOT EXISTS (SELECT 1 FROM mapping_versions WHERE version >= $5)
             ON CONFLICT (version) DO NOTHING",
        )
        .bind(next)
        .bind(json)
        .bind(saved_by)
        .bind(micros(Utc::now()))
        .bind(next)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok((done.rows_affected() == 1).then_some(next))
    }

    async fn add_audit(&self, e: &AuditEntry) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (at, actor, action, target, before, after)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(micros(e.at))
        .bind(&e.actor)
        .bind(&e.action)
        .bind(&e.target)
        .bind(e.before.as_deref())
        .bind(e.after.as_deref())
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT at, actor, action, target, before, after FROM audit_log
             ORDER BY seq DESC LIMIT $1",
        )
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    at: from_micros(r.try_get("at").map_err(map_err)?),
                    actor: r.try_get("actor").map_err(map_err)?,
                    action: r.try_get("action").map_err(map_err)?,
                    target: r.try_get("target").map_err(map_err)?,
                    before: r.try_get("before").map_err(map_err)?,
                    after: r.try_get("after").map_err(map_err)?,
                })
            })
            .collect()
    }

    async fn heartbeat(&self, w: &WorkerSeen) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO worker_heartbeats (worker_id, host, role, mapping_version, api_used, api_max, started_at, seen_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (worker_id) DO UPDATE SET host = excluded.host, role = excluded.role,
               mapping_version = excluded.mapping_version, api_used = excluded.api_used,
               api_max = excluded.api_max, seen_at = excluded.seen_at",
        )
        .bind(&w.worker_id)
        .bind(&w.host)
        .bind(&w.role)
        .bind(w.mapping_version)
        .bind(w.api_used)
        .bind(w.api_max)
        .bind(micros(w.started_at))
        .bind(micros(w.seen_at))
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn workers_seen(&self, since: DateTime<Utc>) -> Result<Vec<WorkerSeen>, StoreError> {
        let rows = sqlx::query(
            "SELECT worker_id, host, role, mapping_version, api_used, api_max, started_at, seen_at
             FROM worker_heartbeats WHERE seen_at >= $1 ORDER BY seen_at DESC",
        )
        .bind(micros(since))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                Ok(WorkerSeen {
                    worker_id: r.try_get("worker_id").map_err(map_err)?,
                    host: r.try_get("host").map_err(map_err)?,
                    role: r.try_get("role").map_err(map_err)?,
                    mapping_version: r.try_get("mapping_version").map_err(map_err)?,
                    api_used: r.try_get("api_used").map_err(map_err)?,
                    api_max: r.try_get("api_max").map_err(map_err)?,
                    started_at: from_micros(r.try_get("started_at").map_err(map_err)?),
                    seen_at: from_micros(r.try_get("seen_at").map_err(map_err)?),
                })
            })
            .collect()
    }

    async fn outcome_counts(&self, since: DateTime<Utc>) -> Result<Vec<OutcomeCount>, StoreError> {
        let rows = sqlx::query(
            "SELECT class, code, COUNT(*) AS n FROM event_outcomes WHERE recorded_at >= $1
             GROUP BY class, code ORDER BY class, n DESC",
        )
        .bind(micros(since))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                Ok(OutcomeCount {
                    class: r.try_get("class").map_err(map_err)?,
                    code: r.try_get("code").map_err(map_err)?,
                    count: r.try_get("n").map_err(map_err)?,
                })
            })
            .collect()
    }

    async fn recent_failures(&self, limit: u32) -> Result<Vec<EventRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT event_id, event_type, learner_id, occurred_at, class, code, detail, recorded_at
             FROM event_outcomes WHERE class = 'failed' ORDER BY recorded_at DESC LIMIT $1",
        )
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn recent_outcome(&self) -> Result<Option<EventRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT event_id, event_type, learner_id, occurred_at, class, code, detail, recorded_at
             FROM event_outcomes ORDER BY seq DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(event_from_row).transpose()
    }

    async fn recent_learners(&self, limit: u32) -> Result<Vec<LearnerState>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {LEARNER_COLUMNS} FROM learners ORDER BY updated_at DESC LIMIT $1"
        ))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(SqlStore::learner_from_row).collect()
    }
}

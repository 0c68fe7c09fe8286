//! [`Store`] over `sqlx`'s `Any` driver: PostgreSQL in production, SQLite as the
//! embedded default. Both share every query; only the migrations differ
//! (`migrations/postgres`, `migrations/sqlite`). Timestamps are stored as unix
//! microseconds so ordering (R12) compares integers on both backends.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, ConnectOptions, Row};

use super::{
    Commit, EntityVersion, EventRecord, LearnerState, LinkState, OutcomeClass, Store, StoreError,
    UncertainMark,
};
use crate::model::EntityKind;

mod console;
mod schema;

pub use schema::SchemaState;

/// Migrations compiled into the binary: (version, description, SQL) per backend.
const PG_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/postgres/0001_init.sql"),
    ),
    (
        2,
        "history retention",
        include_str!("../../migrations/postgres/0002_history_retention.sql"),
    ),
    (
        3,
        "reconcile",
        include_str!("../../migrations/postgres/0003_reconcile.sql"),
    ),
    (
        4,
        "console",
        include_str!("../../migrations/postgres/0004_console.sql"),
    ),
];
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "history retention",
        include_str!("../../migrations/sqlite/0002_history_retention.sql"),
    ),
    (
        3,
        "reconcile",
        include_str!("../../migrations/sqlite/0003_reconcile.sql"),
    ),
    (
        4,
        "console",
        include_str!("../../migrations/sqlite/0004_console.sql"),
    ),
];

/// A [`sqlx::migrate::MigrationSource`] over embedded SQL (no files needed at run time,
/// no proc-macro build of a second sqlx).
#[derive(Debug)]
struct Embedded(&'static [(i64, &'static str, &'static str)]);

impl sqlx::migrate::MigrationSource<'static> for Embedded {
    fn resolve(
        self,
    ) -> futures::future::BoxFuture<
        'static,
        Result<Vec<sqlx::migrate::Migration>, sqlx::error::BoxDynError>,
    > {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|(v, d, sql)| {
                    sqlx::migrate::Migration::new(
                        *v,
                        (*d).into(),
                        sqlx::migrate::MigrationType::Simple,
                        (*sql).into(),
                        false,
                    )
                })
                .collect())
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Postgres => "postgres",
            Backend::Sqlite => "sqlite",
        }
    }
}

/// The SQL store. Cheap to clone (a pool).
#[derive(Clone, Debug)]
pub struct SqlStore {
    pool: AnyPool,
    backend: Backend,
}

fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

fn from_micros(us: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(us).single().unwrap_or_default()
}

/// Connection trouble, lock conflicts and serialization failures are worth retrying
/// (R13); everything else is a bug or a broken schema.
fn map_err(e: sqlx::Error) -> StoreError {
    use sqlx::Error as E;
    match &e {
        E::Io(_)
        | E::PoolTimedOut
        | E::PoolClosed
        | E::WorkerCrashed
        | E::Tls(_)
        | E::Protocol(_) => StoreError::Unavailable(e.to_string()),
        E::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            let postgres = db
                .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                .is_some();
            let transient = if postgres {
                // serialization_failure, deadlock_detected, admin/crash shutdown,
                // cannot_connect_now, connection exceptions (class 08).
                matches!(
                    code.as_str(),
                    "40001" | "40P01" | "57P01" | "57P02" | "57P03"
                ) || code.starts_with("08")
            } else {
                // SQLite: SQLITE_BUSY (5), SQLITE_LOCKED (6) and their extended codes.
                code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6))
            };
            if transient {
                StoreError::Unavailable(e.to_string())
            } else if is_data_error(postgres, &code) {
                StoreError::Data(e.to_string())
            } else {
                StoreError::Other(e.to_string())
            }
        }
        _ => StoreError::Other(e.to_string()),
    }
}

/// PostgreSQL SQLSTATE classes 22 (data exception) and 54 (program limit exceeded);
/// SQLite SQLITE_TOOBIG (18) and SQLITE_MISMATCH (20).
fn is_data_error(postgres: bool, code: &str) -> bool {
    if postgres {
        code.starts_with("22") || code.starts_with("54")
    } else {
        code.parse::<i32>()
            .is_ok_and(|c| matches!(c & 0xff, 18 | 20))
    }
}

/// `sqlite://file.db` creates the file when missing (sqlx's default would refuse).
fn normalize_url(url: &str) -> String {
    if url.starts_with("sqlite:") && !url.contains('?') && !url.contains(":memory:") {
        format!("{url}?mode=rwc")
    } else {
        url.to_string()
    }
}

impl SqlStore {
    /// Connect (without migrating). `url` is `postgres://…` or `sqlite://…`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::Other(
                "store.url must start with postgres:// or sqlite://".into(),
            ));
        };
        let options = AnyConnectOptions::from_str(&normalize_url(url))
            .map_err(|e| StoreError::Other(format!("store.url: {e}")))?
            .log_statements(tracing::log::LevelFilter::Trace)
            .log_slow_statements(tracing::log::LevelFilter::Warn, Duration::from_secs(1));
        // `?mode=ro` (commands that only read): the journal mode is left as the file has
        // it — changing it is a write, refused on a file no `work` has put in WAL mode.
        let read_only = backend == Backend::Sqlite
            && url
                .split_once('?')
                .is_some_and(|(_, q)| q.split('&').any(|p| p == "mode=ro"));
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // Several `work` processes may share one SQLite file: wait for locks
                        // instead of failing, and let readers run beside the writer.
                        sqlx::query("PRAGMA busy_timeout = 10000")
                            .execute(&mut *conn)
                            .await?;
                        if !read_only {
                            sqlx::query("PRAGMA journal_mode = WAL")
                                .execute(&mut *conn)
                                .await?;
                        }
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(map_err)?;
        Ok(SqlStore { pool, backend })
    }

    pub fn backend(&self) -> &'static str {
        self.backend.as_str()
    }

    fn learner_from_row(row: &AnyRow) -> Result<LearnerState, StoreError> {
        let link: String = row.try_get("link").map_err(map_err)?;
        Ok(LearnerState {
            learner_id: row.try_get("learner_id").map_err(map_err)?,
            contact_id: row.try_get("contact_id").map_err(map_err)?,
            link: LinkState::parse(&link)
                .ok_or_else(|| StoreError::Other(format!("unknown link state {link:?}")))?,
            account_id: row.try_get("account_id").map_err(map_err)?,
            last_outcome: row.try_get("last_outcome").map_err(map_err)?,
            last_error: row.try_get("last_error").map_err(map_err)?,
            updated_at: from_micros(row.try_get("updated_at").map_err(map_err)?),
        })
    }
}

const LEARNER_COLUMNS: &str =
    "learner_id, contact_id, link, account_id, last_outcome, last_error, updated_at";

const UPSERT_LEARNER: &str = "INSERT INTO learners (learner_id, contact_id, link, account_id, last_outcome, last_error, updated_at)
     VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (learner_id) DO UPDATE SET contact_id = excluded.contact_id, link = excluded.link,
       account_id = excluded.account_id, last_outcome = excluded.last_outcome,
       last_error = excluded.last_error, updated_at = excluded.updated_at";

fn bind_learner<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    s: &'q LearnerState,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    q.bind(&s.learner_id)
        .bind(s.contact_id.as_deref())
        .bind(s.link.as_str())
        .bind(s.account_id.as_deref())
        .bind(s.last_outcome.as_deref())
        .bind(s.last_error.as_deref())
        .bind(micros(s.updated_at))
}

fn event_from_row(row: &AnyRow) -> Result<EventRecord, StoreError> {
    let class: String = row.try_get("class").map_err(map_err)?;
    Ok(EventRecord {
        event_id: row.try_get("event_id").map_err(map_err)?,
        event_type: row.try_get("event_type").map_err(map_err)?,
        learner_id: row.try_get("learner_id").map_err(map_err)?,
        occurred_at: from_micros(row.try_get("occurred_at").map_err(map_err)?),
        class: OutcomeClass::parse(&class)
            .ok_or_else(|| StoreError::Other(format!("unknown class {class:?}")))?,
        code: row.try_get("code").map_err(map_err)?,
        detail: row.try_get("detail").map_err(map_err)?,
        recorded_at: from_micros(row.try_get("recorded_at").map_err(map_err)?),
    })
}

/// Open the store at `url`, run its migrations and return it behind the trait.
pub async fn open(
    url: &str,
    max_connections: u32,
) -> Result<std::sync::Arc<dyn Store>, StoreError> {
    let store = SqlStore::connect(url, max_connections).await?;
    store.migrate().await?;
    Ok(std::sync::Arc::new(store))
}

#[async_trait]
impl Store for SqlStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        let source = match self.backend {
            Backend::Postgres => Embedded(PG_MIGRATIONS),
            Backend::Sqlite => Embedded(SQLITE_MIGRATIONS),
        };
        let migrator = sqlx::migrate::Migrator::new(source)
            .await
            .map_err(|e| StoreError::Other(format!("migrations: {e}")))?;
        // Several processes may start at once: sqlx takes an advisory lock on PostgreSQL,
        // SQLite serialises through its file lock (busy_timeout).
        migrator
            .run(&self.pool)
            .await
            .map_err(|e| StoreError::Other(format!("migrations failed: {e}")))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(map_err)
    }

    async fn try_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = micros(Utc::now());
        let expires = now + ttl.as_micros() as i64;
        // Take the lease when free, expired (a crashed holder cannot keep it), or ours.
        let done = sqlx::query(
            "INSERT INTO leases (key, holder, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
             WHERE leases.expires_at < $4 OR leases.holder = excluded.holder",
        )
        .bind(key)
        .bind(holder)
        .bind(expires)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(done.rows_affected() == 1)
    }

    async fn try_leases(
        &self,
        keys: &[String],
        holder: &str,
        ttl: Duration,
    ) -> Result<Vec<String>, StoreError> {
        let now = micros(Utc::now());
        let expires = now + ttl.as_micros() as i64;
        let mut held = Vec::with_capacity(keys.len());
        // Rows are locked in key order: two workers asking for overlapping sets can never
        // deadlock (PostgreSQL would abort one after `deadlock_timeout`).
        let mut keys: Vec<&String> = keys.iter().collect();
        keys.sort();
        keys.dedup();
        // One statement per chunk (bind-parameter limits); a batch has ≤ a few hundred keys.
        for chunk in keys.chunks(300) {
            let values = (0..chunk.len())
                .map(|i| format!("(${}, $1, $2)", i + 4))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO leases (key, holder, expires_at) VALUES {values}
                 ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
                 WHERE leases.expires_at < $3 OR leases.holder = excluded.holder
                 RETURNING key"
            );
            let mut q = sqlx::query(&sql).bind(holder).bind(expires).bind(now);
            for k in chunk {
                q = q.bind(k);
            }
            for row in q.fetch_all(&self.pool).await.map_err(map_err)? {
                held.push(row.try_get::<String, _>("key").map_err(map_err)?);
            }
        }
        Ok(held)
    }

    async fn release_leases(&self, keys: &[String], holder: &str) -> Result<(), StoreError> {
        for chunk in keys.chunks(300) {
            let list = (0..chunk.len())
                .map(|i| format!("${}", i + 2))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!("DELETE FROM leases WHERE holder = $1 AND key IN ({list})");
            let mut q = sqlx::query(&sql).bind(holder);
            for k in chunk {
                q = q.bind(k);
            }
            q.execute(&self.pool).await.map_err(map_err)?;
        }
        Ok(())
    }

    async fn release_lease(&self, key: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM leases WHERE key = $1 AND holder = $2")
            .bind(key)
            .bind(holder)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn learner(&self, learner_id: &str) -> Result<Option<LearnerState>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {LEARNER_COLUMNS} FROM learners WHERE learner_id = $1"
        ))
        .bind(learner_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.as_ref().map(Self::learner_from_row).transpose()
    }

    async fn learners(&self, learner_ids: &[String]) -> Result<Vec<LearnerState>, StoreError> {
        let mut out = Vec::with_capacity(learner_ids.len());
        for chunk in learner_ids.chunks(500) {
            let placeholders = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT {LEARNER_COLUMNS} FROM learners WHERE learner_id IN ({placeholders})"
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            for row in q.fetch_all(&self.pool).await.map_err(map_err)? {
                out.push(Self::learner_from_row(&row)?);
            }
        }
        Ok(out)
    }

    async fn put_learner(&self, state: &LearnerState) -> Result<(), StoreError> {
        bind_learner(sqlx::query(UPSERT_LEARNER), state)
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn all_learners(&self, limit: u32) -> Result<Vec<LearnerState>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {LEARNER_COLUMNS} FROM learners ORDER BY learner_id LIMIT $1"
        ))
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(Self::learner_from_row).collect()
    }

    async fn is_processed(&self, event_id: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT 1 FROM processed_events WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(row.is_some())
    }

    async fn entity_version(
        &self,
        kind: EntityKind,
        entity_id: &str,
    ) -> Result<Option<EntityVersion>, StoreError> {
        let row = sqlx::query(
            "SELECT occurred_at, event_id FROM entity_versions WHERE kind = $1 AND entity_id = $2",
        )
        .bind(kind.as_str())
        .bind(entity_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_err)?;
        row.map(|r| {
            Ok(EntityVersion {
                occurred_at: from_micros(r.try_get("occurred_at").map_err(map_err)?),
                event_id: r.try_get("event_id").map_err(map_err)?,
            })
        })
        .transpose()
    }

    async fn commit_many(&self, commits: &[Commit]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await.map_err(map_err)?;
        for c in commits {
            // Writes only: on SQLite the first statement takes the write lock, so a deferred
            // transaction never has to upgrade a read lock (which would fail instead of wait).
            let r = &c.record;
            sqlx::query(
                "INSERT INTO event_outcomes (event_id, event_type, learner_id, occurred_at, class, code, detail, recorded_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&r.event_id)
            .bind(&r.event_type)
            .bind(&r.learner_id)
            .bind(micros(r.occurred_at))
            .bind(r.class.as_str())
            .bind(&r.code)
            .bind(&r.detail)
            .bind(micros(r.recorded_at))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            if c.mark_processed {
                sqlx::query(
                    "INSERT INTO processed_events (event_id, processed_at) VALUES ($1, $2)
                     ON CONFLICT (event_id) DO NOTHING",
                )
                .bind(&r.event_id)
                .bind(micros(r.recorded_at))
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            }
            if let Some((kind, id, v)) = &c.entity {
                // R12: only ever move an entity's version forward, by (occurred_at, event_id).
                sqlx::query(
                    "INSERT INTO entity_versions (kind, entity_id, occurred_at, event_id) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (kind, entity_id) DO UPDATE SET occurred_at = excluded.occurred_at, event_id = excluded.event_id
                     WHERE entity_versions.occurred_at < excluded.occurred_at
                        OR (entity_versions.occurred_at = excluded.occurred_at AND entity_versions.event_id < excluded.event_id)",
                )
                .bind(kind.as_str())
                .bind(id)
                .bind(micros(v.occurred_at))
                .bind(&v.event_id)
                .execute(&mut *tx)
                .await
                .map_err(map_err)?;
            }
            if let Some(state) = &c.learner {
                bind_learner(sqlx::query(UPSERT_LEARNER), state)
                    .execute(&mut *tx)
                    .await
                    .map_err(map_err)?;
            }
        }
        tx.commit().await.map_err(map_err)
    }

    async fn history(&self, learner_id: &str, limit: u32) -> Result<Vec<EventRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT event_id, event_type, learner_id, occurred_at, class, code, detail, recorded_at
             FROM event_outcomes WHERE learner_id = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(learner_id)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn prune_processed(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM processed_events WHERE processed_at < $1")
            .bind(micros(before))
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected())
    }

    async fn prune_history(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM event_outcomes WHERE recorded_at < $1")
            .bind(micros(before))
            .execute(&self.pool)
            .await
            .map_err(map_err)?;
        Ok(done.rows_affected())
    }

    async fn checkpoint(&self, name: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT value FROM checkpoints WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_err)?;
        row.map(|r| r.try_get("value").map_err(map_err)).transpose()
    }

    async fn set_checkpoint(&self, name: &str, value: Option<&str>) -> Result<(), StoreError> {
        let q = match value {
            Some(v) => sqlx::query(
                "INSERT INTO checkpoints (name, value, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
            )
            .bind(name)
            .bind(v)
            .bind(micros(Utc::now())),
            None => sqlx::query("DELETE FROM checkpoints WHERE name = $1").bind(name),
        };
        q.execute(&self.pool).await.map_err(map_err)?;
        Ok(())
    }

    async fn learners_after(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<LearnerState>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {LEARNER_COLUMNS} FROM learners WHERE learner_id > $1 ORDER BY learner_id LIMIT $2"
        ))
        .bind(after.unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter().map(Self::learner_from_row).collect()
    }

    async fn learners_by_contact(
        &self,
        contact_ids: &[String],
    ) -> Result<Vec<LearnerState>, StoreError> {
        let mut out = Vec::new();
        for chunk in contact_ids.chunks(500) {
            let placeholders = (1..=chunk.len())
                .map(|i| format!("${i}"))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "SELECT {LEARNER_COLUMNS} FROM learners WHERE contact_id IN ({placeholders})"
            );
            let mut q = sqlx::query(&sql);
            for id in chunk {
                q = q.bind(id);
            }
            for row in q.fetch_all(&self.pool).await.map_err(map_err)? {
                out.push(Self::learner_from_row(&row)?);
            }
        }
        Ok(out)
    }

    async fn mark_uncertain(&self, learner_id: &str, reason: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO uncertain_writes (learner_id, marked_at, reason) VALUES ($1, $2, $3)
             ON CONFLICT (learner_id) DO UPDATE SET marked_at = excluded.marked_at, reason = excluded.reason",
        )
        .bind(learner_id)
        .bind(micros(Utc::now()))
        .bind(reason)
        .execute(&self.pool)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn uncertain(&self, limit: u32) -> Result<Vec<UncertainMark>, StoreError> {
        let rows = sqlx::query(
            "SELECT learner_id, marked_at, reason FROM uncertain_writes ORDER BY marked_at LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(map_err)?;
        rows.iter()
            .map(|r| {
                Ok(UncertainMark {
                    learner_id: r.try_get("learner_id").map_err(map_err)?,
                    marked_at: from_micros(r.try_get("marked_at").map_err(map_err)?),
                    reason: r.try_get("reason").map_err(map_err)?,
                })
            })
            .collect()
    }

    async fn clear_uncertain(
        &self,
        learner_id: &str,
        marked_before: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let done =
            sqlx::query("DELETE FROM uncertain_writes WHERE learner_id = $1 AND marked_at <= $2")
                .bind(learner_id)
                .bind(micros(marked_before))
                .execute(&self.pool)
                .await
                .map_err(map_err)?;
        Ok(done.rows_affected() > 0)
    }
}

#[cfg(test)]
mod data_error_tests {
    #[test]
    fn data_exceptions_and_limits_are_data_errors_not_outages() {
        // 22021 (NUL in text) once read as SQLite's BUSY (22021 & 0xff == 5): transient.
        for c in ["22021", "22001", "22P05", "54000", "54001"] {
            assert!(super::is_data_error(true, c), "{c}");
        }
        for c in ["40001", "08006", "57P01", "42P01", "23505"] {
            assert!(!super::is_data_error(true, c), "{c}");
        }
        for c in ["18", "20"] {
            assert!(super::is_data_error(false, c), "{c}");
        }
        for c in ["5", "517", "19", "2067"] {
            assert!(!super::is_data_error(false, c), "{c}");
        }
    }
}

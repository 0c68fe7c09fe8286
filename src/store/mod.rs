//! State store (docs/rules.md R8–R12).
//!
//! One trait, [`Store`], implemented by [`sql::SqlStore`] over `sqlx`'s `Any` driver for
//! both PostgreSQL (production) and SQLite (embedded default), each with its own
//! migrations under `migrations/postgres` and `migrations/sqlite`.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::EntityKind;

/// The domain state types live in the sync domain; re-exported here for the adapters.
pub use crate::sync::outcome::OutcomeClass;
pub use crate::sync::state::{EntityVersion, LearnerState, LinkState};

pub mod console;
pub mod sql;

pub use console::{AuditEntry, ConsoleStore, MappingVersion, OutcomeCount, WorkerSeen};
pub use sql::{open, SchemaState, SqlStore};

/// One recorded event outcome (history for `syncback learner status`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    pub event_id: String,
    pub event_type: String,
    pub learner_id: String,
    pub occurred_at: DateTime<Utc>,
    pub class: OutcomeClass,
    /// Machine-readable code: `created`, `linked`, `updated`, `unlinked`, `stale`,
    /// `duplicate`, `out_of_scope`, `sync_disabled`, `account_not_found`, …
    pub code: String,
    pub detail: String,
    pub recorded_at: DateTime<Utc>,
}

/// A learner whose last Salesforce write may or may not have landed (reconcile re-verifies it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UncertainMark {
    pub learner_id: String,
    pub marked_at: DateTime<Utc>,
    pub reason: String,
}

/// Everything one processed event changes, committed atomically.
#[derive(Clone, Debug)]
pub struct Commit {
    pub record: EventRecord,
    /// Mark the event id processed (duplicate detection). False for failures, so a
    /// replay from the DLQ is applied again.
    pub mark_processed: bool,
    /// Advance the entity's version (only if newer than the stored one).
    pub entity: Option<(EntityKind, String, EntityVersion)>,
    /// New learner state to upsert.
    pub learner: Option<LearnerState>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Connection problems, timeouts, serialization/lock conflicts: retry.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// The data itself cannot be stored (PostgreSQL SQLSTATE classes 22 "data exception"
    /// and 54 "program limit exceeded": a NUL character, a value too long, ...): retrying
    /// cannot help, the event is a permanent `bad_event` (docs/rules.md R13).
    #[error("data the store cannot hold: {0}")]
    Data(String),
    #[error("store error: {0}")]
    Other(String),
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

#[async_trait]
pub trait Store: ConsoleStore + Send + Sync + 'static {
    /// Run migrations (idempotent).
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Reachability (`/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Take or renew the lease `key` for `holder` if free, expired, or already ours.
    async fn try_lease(&self, key: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError>;
    /// Release the lease if `holder` still has it.
    async fn release_lease(&self, key: &str, holder: &str) -> Result<(), StoreError>;
    /// [`Store::try_lease`] for many keys in one round trip; returns the keys now held by
    /// `holder`.
    async fn try_leases(
        &self,
        keys: &[String],
        holder: &str,
        ttl: Duration,
    ) -> Result<Vec<String>, StoreError>;
    /// Release every lease of `keys` that `holder` still has, in one round trip.
    async fn release_leases(&self, keys: &[String], holder: &str) -> Result<(), StoreError>;

    async fn learner(&self, learner_id: &str) -> Result<Option<LearnerState>, StoreError>;
    /// Many learners at once (backfill); missing ones are absent from the result.
    async fn learners(&self, learner_ids: &[String]) -> Result<Vec<LearnerState>, StoreError>;
    async fn put_learner(&self, state: &LearnerState) -> Result<(), StoreError>;
    /// Every learner state (status listings, demo table), ordered by learner id.
    async fn all_learners(&self, limit: u32) -> Result<Vec<LearnerState>, StoreError>;

    async fn is_processed(&self, event_id: &str) -> Result<bool, StoreError>;
    async fn entity_version(
        &self,
        kind: EntityKind,
        entity_id: &str,
    ) -> Result<Option<EntityVersion>, StoreError>;
    /// Apply a [`Commit`] in one transaction.
    async fn commit(&self, commit: &Commit) -> Result<(), StoreError> {
        self.commit_many(std::slice::from_ref(commit)).await
    }
    /// Apply several [`Commit`]s (a batch's outcomes) in one transaction.
    async fn commit_many(&self, commits: &[Commit]) -> Result<(), StoreError>;
    /// Newest first.
    async fn history(&self, learner_id: &str, limit: u32) -> Result<Vec<EventRecord>, StoreError>;
    /// Forget processed ids recorded before `before`; returns how many.
    async fn prune_processed(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
    /// Forget outcome history recorded before `before`; returns how many.
    async fn prune_history(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;

    async fn checkpoint(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// Learner states ordered by id, after `after` (paging through every learner: reconcile).
    async fn learners_after(
        &self,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<LearnerState>, StoreError>;
    /// The learners whose `contact_id` is one of these Contacts (linked or remembered).
    async fn learners_by_contact(
        &self,
        contact_ids: &[String],
    ) -> Result<Vec<LearnerState>, StoreError>;
    /// Reconcile hook: the learner's last Salesforce write ended in a timeout or another
    /// ambiguous outcome (it may still land). Re-marking moves `marked_at` forward.
    async fn mark_uncertain(&self, learner_id: &str, reason: &str) -> Result<(), StoreError>;
    /// Pending uncertain marks, oldest first.
    async fn uncertain(&self, limit: u32) -> Result<Vec<UncertainMark>, StoreError>;
    /// Remove the mark if it was made at or before `marked_before` (a newer mark stays).
    async fn clear_uncertain(
        &self,
        learner_id: &str,
        marked_before: DateTime<Utc>,
    ) -> Result<bool, StoreError>;
    async fn set_checkpoint(&self, name: &str, value: Option<&str>) -> Result<(), StoreError>;
}

//! What the admin console keeps in the store (README "Admin console"): the versioned
//! mapping (`sync.managed_by = "console"`), the audit log, worker heartbeats, and the
//! outcome summaries the Overview page shows.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{EventRecord, StoreError};
use crate::config::SyncSettings;

/// One saved version of the mapping (docs/rules.md R1–R5, R8).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MappingVersion {
    pub version: i64,
    pub settings: SyncSettings,
    pub saved_by: String,
    pub saved_at: DateTime<Utc>,
}

/// One change made by a person (who, when, what, before → after).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub at: DateTime<Utc>,
    pub actor: String,
    /// `mapping.save`, `dlq.replay`, `dlq.purge`, `learner.resync`, `learner.link`, `login`, …
    pub action: String,
    pub target: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// A worker process's last report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WorkerSeen {
    pub worker_id: String,
    pub host: String,
    pub role: String,
    pub mapping_version: Option<i64>,
    /// Salesforce `Sforce-Limit-Info` api-usage as last seen by this worker.
    pub api_used: Option<i64>,
    pub api_max: Option<i64>,
    pub started_at: DateTime<Utc>,
    pub seen_at: DateTime<Utc>,
}

/// Number of outcomes of one class and code (Overview).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutcomeCount {
    pub class: String,
    pub code: String,
    pub count: i64,
}

#[async_trait]
pub trait ConsoleStore: Send + Sync {
    /// The newest mapping version, if any was saved.
    async fn latest_mapping(&self) -> Result<Option<MappingVersion>, StoreError>;
    /// The newest version number only (cheap; polled by every `work`/`run` process).
    async fn latest_mapping_version(&self) -> Result<Option<i64>, StoreError>;
    /// Save a new version if the newest is still `expected` (`None`: no version yet).
    /// Returns the new version, or `None` when someone saved in between.
    async fn save_mapping(
        &self,
        settings: &SyncSettings,
        saved_by: &str,
        expected: Option<i64>,
    ) -> Result<Option<i64>, StoreError>;
    async fn add_audit(&self, entry: &AuditEntry) -> Result<(), StoreError>;
    /// Newest first.
    async fn audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError>;
    async fn heartbeat(&self, seen: &WorkerSeen) -> Result<(), StoreError>;
    /// Workers seen at or after `since`, newest first.
    async fn workers_seen(&self, since: DateTime<Utc>) -> Result<Vec<WorkerSeen>, StoreError>;
    /// Outcomes recorded at or after `since`, by class and code.
    async fn outcome_counts(&self, since: DateTime<Utc>) -> Result<Vec<OutcomeCount>, StoreError>;
    /// The newest failed outcomes, newest first.
    async fn recent_failures(&self, limit: u32) -> Result<Vec<EventRecord>, StoreError>;
    /// The newest outcome of any class.
    async fn recent_outcome(&self) -> Result<Option<EventRecord>, StoreError>;
    /// Learners by most recent change, newest first.
    async fn recent_learners(&self, limit: u32) -> Result<Vec<super::LearnerState>, StoreError>;
}

//! The one apply path (docs/rules.md "Flow", R1–R12): [`Engine::apply`] takes a batch of
//! [`Item`]s — webhook events and learner snapshots — and settles each with its own
//! outcome. Every learner of a batch is applied under that learner's lease (taken for the
//! whole batch in one store round trip), so no two workers (tasks or processes) apply the
//! same learner at once; a learner leased elsewhere gives a transient result for its items
//! only. The mapping in force is read once per batch from the [`SettingsHandle`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use tracing::{debug, warn};

use crate::config::SyncSettings;
use crate::model::{EntityKind, Envelope};
use crate::salesforce::SalesforceApi;
use crate::skillsync::{SkillSyncApi, SsError};
use crate::store::{Commit, EventRecord, Store};

use super::item::{Item, SnapshotItem};
use super::outcome::{Code, Outcome, OutcomeClass, Permanent, StepError, SyncError};
use super::rules;
use super::settings::SettingsHandle;
use super::state::{EntityVersion, LearnerState};

/// R3 port: is a department in the scope of the mapping `settings`?
#[async_trait]
pub trait ScopePort: Send + Sync {
    async fn in_scope(
        &self,
        settings: &SyncSettings,
        department_id: Option<&str>,
    ) -> Result<bool, SsError>;
}

#[async_trait]
impl ScopePort for crate::skillsync::scope::ScopeResolver {
    async fn in_scope(
        &self,
        settings: &SyncSettings,
        department_id: Option<&str>,
    ) -> Result<bool, SsError> {
        self.in_scope_for(
            &settings.source_department_id,
            settings.scope,
            department_id,
        )
        .await
    }
}

/// What a successful step did.
pub(super) struct Applied {
    pub class: OutcomeClass,
    pub code: Code,
    pub detail: String,
    pub learner: Option<LearnerState>,
}

impl Applied {
    pub fn done(code: Code, detail: impl Into<String>, learner: Option<LearnerState>) -> Self {
        Self {
            class: OutcomeClass::Applied,
            code,
            detail: detail.into(),
            learner,
        }
    }
    pub fn skipped(code: Code, detail: impl Into<String>, learner: Option<LearnerState>) -> Self {
        Self {
            class: OutcomeClass::Skipped,
            code,
            detail: detail.into(),
            learner,
        }
    }
}

/// Cache of Account Name → Id (R4), positive results only, with a TTL. Negative and
/// ambiguous answers are never cached so a fix in Salesforce is seen at once (DLQ replay).
pub(super) struct AccountCache {
    ttl: Duration,
    map: Mutex<HashMap<String, (String, Instant)>>,
}

impl AccountCache {
    pub fn get(&self, name: &str) -> Option<String> {
        let map = self.map.lock().unwrap();
        map.get(&name.to_lowercase())
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(id, _)| id.clone())
    }
    pub fn put(&self, name: &str, id: &str) {
        self.map
            .lock()
            .unwrap()
            .insert(name.to_lowercase(), (id.to_string(), Instant::now()));
    }
    pub fn invalidate_id(&self, id: &str) {
        self.map.lock().unwrap().retain(|_, (v, _)| v != id);
    }
    pub fn has_id(&self, id: &str) -> bool {
        self.map.lock().unwrap().values().any(|(v, _)| v == id)
    }
}

pub struct Engine {
    pub(super) settings: SettingsHandle,
    pub(super) sf: Arc<dyn SalesforceApi>,
    pub(super) ss: Arc<dyn SkillSyncApi>,
    pub(super) scope: Arc<dyn ScopePort>,
    pub(super) store: Arc<dyn Store>,
    pub(super) accounts: AccountCache,
    lease_ttl: Duration,
    lease_wait: Duration,
}

/// One learner's share of a batch: its items' positions, in the order they are applied.
struct LearnerWork {
    learner_id: String,
    items: Vec<usize>,
}

impl Engine {
    pub fn new(
        settings: SettingsHandle,
        sf: Arc<dyn SalesforceApi>,
        ss: Arc<dyn SkillSyncApi>,
        scope: Arc<dyn ScopePort>,
        store: Arc<dyn Store>,
        account_cache_ttl: Duration,
        lease_ttl: Duration,
    ) -> Self {
        Self {
            settings,
            sf,
            ss,
            scope,
            store,
            accounts: AccountCache {
                ttl: account_cache_ttl,
                map: Mutex::new(HashMap::new()),
            },
            lease_ttl,
            lease_wait: Duration::from_secs(5),
        }
    }

    /// How long [`Engine::apply`] waits for a learner leased by another worker before
    /// giving its items a transient `learner_busy` result (default 5 s).
    pub fn set_lease_wait(&mut self, wait: Duration) {
        self.lease_wait = wait;
    }

    /// The mapping in force now.
    pub fn settings(&self) -> Arc<SyncSettings> {
        self.settings.current()
    }

    pub fn settings_handle(&self) -> &SettingsHandle {
        &self.settings
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Apply one event (a batch of one). `Ok` means an outcome was committed to the store
    /// (applied, skipped or failed for good); `Err` means nothing was committed and the
    /// event must be retried.
    pub async fn handle(&self, env: &Envelope) -> Result<Outcome, SyncError> {
        self.apply(vec![Item::Event(env.clone())])
            .await
            .pop()
            .expect("one result per item")
    }

    /// One result per item, in input order. Takes the per-learner leases for all learners
    /// of the batch in one store round trip; a learner leased elsewhere gives a transient
    /// result for its items only. Within a learner, events are applied in
    /// (`occurred_at`, id) order (R12), snapshots after them.
    pub async fn apply(&self, items: Vec<Item>) -> Vec<Result<Outcome, SyncError>> {
        let settings = self.settings.current();
        let mut results: Vec<Option<Result<Outcome, SyncError>>> = vec![None; items.len()];
        // Group by learner, in order of first appearance.
        let mut work: Vec<LearnerWork> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let Some(lid) = item.learner_id() else {
                let ty = match item {
                    Item::Event(e) => e.event_type.as_str(),
                    Item::Snapshot(_) => "snapshot",
                };
                results[i] = Some(Err(SyncError::BadEvent(format!(
                    "{ty} event without its data"
                ))));
                continue;
            };
            let w = *index.entry(lid.to_string()).or_insert_with(|| {
                work.push(LearnerWork {
                    learner_id: lid.to_string(),
                    items: Vec::new(),
                });
                work.len() - 1
            });
            work[w].items.push(i);
        }
        for w in &mut work {
            // R12: events in (occurred_at, id) order; snapshots ("now") after them.
            w.items
                .sort_by(|a, b| order_key(&items[*a]).cmp(&order_key(&items[*b])));
        }

        let holder = uuid::Uuid::new_v4().to_string();
        let mut pending: Vec<&LearnerWork> = work.iter().collect();
        let started = Instant::now();
        let mut wait = Duration::from_millis(5);
        loop {
            let keys: Vec<String> = pending.iter().map(|w| lease_key(&w.learner_id)).collect();
            let granted: HashSet<String> =
                match self.store.try_leases(&keys, &holder, self.lease_ttl).await {
                    Ok(g) => g.into_iter().collect(),
                    Err(e) => {
                        let err = SyncError::from(e);
                        for w in &pending {
                            for &i in &w.items {
                                results[i] = Some(Err(err.clone()));
                            }
                        }
                        break;
                    }
                };
            let (mine, busy): (Vec<&LearnerWork>, Vec<&LearnerWork>) = pending
                .into_iter()
                .partition(|w| granted.contains(&lease_key(&w.learner_id)));
            if !mine.is_empty() {
                let keys: Vec<String> = mine.iter().map(|w| lease_key(&w.learner_id)).collect();
                let renew = self.spawn_renewal(keys.clone(), holder.clone());
                for w in &mine {
                    for (i, r) in self.apply_learner(&settings, &items, w).await {
                        results[i] = Some(r);
                    }
                }
                renew.abort();
                if let Err(e) = self.store.release_leases(&keys, &holder).await {
                    // The leases expire by themselves; the outcomes are already committed.
                    warn!(error = %e, "could not release leases");
                }
            }
            pending = busy;
            if pending.is_empty() {
                break;
            }
            if started.elapsed() > self.lease_wait {
                for w in &pending {
                    for &i in &w.items {
                        results[i] = Some(Err(SyncError::transient(
                            "learner_busy",
                            format!(
                                "learner {} is being applied by another worker",
                                w.learner_id
                            ),
                        )));
                    }
                }
                break;
            }
            let jitter = rand::random::<u64>() % (wait.as_millis() as u64 + 1);
            tokio::time::sleep(wait + Duration::from_millis(jitter)).await;
            wait = (wait * 2).min(Duration::from_millis(200));
        }
        results
            .into_iter()
            .map(|r| r.expect("every item settled"))
            .collect()
    }

    /// Keep the leases while the batch is applied, however slow Salesforce is: renew them
    /// every third of their TTL (a crashed holder still loses them after one TTL).
    fn spawn_renewal(&self, keys: Vec<String>, holder: String) -> tokio::task::JoinHandle<()> {
        let (store, ttl) = (self.store.clone(), self.lease_ttl);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(ttl / 3).await;
                match store.try_leases(&keys, &holder, ttl).await {
                    Ok(g) if g.len() == keys.len() => {}
                    Ok(_) => warn!("a learner lease was lost while applying a batch"),
                    Err(e) => warn!(error = %e, "could not renew leases"),
                }
            }
        })
    }

    /// Apply one learner's items in order, under its lease.
    async fn apply_learner(
        &self,
        settings: &SyncSettings,
        items: &[Item],
        w: &LearnerWork,
    ) -> Vec<(usize, Result<Outcome, SyncError>)> {
        let mut out = Vec::new();
        let mut failed: Option<SyncError> = None;
        for &i in &w.items {
            // After a transient failure the learner's later items wait too (their order matters).
            if let Some(e) = &failed {
                out.push((i, Err(e.clone())));
                continue;
            }
            let r = match &items[i] {
                Item::Event(env) => self.event(settings, env, &w.learner_id).await,
                Item::Snapshot(s) => self.snapshot(settings, s).await,
            };
            if let Err(e) = &r {
                if e.is_transient() {
                    failed = Some(e.clone());
                }
            }
            out.push((i, r));
        }
        out
    }

    async fn event(
        &self,
        s: &SyncSettings,
        env: &Envelope,
        learner_id: &str,
    ) -> Result<Outcome, SyncError> {
        let (kind, entity_id) = env
            .entity()
            .ok_or_else(|| SyncError::BadEvent("event without an entity".into()))?;
        let version = EntityVersion {
            occurred_at: env.occurred_at,
            event_id: env.id.clone(),
        };
        let record = |a: &Applied| EventRecord {
            event_id: env.id.clone(),
            event_type: env.event_type.as_str().to_string(),
            learner_id: learner_id.to_string(),
            occurred_at: env.occurred_at,
            class: a.class,
            code: a.code.as_str().to_string(),
            detail: a.detail.clone(),
            recorded_at: Utc::now(),
        };
        // R12: an event id already applied is skipped.
        if self.store.is_processed(&env.id).await? {
            let a = Applied::skipped(Code::Duplicate, "event id already applied", None);
            return self.commit(record(&a), a, None, true).await;
        }
        // R1: toggle off → recorded as skipped, nothing written.
        if !s.enabled {
            let a = Applied::skipped(Code::SyncDisabled, "Inbound Learner Sync is off (R1)", None);
            return self.commit(record(&a), a, None, true).await;
        }
        // R12: older than the last applied event of the same entity → stale.
        let last = self.store.entity_version(kind, entity_id).await?;
        if rules::is_stale(last.as_ref(), env.occurred_at, &env.id) {
            let last = last.expect("stale implies a version");
            let a = Applied::skipped(
                Code::Stale,
                format!("older than {} at {}", last.event_id, last.occurred_at),
                None,
            );
            return self.commit(record(&a), a, None, true).await;
        }
        let state = self.store.learner(learner_id).await?;
        let step = match kind {
            EntityKind::Learner => {
                let learner = env
                    .data
                    .learner
                    .as_ref()
                    .expect("schema requires data.learner");
                let active = rules::is_active(env.event_type, learner);
                self.learner_sync(s, learner, active, state.clone(), None)
                    .await
            }
            EntityKind::Enrollment | EntityKind::Certification => {
                self.child_event(s, env, learner_id, state.clone()).await
            }
        };
        let entity = Some((kind, entity_id.to_string(), version));
        match step {
            Ok(a) => self.commit(record(&a), a, entity, true).await,
            Err(StepError::Transient(e)) => Err(e),
            Err(StepError::Permanent(p)) => {
                let a = failed(p, state, learner_id);
                self.commit(record(&a), a, None, false).await
            }
        }
    }

    /// A learner snapshot (backfill, reconcile, console): see [`SnapshotItem`].
    async fn snapshot(&self, s: &SyncSettings, item: &SnapshotItem) -> Result<Outcome, SyncError> {
        let learner = &item.learner;
        let record = |a: &Applied| EventRecord {
            event_id: format!(
                "{}:{}:{}",
                item.origin.as_str(),
                learner.id,
                uuid::Uuid::now_v7()
            ),
            event_type: item.origin.event_type(),
            learner_id: learner.id.clone(),
            occurred_at: learner.updated_at,
            class: a.class,
            code: a.code.as_str().to_string(),
            detail: format!("[{}] {}", item.origin.describe(), a.detail),
            recorded_at: Utc::now(),
        };
        if !s.enabled {
            let a = Applied::skipped(Code::SyncDisabled, "Inbound Learner Sync is off (R1)", None);
            return self.commit(record(&a), a, None, false).await;
        }
        let state = self.store.learner(&learner.id).await?;
        let active = learner.status == crate::model::LearnerStatus::Active;
        match self
            .learner_sync(s, learner, active, state.clone(), Some(item))
            .await
        {
            Ok(a) => {
                // Older learner events stay stale after the snapshot (R12).
                let entity = Some((
                    EntityKind::Learner,
                    learner.id.clone(),
                    EntityVersion {
                        occurred_at: learner.updated_at,
                        event_id: "~snapshot".into(),
                    },
                ));
                self.commit(record(&a), a, entity, false).await
            }
            Err(StepError::Transient(e)) => Err(e),
            Err(StepError::Permanent(p)) => {
                let a = failed(p, state, &learner.id);
                self.commit(record(&a), a, None, false).await
            }
        }
    }

    pub(super) async fn commit(
        &self,
        record: EventRecord,
        a: Applied,
        entity: Option<(EntityKind, String, EntityVersion)>,
        mark_processed: bool,
    ) -> Result<Outcome, SyncError> {
        let now = Utc::now();
        let learner = a.learner.map(|mut s| {
            s.updated_at = now;
            if a.class != OutcomeClass::Failed {
                s.last_outcome = Some(format!("{}: {}", a.class.as_str(), a.code));
                s.last_error = None;
            }
            s
        });
        let learner_id = record.learner_id.clone();
        let commit = Commit {
            mark_processed: mark_processed && a.class != OutcomeClass::Failed,
            entity: if a.class == OutcomeClass::Failed {
                None
            } else {
                entity
            },
            learner,
            record,
        };
        self.store.commit(&commit).await?;
        debug!(event_id = %commit.record.event_id, learner_id, outcome = a.class.as_str(), code = %a.code, "item settled");
        Ok(Outcome {
            class: a.class,
            code: a.code,
            detail: a.detail,
            learner_id,
        })
    }
}

/// A permanent failure: recorded as failed (not marked processed, so a DLQ replay applies it).
fn failed(p: Permanent, state: Option<LearnerState>, learner_id: &str) -> Applied {
    let learner = Some(LearnerState {
        last_outcome: Some(format!("failed: {}", p.code)),
        last_error: Some(p.detail.clone()),
        updated_at: Utc::now(),
        ..state.unwrap_or_else(|| LearnerState::blank(learner_id))
    });
    Applied {
        class: OutcomeClass::Failed,
        code: p.code,
        detail: p.detail,
        learner,
    }
}

fn lease_key(learner_id: &str) -> String {
    format!("learner:{learner_id}")
}

/// Order of a learner's items: events by (occurred_at, id) (R12), then snapshots.
fn order_key(item: &Item) -> (u8, i64, String) {
    match item {
        Item::Event(e) => (0, e.occurred_at.timestamp_micros(), e.id.clone()),
        Item::Snapshot(_) => (1, 0, String::new()),
    }
}

/// Outcome counts of a batch (logs, summaries).
pub fn tally(results: &[Result<Outcome, SyncError>]) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for r in results {
        let k = match r {
            Ok(o) => format!("{}:{}", o.class.as_str(), o.code),
            Err(e) => format!("retry:{}", e.kind()),
        };
        *m.entry(k).or_insert(0) += 1;
    }
    m
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;

//! The per-learner sync engine: applies one event (R1–R12) using the decisions of
//! [`super::rules`], Salesforce ([`SalesforceApi`]), SkillSync ([`SkillSyncApi`]), the
//! scope ([`ScopePort`]) and the [`Store`]. Every event of a learner runs under that
//! learner's lease, so no two workers (tasks or processes) apply the same learner at once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use serde_json::{json, Value};
use tracing::{debug, info, warn};

use crate::config::SyncSettings;
use crate::model::{EntityKind, Envelope, EventType, Learner};
use crate::salesforce::{soql, Record, SalesforceApi, SfError};
use crate::skillsync::{SkillSyncApi, SsError};
use crate::store::{
    Commit, EntityVersion, EventRecord, LearnerState, LinkState, OutcomeClass, Store, StoreError,
};

use super::rules::{self, AccountTarget, LearnerPlan, MatchDecision, Permanent};

/// R3 port: is a department in the configured scope?
#[async_trait]
pub trait ScopePort: Send + Sync {
    async fn in_scope(&self, department_id: Option<&str>) -> Result<bool, SsError>;
}

/// The result of handling one event; recorded in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub class: OutcomeClass,
    /// `created`, `linked`, `updated`, `unlinked`, `duplicate`, `stale`, `out_of_scope`,
    /// `sync_disabled`, …, or the failure kind (`account_not_found`, `contact_ambiguous`, …).
    pub code: String,
    pub detail: String,
    pub learner_id: String,
}

/// A failure worth retrying (R13): nothing was recorded, the event must come again.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SyncError {
    #[error("transient {kind} failure: {message}")]
    Transient { kind: &'static str, message: String },
    /// The event body is not a usable envelope (schema drift): permanent.
    #[error("unusable event: {0}")]
    BadEvent(String),
}

impl SyncError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SyncError::Transient { .. })
    }
    pub fn kind(&self) -> &'static str {
        match self {
            SyncError::Transient { kind, .. } => kind,
            SyncError::BadEvent(_) => "bad_event",
        }
    }
}

impl From<StoreError> for SyncError {
    fn from(e: StoreError) -> Self {
        match e {
            // A value the store refuses (NUL, too long): permanent, never "store down".
            StoreError::Data(_) => SyncError::BadEvent(e.to_string()),
            _ => SyncError::Transient {
                kind: "store",
                message: e.to_string(),
            },
        }
    }
}

/// Internal: a step either fails for good (recorded, then DLQ) or transiently (retry).
enum StepError {
    Permanent(Permanent),
    Transient(SyncError),
}

impl From<Permanent> for StepError {
    fn from(p: Permanent) -> Self {
        StepError::Permanent(p)
    }
}

impl From<SfError> for StepError {
    fn from(e: SfError) -> Self {
        match e {
            SfError::Transient { .. } => StepError::Transient(SyncError::Transient {
                kind: "salesforce",
                message: e.to_string(),
            }),
            SfError::MultipleMatches { .. } => {
                StepError::Permanent(Permanent::new("contact_ambiguous", e.to_string()))
            }
            SfError::NotFound => StepError::Permanent(Permanent::new("not_found", e.to_string())),
            SfError::Permanent { .. } => {
                StepError::Permanent(Permanent::new("salesforce_rejected", e.to_string()))
            }
        }
    }
}

impl From<SsError> for StepError {
    fn from(e: SsError) -> Self {
        if e.is_transient() {
            StepError::Transient(SyncError::Transient {
                kind: "skillsync",
                message: e.to_string(),
            })
        } else {
            StepError::Permanent(Permanent::new("skillsync_error", e.to_string()))
        }
    }
}

impl From<StoreError> for StepError {
    fn from(e: StoreError) -> Self {
        StepError::Transient(e.into())
    }
}

type StepResult<T> = Result<T, StepError>;

/// What a successful step did.
struct Applied {
    class: OutcomeClass,
    code: &'static str,
    detail: String,
    learner: Option<LearnerState>,
}

impl Applied {
    fn done(code: &'static str, detail: impl Into<String>, learner: Option<LearnerState>) -> Self {
        Self {
            class: OutcomeClass::Applied,
            code,
            detail: detail.into(),
            learner,
        }
    }
    fn skipped(
        code: &'static str,
        detail: impl Into<String>,
        learner: Option<LearnerState>,
    ) -> Self {
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
struct AccountCache {
    ttl: Duration,
    map: Mutex<HashMap<String, (String, Instant)>>,
}

impl AccountCache {
    fn get(&self, name: &str) -> Option<String> {
        let map = self.map.lock().unwrap();
        map.get(&name.to_lowercase())
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(id, _)| id.clone())
    }
    fn put(&self, name: &str, id: &str) {
        self.map
            .lock()
            .unwrap()
            .insert(name.to_lowercase(), (id.to_string(), Instant::now()));
    }
    fn invalidate_id(&self, id: &str) {
        self.map.lock().unwrap().retain(|_, (v, _)| v != id);
    }
}

pub struct Engine {
    settings: SyncSettings,
    sf: Arc<dyn SalesforceApi>,
    ss: Arc<dyn SkillSyncApi>,
    scope: Arc<dyn ScopePort>,
    store: Arc<dyn Store>,
    accounts: AccountCache,
    lease_ttl: Duration,
    lease_wait: Duration,
}

impl Engine {
    pub fn new(
        settings: SyncSettings,
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

    pub fn settings(&self) -> &SyncSettings {
        &self.settings
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Apply one event. `Ok` means an outcome was committed to the store (applied, skipped
    /// or failed for good); `Err` means nothing was committed and the event must be retried.
    pub async fn handle(&self, env: &Envelope) -> Result<Outcome, SyncError> {
        let learner_id = env
            .learner_id()
            .ok_or_else(|| {
                SyncError::BadEvent(format!("{} event without its data", env.event_type))
            })?
            .to_string();
        let key = format!("learner:{learner_id}");
        let holder = uuid::Uuid::new_v4().to_string();
        self.acquire(&key, &holder).await?;
        // Keep the lease while the event is applied, however slow Salesforce is: renew it
        // every third of its TTL (a crashed holder still loses it after one TTL).
        let renew = {
            let (store, key, holder, ttl) = (
                self.store.clone(),
                key.clone(),
                holder.clone(),
                self.lease_ttl,
            );
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ttl / 3).await;
                    match store.try_lease(&key, &holder, ttl).await {
                        Ok(true) => {}
                        Ok(false) => {
                            warn!(key, "lease lost while applying an event");
                            return;
                        }
                        Err(e) => warn!(error = %e, key, "could not renew lease"),
                    }
                }
            })
        };
        let result = self.handle_leased(env, &learner_id).await;
        renew.abort();
        if let Err(e) = self.store.release_lease(&key, &holder).await {
            // The lease expires by itself; the outcome is already committed.
            warn!(error = %e, learner_id, "could not release lease");
        }
        result
    }

    async fn acquire(&self, key: &str, holder: &str) -> Result<(), SyncError> {
        let started = Instant::now();
        let mut wait = Duration::from_millis(5);
        loop {
            if self.store.try_lease(key, holder, self.lease_ttl).await? {
                return Ok(());
            }
            if started.elapsed() > self.lease_wait {
                return Err(SyncError::Transient {
                    kind: "learner_busy",
                    message: format!("{key} is being applied by another worker"),
                });
            }
            let jitter = rand::random::<u64>() % (wait.as_millis() as u64 + 1);
            tokio::time::sleep(wait + Duration::from_millis(jitter)).await;
            wait = (wait * 2).min(Duration::from_millis(200));
        }
    }

    async fn handle_leased(&self, env: &Envelope, learner_id: &str) -> Result<Outcome, SyncError> {
        let (kind, entity_id) = env
            .entity()
            .ok_or_else(|| SyncError::BadEvent("event without an entity".into()))?;
        let version = EntityVersion {
            occurred_at: env.occurred_at,
            event_id: env.id.clone(),
        };
        // R12: an event id already applied is skipped.
        if self.store.is_processed(&env.id).await? {
            return self
                .commit(
                    env,
                    learner_id,
                    None,
                    Applied::skipped("duplicate", "event id already applied", None),
                    true,
                )
                .await;
        }
        // R1: toggle off → recorded as skipped, nothing written.
        if !self.settings.enabled {
            let a = Applied::skipped("sync_disabled", "Inbound Learner Sync is off (R1)", None);
            return self.commit(env, learner_id, None, a, true).await;
        }
        // R12: older than the last applied event of the same entity → stale.
        let last = self.store.entity_version(kind, entity_id).await?;
        if rules::is_stale(last.as_ref(), env.occurred_at, &env.id) {
            let last = last.expect("stale implies a version");
            let a = Applied::skipped(
                "stale",
                format!("older than {} at {}", last.event_id, last.occurred_at),
                None,
            );
            return self.commit(env, learner_id, None, a, true).await;
        }
        let state = self.store.learner(learner_id).await?;
        let step = match kind {
            EntityKind::Learner => {
                let learner = env
                    .data
                    .learner
                    .as_ref()
                    .expect("schema requires data.learner");
                self.learner_event(env.event_type, learner, state.clone())
                    .await
            }
            EntityKind::Enrollment | EntityKind::Certification => {
                self.child_event(env, learner_id, state.clone()).await
            }
        };
        let entity = Some((kind, entity_id.to_string(), version));
        match step {
            Ok(applied) => self.commit(env, learner_id, entity, applied, true).await,
            Err(StepError::Transient(e)) => Err(e),
            Err(StepError::Permanent(p)) => {
                // Recorded as failed (not marked processed, so a DLQ replay applies it).
                let learner = Some(LearnerState {
                    last_outcome: Some(format!("failed: {}", p.code)),
                    last_error: Some(p.detail.clone()),
                    updated_at: Utc::now(),
                    ..state.unwrap_or_else(|| blank_state(learner_id))
                });
                let a = Applied {
                    class: OutcomeClass::Failed,
                    code: p.code,
                    detail: p.detail,
                    learner,
                };
                self.commit(env, learner_id, None, a, false).await
            }
        }
    }

    async fn commit(
        &self,
        env: &Envelope,
        learner_id: &str,
        entity: Option<(EntityKind, String, EntityVersion)>,
        a: Applied,
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
        let commit = Commit {
            record: EventRecord {
                event_id: env.id.clone(),
                event_type: env.event_type.as_str().to_string(),
                learner_id: learner_id.to_string(),
                occurred_at: env.occurred_at,
                class: a.class,
                code: a.code.to_string(),
                detail: a.detail.clone(),
                recorded_at: now,
            },
            mark_processed: mark_processed && a.class != OutcomeClass::Failed,
            entity: if a.class == OutcomeClass::Failed {
                None
            } else {
                entity
            },
            learner,
        };
        self.store.commit(&commit).await?;
        debug!(event_id = %env.id, learner_id, outcome = a.class.as_str(), code = a.code, "event settled");
        Ok(Outcome {
            class: a.class,
            code: a.code.to_string(),
            detail: a.detail,
            learner_id: learner_id.to_string(),
        })
    }

    // ---------------------------------------------------------------- learners

    async fn learner_event(
        &self,
        event: EventType,
        learner: &Learner,
        state: Option<LearnerState>,
    ) -> StepResult<Applied> {
        let active = rules::is_active(event, learner);
        let in_scope = if active {
            self.scope
                .in_scope(learner.department_id.as_deref())
                .await?
        } else {
            true // irrelevant: inactive learners are unlinked wherever they are
        };
        let plan = rules::plan_learner(active, in_scope, state.as_ref());
        self.execute_plan(plan, learner, state).await
    }

    async fn execute_plan(
        &self,
        plan: LearnerPlan,
        learner: &Learner,
        state: Option<LearnerState>,
    ) -> StepResult<Applied> {
        match plan {
            LearnerPlan::Skip { code, new_link } => {
                let learner_state = match (new_link, state) {
                    (Some(link), Some(s)) => Some(LearnerState { link, ..s }),
                    (_, s) => s,
                };
                let why = match code {
                    "out_of_scope" => format!(
                        "department {} is outside the configured scope (R3)",
                        learner.department_id.as_deref().unwrap_or("(none)")
                    ),
                    "inactive_not_synced" => "inactive learner that was never synced".to_string(),
                    _ => "learner is already unlinked (R9)".to_string(),
                };
                Ok(Applied::skipped(code, why, learner_state))
            }
            LearnerPlan::Unlink { contact_id, to } => {
                self.unlink(&contact_id).await?;
                let s = state.unwrap_or_else(|| blank_state(&learner.id));
                let why = if to == LinkState::Deactivated {
                    "learner deactivated: Contact kept, link removed (R9)"
                } else {
                    "learner left the scope: Contact kept, link removed (R3)"
                };
                Ok(Applied::done(
                    "unlinked",
                    format!("{why}; Contact {contact_id} remembered"),
                    Some(LearnerState {
                        link: to,
                        contact_id: Some(contact_id),
                        ..s
                    }),
                ))
            }
            LearnerPlan::Sync {
                relink,
                resync_children,
            } => {
                let (code, detail, new_state) = self.sync_learner(learner, state, relink).await?;
                let mut detail = detail;
                if resync_children {
                    let contact = new_state
                        .contact_id
                        .clone()
                        .expect("synced learner has a Contact");
                    let n = self.resync_children(&learner.id, &contact).await?;
                    detail.push_str(&format!("; re-synced {n} enrollments/certifications (R10)"));
                }
                Ok(Applied::done(code, detail, Some(new_state)))
            }
        }
    }

    /// R9: clear the link on the Contact (the Contact stays). A Contact deleted meanwhile is fine.
    async fn unlink(&self, contact_id: &str) -> StepResult<()> {
        let mut r = Record::new();
        r.insert(self.settings.link_field.clone(), Value::Null);
        match self.sf.update("Contact", contact_id, &r).await {
            Ok(()) | Err(SfError::NotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// R4–R8, R10: make the learner's Contact exist, linked, in the right Account, with
    /// the mapped fields. Returns (code, detail, new state).
    async fn sync_learner(
        &self,
        learner: &Learner,
        state: Option<LearnerState>,
        relink: Option<String>,
    ) -> StepResult<(&'static str, String, LearnerState)> {
        let account_id = self.resolve_account(learner).await?;
        let mut fields = rules::contact_fields(&self.settings, learner, &account_id);
        let previous_account = state.as_ref().and_then(|s| s.account_id.clone());
        let was_linked = state.as_ref().is_some_and(|s| s.link == LinkState::Linked);
        let moved = previous_account.as_deref().is_some_and(|a| a != account_id);
        let link_field = self.settings.link_field.clone();
        let new_state = |contact: String| LearnerState {
            learner_id: learner.id.clone(),
            contact_id: Some(contact),
            link: LinkState::Linked,
            account_id: Some(account_id.clone()),
            last_outcome: None,
            last_error: None,
            updated_at: Utc::now(),
        };

        // R8: a linked learner is found by its link, not re-matched (one call: update by Id).
        if let Some(contact) = relink {
            if !was_linked {
                // R10: the remembered Contact may have been taken by another learner meanwhile.
                match self.sf.get("Contact", &contact, &[&link_field]).await {
                    Ok(rec) => {
                        if let Some(other) = rec.get(&link_field).and_then(Value::as_str) {
                            if !other.is_empty() && !other.eq_ignore_ascii_case(&learner.id) {
                                return Err(Permanent::new(
                                    "contact_conflict",
                                    format!("remembered Contact {contact} is now linked to learner {other}"),
                                )
                                .into());
                            }
                        }
                    }
                    Err(SfError::NotFound) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            fields.insert(link_field.clone(), json!(learner.id));
            match self.update_contact(&contact, &fields, &account_id).await {
                Ok(()) => {
                    let (code, what) = match (was_linked, moved) {
                        (false, _) => ("relinked", "re-linked to remembered Contact (R10)"),
                        (true, true) => ("moved", "Contact updated and moved to its Account (R7)"),
                        (true, false) => ("updated", "Contact updated"),
                    };
                    return Ok((code, format!("{what} {contact}"), new_state(contact)));
                }
                Err(StepError::Permanent(p)) if p.code == "not_found" => {
                    info!(learner_id = %learner.id, contact, "linked Contact was deleted in Salesforce; matching again (R10)");
                    fields.remove(&link_field);
                }
                Err(e) => return Err(e),
            }
        }

        // R5: match on the configured field; the same query finds a Contact already carrying
        // our link (crash between the Salesforce write and the store commit).
        let match_field = &self.settings.match_field;
        let mut select_fields = vec!["Id", link_field.as_str()];
        if match_field != &link_field && match_field != "Id" {
            select_fields.push(match_field.as_str());
        }
        let query = format!(
            "SELECT {} FROM Contact WHERE {} OR {} LIMIT 10",
            select_fields.join(", "),
            soql::eq(match_field, &learner.username),
            soql::eq(&link_field, &learner.id),
        );
        let rows: Vec<rules::ContactRow> = self
            .sf
            .query(&query)
            .await?
            .iter()
            .filter_map(|r| rules::ContactRow::from_record(r, &link_field, match_field))
            .collect();
        match rules::decide_match(&learner.id, &learner.username, &rows)? {
            MatchDecision::Linked(contact) | MatchDecision::Link(contact)
                if rows.iter().any(|r| r.id == contact) =>
            {
                let already = rows.iter().any(|r| {
                    r.id == contact
                        && r.link
                            .as_deref()
                            .is_some_and(|l| l.eq_ignore_ascii_case(&learner.id))
                });
                fields.insert(link_field.clone(), json!(learner.id));
                self.update_contact(&contact, &fields, &account_id).await?;
                let (code, what) = if already {
                    ("updated", "Contact found by its link and updated (R8)")
                } else {
                    (
                        "linked",
                        "linked to the existing Contact matching the username (R5)",
                    )
                };
                Ok((code, format!("{what}: {contact}"), new_state(contact)))
            }
            MatchDecision::Linked(_) | MatchDecision::Link(_) => {
                unreachable!("decision comes from rows")
            }
            MatchDecision::Create => {
                // docs/rules.md "Salesforce" crash safety: create through the external-id upsert, so a retry
                // after a crash updates the same Contact instead of creating a second one.
                let res = self
                    .with_account_retry(&account_id, || async {
                        self.sf
                            .upsert("Contact", &link_field, &learner.id, &fields)
                            .await
                    })
                    .await?;
                let code = if res.created { "created" } else { "updated" };
                let what = if res.created {
                    "no Contact matched: created Contact (R5)"
                } else {
                    "Contact found by its link and updated (R8)"
                };
                Ok((
                    code,
                    format!("{what} {} under Account {account_id}", res.id),
                    new_state(res.id),
                ))
            }
        }
    }

    async fn update_contact(&self, id: &str, fields: &Record, account_id: &str) -> StepResult<()> {
        self.with_account_retry(account_id, || async {
            self.sf.update("Contact", id, fields).await
        })
        .await
    }

    /// A cached Account that was deleted or merged makes the write fail with a reference
    /// error: drop it from the cache and let the event retry (it will look the name up again).
    async fn with_account_retry<T, F, Fut>(&self, account_id: &str, f: F) -> StepResult<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, SfError>>,
    {
        match f().await {
            Ok(v) => Ok(v),
            Err(e @ SfError::Permanent { .. })
                if matches!(
                    e.code(),
                    "INVALID_CROSS_REFERENCE_KEY"
                        | "ENTITY_IS_DELETED"
                        | "FIELD_INTEGRITY_EXCEPTION"
                ) && self.accounts.get_by_id(account_id) =>
            {
                self.accounts.invalidate_id(account_id);
                Err(StepError::Transient(SyncError::Transient {
                    kind: "salesforce",
                    message: format!(
                        "cached Account {account_id} was rejected ({}); looking it up again",
                        e.code()
                    ),
                }))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// R4: the destination Account. Never creates one.
    async fn resolve_account(&self, learner: &Learner) -> StepResult<String> {
        match rules::account_target(&self.settings, learner)? {
            AccountTarget::Id(id) => Ok(id),
            AccountTarget::Name(name) => {
                if let Some(id) = self.accounts.get(&name) {
                    return Ok(id);
                }
                let q = format!(
                    "SELECT Id FROM Account WHERE {} LIMIT 2",
                    soql::eq("Name", &name)
                );
                let ids: Vec<String> = self
                    .sf
                    .query(&q)
                    .await?
                    .iter()
                    .filter_map(|r| r.get("Id").and_then(Value::as_str).map(String::from))
                    .collect();
                let id = rules::pick_account(&name, &ids)?;
                self.accounts.put(&name, &id);
                Ok(id)
            }
        }
    }

    // ------------------------------------------------- enrollments & certifications

    /// R11: upsert (or delete) a child record of a linked learner, syncing the learner from
    /// its SkillSync snapshot first when it was never synced.
    async fn child_event(
        &self,
        env: &Envelope,
        learner_id: &str,
        state: Option<LearnerState>,
    ) -> StepResult<Applied> {
        let mut prefix = String::new();
        let mut state = state;
        if state.is_none() {
            let Some(snapshot) = self.ss.learner(learner_id).await? else {
                return Ok(Applied::skipped(
                    "learner_unknown",
                    format!("learner {learner_id} does not exist in SkillSync"),
                    None,
                ));
            };
            let applied = self
                .learner_event(EventType::LearnerUpdated, &snapshot, None)
                .await?;
            prefix = format!(
                "learner first synced from its snapshot ({}: {}); ",
                applied.code, applied.detail
            );
            if let Some(s) = &applied.learner {
                // Record the snapshot's version so older learner events stay stale (R12).
                self.store
                    .commit(&Commit {
                        record: EventRecord {
                            event_id: format!("snapshot:{}:{}", learner_id, env.id),
                            event_type: "learner.snapshot".into(),
                            learner_id: learner_id.into(),
                            occurred_at: snapshot.updated_at,
                            class: applied.class,
                            code: applied.code.into(),
                            detail: applied.detail.clone(),
                            recorded_at: Utc::now(),
                        },
                        mark_processed: false,
                        entity: Some((
                            EntityKind::Learner,
                            learner_id.to_string(),
                            EntityVersion {
                                occurred_at: snapshot.updated_at,
                                event_id: "~snapshot".into(),
                            },
                        )),
                        learner: Some(LearnerState {
                            last_outcome: Some(format!(
                                "{}: {}",
                                applied.class.as_str(),
                                applied.code
                            )),
                            ..s.clone()
                        }),
                    })
                    .await?;
            }
            state = applied.learner;
        }
        let contact = match state.as_ref() {
            Some(s) if s.link == LinkState::Linked && s.contact_id.is_some() => {
                s.contact_id.clone().unwrap()
            }
            Some(s) => {
                return Ok(Applied::skipped(
                    "learner_not_linked",
                    format!(
                        "{prefix}learner is {} (R11: only linked learners' records sync)",
                        s.link.as_str()
                    ),
                    None,
                ))
            }
            None => {
                return Ok(Applied::skipped(
                    "learner_not_linked",
                    format!("{prefix}learner is not synced"),
                    None,
                ))
            }
        };
        let (object, ext_field, ext_id, fields) =
            match (&env.data.enrollment, &env.data.certification) {
                (Some(e), _) if env.event_type.entity() == EntityKind::Enrollment => (
                    rules::ENROLLMENT_OBJECT,
                    rules::ENROLLMENT_EXT_ID,
                    e.id.clone(),
                    rules::enrollment_fields(e, &contact),
                ),
                (_, Some(c)) => (
                    rules::CERTIFICATION_OBJECT,
                    rules::CERTIFICATION_EXT_ID,
                    c.id.clone(),
                    rules::certification_fields(c, &contact),
                ),
                _ => return Err(Permanent::new("bad_event", "event without its record").into()),
            };
        if env.event_type == EventType::EnrollmentDeleted {
            return match self
                .sf
                .delete_by_external_id(object, ext_field, &ext_id)
                .await
            {
                Ok(()) => Ok(Applied::done(
                    "deleted",
                    format!("{prefix}{object} {ext_id} deleted (R11)"),
                    None,
                )),
                Err(SfError::NotFound) => Ok(Applied::done(
                    "deleted",
                    format!("{prefix}{object} {ext_id} was already absent (R11)"),
                    None,
                )),
                Err(e) => Err(e.into()),
            };
        }
        let res = self.sf.upsert(object, ext_field, &ext_id, &fields).await?;
        Ok(Applied::done(
            "upserted",
            format!(
                "{prefix}{object} {ext_id} {} as {} on Contact {contact} (R11)",
                if res.created { "created" } else { "updated" },
                res.id
            ),
            None,
        ))
    }

    /// R10: re-sync every enrollment and certification of a re-linked learner from SkillSync
    /// (sObject Collections, ≤200 records per call). Returns how many records were written.
    async fn resync_children(&self, learner_id: &str, contact: &str) -> StepResult<usize> {
        let enrollments = self.ss.enrollments(learner_id).await?;
        let certifications = self.ss.certifications(learner_id).await?;
        let with_ext = |mut r: Record, object: &str, field: &str, id: &str| {
            r.insert("attributes".into(), json!({ "type": object }));
            r.insert(field.into(), json!(id));
            r
        };
        let e_records: Vec<Record> = enrollments
            .iter()
            .map(|e| {
                with_ext(
                    rules::enrollment_fields(e, contact),
                    rules::ENROLLMENT_OBJECT,
                    rules::ENROLLMENT_EXT_ID,
                    &e.id,
                )
            })
            .collect();
        let c_records: Vec<Record> = certifications
            .iter()
            .map(|c| {
                with_ext(
                    rules::certification_fields(c, contact),
                    rules::CERTIFICATION_OBJECT,
                    rules::CERTIFICATION_EXT_ID,
                    &c.id,
                )
            })
            .collect();
        let e_keep: Vec<&str> = enrollments.iter().map(|e| e.id.as_str()).collect();
        let c_keep: Vec<&str> = certifications.iter().map(|c| c.id.as_str()).collect();
        let mut written = 0;
        for (object, field, records, keep) in [
            (
                rules::ENROLLMENT_OBJECT,
                rules::ENROLLMENT_EXT_ID,
                &e_records,
                &e_keep,
            ),
            (
                rules::CERTIFICATION_OBJECT,
                rules::CERTIFICATION_EXT_ID,
                &c_records,
                &c_keep,
            ),
        ] {
            written += self.delete_missing(object, field, contact, keep).await?;
            if records.is_empty() {
                continue;
            }
            let results = self.sf.upsert_many(object, field, records, false).await?;
            let failed: Vec<String> = results
                .iter()
                .filter(|r| !r.success)
                .flat_map(|r| {
                    r.errors
                        .iter()
                        .map(|e| format!("{}: {}", e.error_code, e.message))
                })
                .collect();
            if !failed.is_empty() {
                return Err(Permanent::new(
                    "salesforce_rejected",
                    format!(
                        "{} {object} records rejected: {}",
                        failed.len(),
                        failed.join("; ")
                    ),
                )
                .into());
            }
            written += results.len();
        }
        Ok(written)
    }

    /// R10: delete the Contact's `object` records whose external id SkillSync no longer
    /// has (docs/rules.md R10). Returns how many were deleted.
    async fn delete_missing(
        &self,
        object: &str,
        ext_field: &str,
        contact: &str,
        keep: &[&str],
    ) -> StepResult<usize> {
        let q = format!(
            "SELECT Id, {ext_field} FROM {object} WHERE {}",
            soql::eq("Contact__c", contact)
        );
        let gone: Vec<String> = self
            .sf
            .query(&q)
            .await?
            .iter()
            .filter(|r| {
                r.get(ext_field)
                    .and_then(Value::as_str)
                    .is_none_or(|ext| !keep.contains(&ext))
            })
            .filter_map(|r| r.get("Id").and_then(Value::as_str).map(String::from))
            .collect();
        if gone.is_empty() {
            return Ok(0);
        }
        let results = self.sf.delete_many(&gone, false).await?;
        let failed: Vec<String> = results
            .iter()
            .filter(|r| !r.success)
            .flat_map(|r| r.errors.iter())
            .filter(|e| e.error_code != "ENTITY_IS_DELETED")
            .map(|e| format!("{}: {}", e.error_code, e.message))
            .collect();
        if !failed.is_empty() {
            return Err(Permanent::new(
                "salesforce_rejected",
                format!("deleting {object} records: {}", failed.join("; ")),
            )
            .into());
        }
        Ok(gone.len())
    }
}

impl AccountCache {
    fn get_by_id(&self, id: &str) -> bool {
        self.map.lock().unwrap().values().any(|(v, _)| v == id)
    }
}

fn blank_state(learner_id: &str) -> LearnerState {
    LearnerState {
        learner_id: learner_id.to_string(),
        contact_id: None,
        link: LinkState::Unlinked,
        account_id: None,
        last_outcome: None,
        last_error: None,
        updated_at: Utc::now(),
    }
}

#[async_trait]
impl ScopePort for crate::skillsync::scope::ScopeResolver {
    async fn in_scope(&self, department_id: Option<&str>) -> Result<bool, SsError> {
        crate::skillsync::scope::ScopeResolver::in_scope(self, department_id).await
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;

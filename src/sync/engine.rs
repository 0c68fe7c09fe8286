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
use tracing::warn;

use crate::config::SyncSettings;
use crate::model::Envelope;
use crate::salesforce::SalesforceApi;
use crate::skillsync::{SkillSyncApi, SsError};
use crate::store::Store;

use super::execute::Slot;
use super::item::Item;
use super::outcome::{Outcome, SyncError};
use super::plan::{self, Early};
use super::settings::SettingsHandle;

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
struct LearnerItems {
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
        let (mut results, work) = group(&items);
        let holder = uuid::Uuid::new_v4().to_string();
        let mut pending: Vec<&LearnerItems> = work.iter().collect();
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
            let (mine, busy): (Vec<&LearnerItems>, Vec<&LearnerItems>) = pending
                .into_iter()
                .partition(|w| granted.contains(&lease_key(&w.learner_id)));
            if !mine.is_empty() {
                let keys: Vec<String> = mine.iter().map(|w| lease_key(&w.learner_id)).collect();
                let renew = self.spawn_renewal(keys.clone(), holder.clone());
                for (i, r) in self.apply_learners(&settings, &items, &mine, false).await {
                    results[i] = Some(r);
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

    /// What [`Engine::apply`] would do, reading but writing nothing anywhere (Salesforce,
    /// outcomes, versions): `backfill --dry-run`. Outcomes are the planned ones.
    pub async fn plan(&self, items: Vec<Item>) -> Vec<Result<Outcome, SyncError>> {
        let settings = self.settings.current();
        let (mut results, work) = group(&items);
        let all: Vec<&LearnerItems> = work.iter().collect();
        for (i, r) in self.apply_learners(&settings, &items, &all, true).await {
            results[i] = Some(r);
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

    /// Apply the leased learners' items in rounds: round k takes each learner's k-th item,
    /// so a round's items are independent and are planned and written together. Superseded
    /// events (a later event of the same entity in the batch) and repeated deliveries are
    /// settled without a write (R12). After a transient failure, a learner's later items
    /// wait too (their order matters).
    async fn apply_learners(
        &self,
        settings: &SyncSettings,
        items: &[Item],
        learners: &[&LearnerItems],
        dry_run: bool,
    ) -> Vec<(usize, Result<Outcome, SyncError>)> {
        let mut out = Vec::new();
        let mut queues: Vec<std::collections::VecDeque<(usize, Option<Early>)>> = learners
            .iter()
            .map(|w| {
                let events: Vec<Option<&Envelope>> = w
                    .items
                    .iter()
                    .map(|&i| match &items[i] {
                        Item::Event(e) => Some(e),
                        Item::Snapshot(_) => None,
                    })
                    .collect();
                w.items
                    .iter()
                    .copied()
                    .zip(plan::superseded(&events))
                    .collect()
            })
            .collect();
        loop {
            let mut slots = Vec::new();
            let mut owner = Vec::new();
            for (q, queue) in queues.iter_mut().enumerate() {
                if let Some((idx, early)) = queue.pop_front() {
                    slots.push(Slot {
                        idx,
                        item: &items[idx],
                        early,
                    });
                    owner.push(q);
                }
            }
            if slots.is_empty() {
                break;
            }
            let results = self.round(settings, &slots, dry_run).await;
            for (k, (idx, r)) in results.into_iter().enumerate() {
                if let Err(e) = &r {
                    if e.is_transient() {
                        for (rest, _) in queues[owner[k]].drain(..) {
                            out.push((rest, Err(e.clone())));
                        }
                    }
                }
                out.push((idx, r));
            }
        }
        out
    }
}

/// Group a batch by learner (in order of first appearance), each learner's items in
/// application order; items without a learner are settled at once.
fn group(items: &[Item]) -> (Vec<Option<Result<Outcome, SyncError>>>, Vec<LearnerItems>) {
    let mut results: Vec<Option<Result<Outcome, SyncError>>> = vec![None; items.len()];
    let mut work: Vec<LearnerItems> = Vec::new();
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
            work.push(LearnerItems {
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

    (results, work)
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

//! How reconcile plugs into the rest (docs/rules.md "Flow"):
//!
//! - [`EngineRepair`]: the [`RepairPort`] over [`Engine::apply`] — a repair is a learner
//!   snapshot (`Item::Snapshot`, origin `reconcile`), applied with every rule, the per-learner
//!   lease and the outcome history, exactly like events.
//! - [`UncertainMarker`]: wraps the Salesforce client of `work`/`run` and marks a learner
//!   uncertain in the store when a write to its records ended without an answer (timeout,
//!   connection lost, 502/504): the write may still land later, so the continuous reconciler
//!   re-verifies that learner within `reconcile.uncertain_after_secs`.
//! - [`engine_for_process`]: the engine of a `work`/`run` process — following the mapping in
//!   force (`sync.managed_by = "console"`), writing through the marker — and the continuous
//!   reconciler beside it.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::watch;
use tracing::{info, warn};

use super::pass::{RepairPort, RepairRequest};
use super::Reconciler;
use crate::config::Settings;
use crate::salesforce::{Describe, Record, SalesforceApi, SaveResult, SfError, UpsertResult};
use crate::store::Store;
use crate::sync::item::{Children, Item, Origin, SnapshotItem};
use crate::sync::outcome::OutcomeClass;
use crate::sync::{Engine, SettingsHandle};

/// Repairs through the one apply path the events use.
pub struct EngineRepair {
    pub engine: Arc<Engine>,
}

#[async_trait]
impl RepairPort for EngineRepair {
    async fn repair(&self, requests: Vec<RepairRequest>) -> Vec<Result<String, String>> {
        let items: Vec<Item> = requests
            .into_iter()
            .map(|r| {
                Item::Snapshot(SnapshotItem {
                    learner: r.learner,
                    children: r.children.map(|c| Children {
                        enrollments: c.enrollments,
                        certifications: c.certifications,
                    }),
                    origin: Origin::Reconcile {
                        detail: r.drifts.join("; "),
                    },
                    keep_fields: r.keep_fields,
                    contact_hint: None,
                })
            })
            .collect();
        self.engine
            .apply(items)
            .await
            .into_iter()
            .map(|r| match r {
                Ok(o) if o.class == OutcomeClass::Failed => {
                    Err(format!("{}: {}", o.code.as_str(), o.detail))
                }
                Ok(o) => Ok(o.code.as_str().to_string()),
                Err(e) => Err(e.to_string()),
            })
            .collect()
    }
}

/// Did a write end without telling whether Salesforce applied it?
pub fn ambiguous(e: &SfError) -> bool {
    matches!(
        e,
        SfError::Transient {
            status: None | Some(502) | Some(504),
            ..
        }
    )
}

/// The Salesforce client of `work`/`run`, marking learners whose write had an ambiguous end.
pub struct UncertainMarker {
    pub inner: Arc<dyn SalesforceApi>,
    pub store: Arc<dyn Store>,
    /// `sync.link_field` (the Contact field carrying the learner id).
    pub link_field: String,
}

impl UncertainMarker {
    /// Mark the learners `records` / `ids` belong to: the link field names them; a Contact id
    /// or a child's `Contact__c` is looked up in the store.
    async fn mark(
        &self,
        learners: impl IntoIterator<Item = String>,
        contacts: impl IntoIterator<Item = String>,
        e: &SfError,
    ) {
        let mut ids: BTreeSet<String> = learners.into_iter().filter(|s| !s.is_empty()).collect();
        let contacts: Vec<String> = contacts.into_iter().filter(|s| !s.is_empty()).collect();
        if !contacts.is_empty() {
            match self.store.learners_by_contact(&contacts).await {
                Ok(states) => ids.extend(states.into_iter().map(|s| s.learner_id)),
                Err(err) => {
                    warn!(error = %err, "could not look up the learners of an uncertain write")
                }
            }
        }
        for id in ids {
            info!(learner_id = %id, error = %e, "Salesforce write ended without an answer; the learner is re-verified by reconcile");
            if let Err(err) = self.store.mark_uncertain(&id, e.code()).await {
                warn!(learner_id = %id, error = %err, "could not mark the learner uncertain");
            }
        }
    }

    fn of_records(&self, records: &[Record]) -> (Vec<String>, Vec<String>) {
        let s = |r: &Record, f: &str| r.get(f).and_then(Value::as_str).map(str::to_string);
        let mut learners = Vec::new();
        let mut contacts = Vec::new();
        for r in records {
            learners.extend(s(r, &self.link_field));
            contacts.extend(s(r, "Contact__c"));
            contacts.extend(s(r, "Id"));
        }
        (learners, contacts)
    }

    async fn check<T>(
        &self,
        r: Result<T, SfError>,
        records: &[Record],
        ids: &[String],
    ) -> Result<T, SfError> {
        if let Err(e) = &r {
            if ambiguous(e) {
                let (learners, mut contacts) = self.of_records(records);
                contacts.extend(ids.iter().cloned());
                self.mark(learners, contacts, e).await;
            }
        }
        r
    }
}

fn with_id(id: &str, fields: &Record) -> Record {
    let mut r = fields.clone();
    r.insert("Id".into(), Value::String(id.to_string()));
    r
}

#[async_trait]
impl SalesforceApi for UncertainMarker {
    async fn query(&self, soql: &str) -> Result<Vec<Record>, SfError> {
        self.inner.query(soql).await
    }
    async fn create(&self, sobject: &str, fields: &Record) -> Result<String, SfError> {
        let r = self.inner.create(sobject, fields).await;
        self.check(r, std::slice::from_ref(fields), &[]).await
    }
    async fn get(&self, sobject: &str, id: &str, fields: &[&str]) -> Result<Record, SfError> {
        self.inner.get(sobject, id, fields).await
    }
    async fn update(&self, sobject: &str, id: &str, fields: &Record) -> Result<(), SfError> {
        let r = self.inner.update(sobject, id, fields).await;
        self.check(r, &[with_id(id, fields)], &[]).await
    }
    async fn delete(&self, sobject: &str, id: &str) -> Result<(), SfError> {
        let r = self.inner.delete(sobject, id).await;
        self.check(r, &[], &[id.to_string()]).await
    }
    async fn upsert(
        &self,
        sobject: &str,
        ext_field: &str,
        ext_id: &str,
        fields: &Record,
    ) -> Result<UpsertResult, SfError> {
        let r = self.inner.upsert(sobject, ext_field, ext_id, fields).await;
        let mut rec = fields.clone();
        if ext_field == self.link_field {
            rec.insert(ext_field.into(), Value::String(ext_id.to_string()));
        }
        self.check(r, &[rec], &[]).await
    }
    async fn delete_by_external_id(
        &self,
        sobject: &str,
        ext_field: &str,
        ext_id: &str,
    ) -> Result<(), SfError> {
        let r = self
            .inner
            .delete_by_external_id(sobject, ext_field, ext_id)
            .await;
        let learners = if ext_field == self.link_field {
            vec![ext_id.to_string()]
        } else {
            Vec::new()
        };
        if let Err(e) = &r {
            if ambiguous(e) {
                self.mark(learners, Vec::new(), e).await;
            }
        }
        r
    }
    async fn create_many(
        &self,
        records: &[Record],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>, SfError> {
        let r = self.inner.create_many(records, all_or_none).await;
        self.check(r, records, &[]).await
    }
    async fn update_many(
        &self,
        records: &[Record],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>, SfError> {
        let r = self.inner.update_many(records, all_or_none).await;
        self.check(r, records, &[]).await
    }
    async fn upsert_many(
        &self,
        sobject: &str,
        ext_field: &str,
        records: &[Record],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>, SfError> {
        let r = self
            .inner
            .upsert_many(sobject, ext_field, records, all_or_none)
            .await;
        self.check(r, records, &[]).await
    }
    async fn delete_many(
        &self,
        ids: &[String],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>, SfError> {
        let r = self.inner.delete_many(ids, all_or_none).await;
        self.check(r, &[], ids).await
    }
    async fn describe(&self, sobject: &str) -> Result<Describe, SfError> {
        self.inner.describe(sobject).await
    }
}

/// The engine of a `work`/`run` process and, when `reconcile.interval_secs > 0`, the
/// continuous reconciler beside it (until `shutdown`). `mapping` is the mapping in force
/// (followed as the console saves new versions); `settings.sync` is its current value.
/// With sync enabled, refuses an unknown source department (R2).
pub async fn engine_for_process(
    settings: &Settings,
    store: Arc<dyn Store>,
    mapping: SettingsHandle,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Arc<Engine>> {
    let parts = crate::app::build(
        settings,
        store.clone(),
        crate::app::Options {
            mapping: Some(mapping.clone()),
            mark_uncertain: true,
            ..Default::default()
        },
    )
    .await?;
    let (engine, calls, ss, scope) = (parts.engine, parts.salesforce, parts.skillsync, parts.scope);
    if settings.reconcile.interval_secs > 0 {
        // Reconcile reads at bulk priority: the budget governor pauses it before live events.
        let reads = calls.with_priority(crate::salesforce::Priority::Bulk);
        let counter = reads.clone();
        let reconciler = Reconciler {
            sync: settings.sync.clone(),
            settings: settings.reconcile.clone(),
            sf: Arc::new(reads),
            ss,
            scope,
            store,
            repair: Some(Arc::new(EngineRepair {
                engine: engine.clone(),
            })),
            sf_calls: Some(Arc::new(move || counter.total_calls())),
        };
        tokio::spawn(super::continuous::run(
            Arc::new(reconciler),
            Some(mapping),
            shutdown,
        ));
    } else {
        info!("reconcile.interval_secs = 0: continuous reconcile is off");
    }
    Ok(engine)
}

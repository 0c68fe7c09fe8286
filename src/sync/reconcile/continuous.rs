//! The incremental reconciler `work` and `run` keep in the background
//! (`reconcile.interval_secs`, 0 = off):
//!
//! - every `interval_secs`: the learners of Contacts (and child records) whose
//!   `SystemModstamp` is newer than the last pass — one SOQL query per object, paginated;
//! - every few seconds: the learners whose last Salesforce write ended in a timeout or
//!   another ambiguous outcome (marked in the store by the executor). Each is verified
//!   repeatedly until `uncertain_after_secs` have passed since its mark, so a held write
//!   that lands late is caught and repaired within that time.
//!
//! Only one process reconciles at a time: the store lease [`super::pass::LEASE`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::salesforce::soql;
use crate::sync::{rules, SettingsHandle};
use crate::telemetry;

use super::pass::{PassKind, Reconciler, Selection};

/// Modstamps are Salesforce's clock; look back this much further than the last pass.
const CLOCK_SLACK: chrono::Duration = chrono::Duration::seconds(60);

/// SOQL datetime literal (whole seconds, UTC).
pub fn soql_datetime(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

impl Reconciler {
    /// Learners whose Contact or child records changed in Salesforce since `since`.
    pub async fn modified_since(&self, since: DateTime<Utc>) -> anyhow::Result<Vec<String>> {
        let link = &self.sync.link_field;
        let at = soql_datetime(since - CLOCK_SLACK);
        let mut learners: BTreeSet<String> = BTreeSet::new();
        let mut contacts: BTreeSet<String> = BTreeSet::new();
        let q = format!(
            "SELECT Id, {} FROM Contact WHERE SystemModstamp >= {at}",
            soql::name(link)
        );
        for r in self.sf.query(&q).await? {
            match r.get(link.as_str()).and_then(Value::as_str) {
                Some(l) if !l.is_empty() => {
                    learners.insert(l.to_string());
                }
                // A cleared link: the store knows whose Contact it was.
                _ => {
                    if let Some(id) = r.get("Id").and_then(Value::as_str) {
                        contacts.insert(id.to_string());
                    }
                }
            }
        }
        for object in [rules::ENROLLMENT_OBJECT, rules::CERTIFICATION_OBJECT] {
            let q = format!("SELECT Contact__c FROM {object} WHERE SystemModstamp >= {at}");
            for r in self.sf.query(&q).await? {
                if let Some(c) = r.get("Contact__c").and_then(Value::as_str) {
                    contacts.insert(c.to_string());
                }
            }
        }
        let contacts: Vec<String> = contacts.into_iter().collect();
        for st in self.store.learners_by_contact(&contacts).await? {
            learners.insert(st.learner_id);
        }
        Ok(learners.into_iter().collect())
    }

    /// One incremental pass (repairing): the learners changed in Salesforce since the last pass.
    pub async fn incremental(&self) -> anyhow::Result<super::Report> {
        let since = match self.last_pass().await? {
            Some(t) => t,
            None => Utc::now() - chrono::Duration::seconds(self.settings.interval_secs as i64),
        };
        let ids = self.modified_since(since).await?;
        self.run(
            &Selection::Learners(ids),
            PassKind::Incremental,
            false,
            &|_| {},
        )
        .await
    }

    /// Verify (and repair) the learners marked uncertain; clear the marks whose window has
    /// passed. Returns how many marks remain.
    pub async fn verify_uncertain(&self) -> anyhow::Result<usize> {
        let marks = self.store.uncertain(1000).await?;
        if marks.is_empty() {
            metrics::gauge!(telemetry::RECONCILE_UNCERTAIN).set(0.0);
            return Ok(0);
        }
        let now = Utc::now();
        let ids: Vec<String> = marks.iter().map(|m| m.learner_id.clone()).collect();
        let report = self
            .run(&Selection::Learners(ids), PassKind::Verify, false, &|_| {})
            .await?;
        for d in &report.drifts {
            info!(learner_id = %d.learner_id, kind = %d.kind, detail = %d.detail, "reconcile: drift after an uncertain write");
        }
        let window = chrono::Duration::seconds(self.settings.uncertain_after_secs as i64);
        let failed: BTreeSet<&str> = report
            .failures
            .iter()
            .map(|f| f.learner_id.as_str())
            .collect();
        let mut left = 0;
        for m in &marks {
            if m.marked_at + window <= now && !failed.contains(m.learner_id.as_str()) {
                self.store
                    .clear_uncertain(&m.learner_id, m.marked_at)
                    .await?;
            } else {
                left += 1;
            }
        }
        metrics::gauge!(telemetry::RECONCILE_UNCERTAIN).set(left as f64);
        Ok(left)
    }
}

/// Run the background reconciler until `shutdown` turns true. Returns at once when
/// `reconcile.interval_secs = 0`. With `mapping`, every tick uses the mapping in force
/// (`sync.managed_by = "console"`).
pub async fn run(
    reconciler: Arc<Reconciler>,
    mapping: Option<SettingsHandle>,
    mut shutdown: watch::Receiver<bool>,
) {
    let s = reconciler.settings.clone();
    if s.interval_secs == 0 {
        info!("reconcile.interval_secs = 0: continuous reconcile is off");
        return;
    }
    let tick = Duration::from_secs(s.uncertain_after_secs / 4)
        .clamp(Duration::from_secs(1), Duration::from_secs(30));
    let interval = Duration::from_secs(s.interval_secs);
    let ttl = (tick * 3).max(Duration::from_secs(300));
    let holder = format!("reconciler-{}", uuid::Uuid::new_v4());
    let mut last_incremental: Option<Instant> = None;
    info!(
        interval_secs = s.interval_secs,
        uncertain_after_secs = s.uncertain_after_secs,
        "continuous reconcile on"
    );
    loop {
        tokio::select! {
            _ = tokio::time::sleep(tick) => {}
            _ = shutdown.wait_for(|v| *v) => break,
        }
        let current;
        let reconciler = match &mapping {
            Some(m) => {
                let mut r = (*reconciler).clone();
                r.sync = (*m.current()).clone();
                current = r;
                &current
            }
            _ => reconciler.as_ref(),
        };
        match reconciler.lease(&holder, ttl).await {
            Ok(true) => {}
            Ok(false) => continue, // another process reconciles
            Err(e) => {
                warn!(error = %e, "reconcile lease unavailable");
                continue;
            }
        }
        if let Err(e) = reconciler.verify_uncertain().await {
            warn!(error = %e, "reconcile: verifying uncertain writes failed; retrying next tick");
        }
        if last_incremental.is_none_or(|t| t.elapsed() >= interval) {
            match reconciler.incremental().await {
                Ok(r) => {
                    last_incremental = Some(Instant::now());
                    info!(
                        learners = r.learners,
                        drifts = r.drifts.len(),
                        repaired = r.repaired_total(),
                        failed = r.failures.len(),
                        "reconcile: incremental pass done"
                    );
                }
                Err(e) => {
                    warn!(error = %e, "reconcile: incremental pass failed; retrying next tick")
                }
            }
        }
    }
    reconciler.release(&holder).await;
}

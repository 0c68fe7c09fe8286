//! One reconcile pass: pick the learners, load them in batches, diff, and (unless a dry run)
//! repair every learner with drift through the one apply path the events use
//! ([`RepairPort`], implemented by the sync engine).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::config::{OnFieldDrift, ReconcileSettings, SyncSettings};
use crate::model::{Department, Learner, LearnerStatus};
use crate::salesforce::SalesforceApi;
use crate::skillsync::scope::ScopeResolver;
use crate::skillsync::SkillSyncApi;
use crate::store::Store;
use crate::telemetry;

use super::diff::{diff, ExpectedChildren, LearnerDiff, Problem};
use super::load::Loader;
use super::{Drift, DriftKind};

/// Learners per batch: their Contact ids fit one `IN` list of [`super::load::MAX_IN_CHARS`],
/// so a batch costs one query per child object.
pub const BATCH: usize = 360;
/// The store checkpoint holding the start time of the last completed pass (RFC 3339).
pub const LAST_PASS: &str = "reconcile.last_pass";
/// The store lease only one reconciler holds at a time.
pub const LEASE: &str = "reconcile";

/// Which learners a pass looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Every learner in scope (or in `department` and its sub-departments, inside the scope),
    /// plus — for the whole scope — every learner the store knows or a Contact link names.
    All { department: Option<String> },
    /// These learners only.
    Learners(Vec<String>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PassKind {
    /// `syncback reconcile`.
    Full,
    /// Contacts changed since the last pass (`work`/`run`).
    Incremental,
    /// Learners whose last Salesforce write had an ambiguous outcome.
    Verify,
}

impl PassKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PassKind::Full => "full",
            PassKind::Incremental => "incremental",
            PassKind::Verify => "verify",
        }
    }
}

/// One learner's repair, handed to the apply path.
#[derive(Clone, Debug)]
pub struct RepairRequest {
    /// SkillSync's snapshot (for a learner SkillSync no longer has: an inactive stand-in, so
    /// the apply path unlinks it as R9 says).
    pub learner: Learner,
    /// SkillSync's children, for a learner that should be linked.
    pub children: Option<ExpectedChildren>,
    /// `reconcile.on_field_drift = "report"`: keep Salesforce's values of the mapped fields.
    pub keep_fields: bool,
    /// The drifts being repaired, one line each (`field_drift: LastName "Smith" → "Smyth"`).
    pub drifts: Vec<String>,
}

/// The one apply path (docs/rules.md "Flow"): the sync engine applies a learner snapshot with
/// every rule, the per-learner lease and the outcome history. One result per request, in order:
/// the outcome code, or why it failed.
#[async_trait]
pub trait RepairPort: Send + Sync {
    async fn repair(&self, requests: Vec<RepairRequest>) -> Vec<Result<String, String>>;
}

/// Progress of a pass, for a progress bar.
#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    pub drifts: u64,
}

/// A repair that did not succeed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Failure {
    pub learner_id: String,
    pub error: String,
}

/// What a pass found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub learners: u64,
    pub drifts: Vec<Drift>,
    /// Learners the rules cannot be computed for (e.g. `account_not_found`).
    pub problems: Vec<ProblemLine>,
    /// Drifts repaired, by kind.
    pub repaired: BTreeMap<String, u64>,
    pub failures: Vec<Failure>,
    pub salesforce_calls: u64,
    pub elapsed_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProblemLine {
    pub learner_id: String,
    pub code: String,
    pub detail: String,
}

impl From<Problem> for ProblemLine {
    fn from(p: Problem) -> Self {
        ProblemLine {
            learner_id: p.learner_id,
            code: p.code,
            detail: p.detail,
        }
    }
}

impl Report {
    pub fn by_kind(&self) -> BTreeMap<DriftKind, u64> {
        let mut m = BTreeMap::new();
        for d in &self.drifts {
            *m.entry(d.kind).or_default() += 1;
        }
        m
    }
    pub fn repaired_total(&self) -> u64 {
        self.repaired.values().sum()
    }
    /// Drifts still in Salesforce after the pass (all of them in a dry run).
    pub fn remaining(&self) -> u64 {
        self.drifts.len() as u64 - self.repaired_total()
    }
}

#[derive(Clone)]
pub struct Reconciler {
    pub sync: SyncSettings,
    pub settings: ReconcileSettings,
    pub sf: Arc<dyn SalesforceApi>,
    pub ss: Arc<dyn SkillSyncApi>,
    pub scope: Arc<ScopeResolver>,
    pub store: Arc<dyn Store>,
    pub repair: Option<Arc<dyn RepairPort>>,
    /// Counts Salesforce calls (for the report); `None` = not counted.
    pub sf_calls: Option<Arc<dyn Fn() -> u64 + Send + Sync>>,
}

/// The in-scope departments under `root` (itself included), from the scope's tree.
fn subtree(departments: &[Department], root: &str) -> Vec<Department> {
    let mut keep: BTreeSet<String> = BTreeSet::from([root.to_string()]);
    loop {
        let before = keep.len();
        for d in departments {
            if d.parent_id.as_ref().is_some_and(|p| keep.contains(p)) {
                keep.insert(d.id.clone());
            }
        }
        if keep.len() == before {
            break;
        }
    }
    departments
        .iter()
        .filter(|d| keep.contains(&d.id))
        .cloned()
        .collect()
}

impl Reconciler {
    fn loader(&self) -> Loader<'_> {
        Loader::new(
            &self.sync,
            self.sf.as_ref(),
            self.ss.as_ref(),
            &self.scope,
            self.store.as_ref(),
        )
    }

    /// The learners of a selection with their SkillSync snapshots (`None`: no longer in
    /// SkillSync), and the link carriers when they were read for everyone.
    async fn select(
        &self,
        loader: &Loader<'_>,
        selection: &Selection,
    ) -> anyhow::Result<(
        Vec<(String, Option<Learner>)>,
        Option<HashMap<String, Vec<super::diff::ContactView>>>,
    )> {
        let mut snapshots: BTreeMap<String, Option<Learner>> = BTreeMap::new();
        match selection {
            Selection::Learners(ids) => {
                let ids: Vec<String> = ids
                    .iter()
                    .cloned()
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect();
                snapshots.extend(loader.snapshots(&ids).await?);
                Ok((snapshots.into_iter().collect(), None))
            }
            Selection::All { department } => {
                let all = self.scope.departments().await?;
                let departments = match department {
                    None => all,
                    Some(d) => {
                        anyhow::ensure!(
                            all.iter().any(|x| &x.id == d),
                            "--department {d} is not inside the configured scope (sync.source_department_id = {:?}, sync.scope = {:?})",
                            self.sync.source_department_id,
                            self.sync.scope
                        );
                        subtree(&all, d)
                    }
                };
                for dept in &departments {
                    let mut cursor: Option<String> = None;
                    loop {
                        let page = self.ss.learners_page(&dept.id, cursor.as_deref()).await?;
                        for l in page.items {
                            snapshots.insert(l.id.clone(), Some(l));
                        }
                        match page.next_cursor {
                            Some(c) => cursor = Some(c),
                            None => break,
                        }
                    }
                }
                if department.is_some() {
                    return Ok((snapshots.into_iter().collect(), None));
                }
                // Learners that left the scope without an event: the store and the links.
                let carriers = loader.linked_contacts().await?;
                let mut extra: BTreeSet<String> = carriers
                    .keys()
                    .filter(|id| !snapshots.contains_key(*id))
                    .cloned()
                    .collect();
                let mut after: Option<String> = None;
                loop {
                    let page = self.store.learners_after(after.as_deref(), 1000).await?;
                    let Some(last) = page.last() else { break };
                    after = Some(last.learner_id.clone());
                    for st in page {
                        if !snapshots.contains_key(&st.learner_id) && st.contact_id.is_some() {
                            extra.insert(st.learner_id);
                        }
                    }
                }
                let extra: Vec<String> = extra.into_iter().collect();
                snapshots.extend(loader.snapshots(&extra).await?);
                Ok((snapshots.into_iter().collect(), Some(carriers)))
            }
        }
    }

    /// Run one pass. `dry_run` writes nothing anywhere. `progress` is called after each batch.
    pub async fn run(
        &self,
        selection: &Selection,
        kind: PassKind,
        dry_run: bool,
        progress: &(dyn Fn(Progress) + Send + Sync),
    ) -> anyhow::Result<Report> {
        let started = Instant::now();
        let started_at = Utc::now();
        let calls_at_start = self.sf_calls.as_ref().map(|c| c()).unwrap_or(0);
        anyhow::ensure!(
            dry_run || self.sync.enabled,
            "sync.enabled = false (R1): only `reconcile --dry-run` is allowed"
        );
        let repair = match (&self.repair, dry_run) {
            (_, true) => None,
            (Some(r), false) => Some(r.clone()),
            (None, false) => anyhow::bail!(
                "this reconciler has no apply path to repair through; run with --dry-run"
            ),
        };
        let loader = self.loader();
        let (learners, carriers) = self.select(&loader, selection).await?;
        let mut report = Report {
            dry_run,
            learners: learners.len() as u64,
            ..Default::default()
        };
        let mut p = Progress {
            total: learners.len() as u64,
            ..Default::default()
        };
        progress(p);
        for batch in learners.chunks(BATCH) {
            let views = loader.views(batch.to_vec(), carriers.as_ref()).await?;
            let mut requests = Vec::new();
            for v in &views {
                let mut d = diff(&self.sync, v);
                self.apply_policy(&mut d);
                if let Some(pb) = d.problem.take() {
                    report.problems.push(pb.into());
                }
                for x in &d.drifts {
                    metrics::counter!(telemetry::RECONCILE_DRIFT, "kind" => x.kind.as_str())
                        .increment(1);
                }
                if d.drifts.iter().any(|x| !x.report_only) {
                    requests.push((
                        report.drifts.len(),
                        d.drifts.len(),
                        RepairRequest {
                            learner: v
                                .snapshot
                                .clone()
                                .unwrap_or_else(|| vanished(&v.learner_id)),
                            children: if d.should_link {
                                v.children.clone()
                            } else {
                                None
                            },
                            keep_fields: self.settings.on_field_drift == OnFieldDrift::Report,
                            drifts: d.drifts.iter().map(Drift::line).collect(),
                        },
                    ));
                }
                report.drifts.extend(d.drifts);
            }
            if let Some(repair) = &repair {
                if !requests.is_empty() {
                    let (spans, reqs): (Vec<(usize, usize)>, Vec<RepairRequest>) = requests
                        .into_iter()
                        .map(|(start, n, r)| ((start, n), r))
                        .unzip();
                    let ids: Vec<String> = reqs.iter().map(|r| r.learner.id.clone()).collect();
                    let results = repair.repair(reqs).await;
                    for (((start, n), id), res) in spans.into_iter().zip(ids).zip(results) {
                        match res {
                            Ok(_) => {
                                for d in &report.drifts[start..start + n] {
                                    if !d.report_only {
                                        *report
                                            .repaired
                                            .entry(d.kind.as_str().to_string())
                                            .or_default() += 1;
                                        metrics::counter!(telemetry::RECONCILE_REPAIRED, "kind" => d.kind.as_str())
                                            .increment(1);
                                    }
                                }
                            }
                            Err(e) => report.failures.push(Failure {
                                learner_id: id,
                                error: e,
                            }),
                        }
                    }
                }
            }
            p.done += batch.len() as u64;
            p.drifts = report.drifts.len() as u64;
            progress(p);
        }
        // A pass over everything, or over every change since the last one, moves the point
        // the next incremental pass starts from.
        let covers_all = match kind {
            PassKind::Full => *selection == Selection::All { department: None },
            PassKind::Incremental => true,
            PassKind::Verify => false,
        };
        if !dry_run && covers_all {
            self.store
                .set_checkpoint(LAST_PASS, Some(&started_at.to_rfc3339()))
                .await?;
        }
        metrics::gauge!(telemetry::RECONCILE_LAST_PASS, "pass" => kind.as_str())
            .set(Utc::now().timestamp() as f64);
        report.salesforce_calls = self.sf_calls.as_ref().map(|c| c()).unwrap_or(0) - calls_at_start;
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(report)
    }

    /// `on_field_drift = "report"`: Contact field drifts stay (children, link and AccountId
    /// are always repaired).
    fn apply_policy(&self, d: &mut LearnerDiff) {
        if self.settings.on_field_drift == OnFieldDrift::Report {
            for x in &mut d.drifts {
                let child = x
                    .field
                    .as_deref()
                    .is_some_and(|f| f.starts_with("SkillSync_"));
                if x.kind == DriftKind::FieldDrift && !child {
                    x.report_only = true;
                }
            }
        }
    }

    /// When the last pass started, if one completed.
    pub async fn last_pass(&self) -> anyhow::Result<Option<DateTime<Utc>>> {
        Ok(self
            .store
            .checkpoint(LAST_PASS)
            .await?
            .and_then(|s| DateTime::parse_from_rfc3339(&s).ok())
            .map(|t| t.with_timezone(&Utc)))
    }

    /// Take (or renew) the reconcile lease for `holder`.
    pub async fn lease(&self, holder: &str, ttl: Duration) -> anyhow::Result<bool> {
        Ok(self.store.try_lease(LEASE, holder, ttl).await?)
    }

    pub async fn release(&self, holder: &str) {
        if let Err(e) = self.store.release_lease(LEASE, holder).await {
            tracing::warn!(error = %e, "could not release the reconcile lease");
        }
    }
}

/// A stand-in for a learner SkillSync no longer has: inactive, so applying it unlinks (R9).
fn vanished(id: &str) -> Learner {
    Learner {
        id: id.to_string(),
        username: String::new(),
        email: None,
        first_name: None,
        last_name: None,
        department_id: None,
        department_name: None,
        status: LearnerStatus::Inactive,
        fields: Default::default(),
        updated_at: Utc::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn department_subtree_stays_inside_the_scope() {
        let d = |id: &str, parent: Option<&str>| Department {
            id: id.into(),
            name: id.into(),
            parent_id: parent.map(String::from),
        };
        let all = vec![
            d("42", None),
            d("43", Some("42")),
            d("44", Some("42")),
            d("46", Some("43")),
        ];
        let ids: Vec<String> = subtree(&all, "43").into_iter().map(|d| d.id).collect();
        assert_eq!(ids, vec!["43", "46"]);
    }
}

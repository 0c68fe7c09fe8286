//! `syncback backfill` (R2–R10 in bulk): walk every learner of the scope's departments in
//! SkillSync and apply each one's snapshot through the one apply path ([`Engine::apply`],
//! the same rules, leases, versions and outcome history as live events), 200 learners per
//! batch — so one SOQL `IN` query for the Accounts and one for the Contacts of a batch,
//! then sObject Collections for the writes. Resumable: a checkpoint (department index +
//! page cursor) is saved in the store after every batch. `--dry-run` prints the plan
//! ([`Engine::plan`]) and writes nothing anywhere.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Settings;
use crate::model::Learner;
use crate::skillsync::scope::ScopeResolver;
use crate::skillsync::SkillSyncApi;
use crate::store::Store;

use super::item::{Item, Origin, SnapshotItem};
use super::outcome::{Code, Outcome, OutcomeClass, SyncError};
use super::Engine;

const CHECKPOINT: &str = "backfill";
/// Attempts of a batch's transiently failing learners before the run stops.
const BATCH_RETRIES: u32 = 4;
/// Learners per batch: one Collections call per write kind.
pub const BATCH: usize = 200;

/// What happened (or would happen, in a dry run) to each learner.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub seen: u64,
    pub created: u64,
    pub linked: u64,
    pub updated: u64,
    pub moved: u64,
    /// Inactive (or out-of-scope) learners whose Contact was unlinked (R9, R3).
    pub unlinked: u64,
    pub skipped: BTreeMap<String, u64>,
    pub failed: BTreeMap<String, u64>,
    pub dry_run: bool,
    pub salesforce_calls: u64,
    pub elapsed_ms: u64,
    /// Dry run: one line per planned change or failure.
    pub plan: Vec<String>,
    /// What was walked: explains a run that saw no learners.
    pub walked: Walked,
}

/// The scope a backfill walked (R2, R3): source department, scope, and the learners
/// SkillSync listed per department.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Walked {
    pub source_department_id: String,
    pub scope: String,
    /// (department id, name, learners listed in this run).
    pub departments: Vec<(String, String, u64)>,
}

impl Walked {
    /// Why nothing was seen, and what to do about it (docs/rules.md R2, R3).
    fn explain_empty(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let listed: Vec<String> = self
            .departments
            .iter()
            .map(|(id, name, n)| format!("{id} {name}: {n}"))
            .collect();
        writeln!(
            f,
            "  no learners in scope: source department {} (sync.source_department_id), scope {} (sync.scope)",
            self.source_department_id, self.scope
        )?;
        writeln!(
            f,
            "    SkillSync listed {} department(s), learners per department: {}",
            self.departments.len(),
            if listed.is_empty() {
                "(none)".to_string()
            } else {
                listed.join(", ")
            }
        )?;
        writeln!(
            f,
            "    hint: SkillSync lists a learner under its own department only; if the learners are in a sub-department, use sync.scope = \"with_subdepartments\" or check sync.source_department_id"
        )
    }
}

impl Summary {
    pub fn failed(&self) -> u64 {
        self.failed.values().sum()
    }
    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.dry_run {
            for line in &self.plan {
                writeln!(f, "{line}")?;
            }
            writeln!(f, "\nDRY RUN — nothing was written to Salesforce. Plan:")?;
        } else {
            writeln!(f, "Backfill finished:")?;
        }
        writeln!(f, "  learners seen  {}", self.seen)?;
        if self.seen == 0 {
            self.walked.explain_empty(f)?;
        }
        writeln!(f, "  created        {}", self.created)?;
        writeln!(f, "  linked         {}", self.linked)?;
        writeln!(f, "  updated        {}", self.updated)?;
        writeln!(
            f,
            "  moved          {} (Contacts put in another Account, R7)",
            self.moved
        )?;
        writeln!(
            f,
            "  unlinked       {} (inactive or out of scope: Contact kept, link removed, R9/R3)",
            self.unlinked
        )?;
        writeln!(f, "  skipped        {}", self.skipped_total())?;
        for (k, v) in &self.skipped {
            writeln!(f, "    {k:<22} {v}")?;
        }
        writeln!(f, "  failed         {}", self.failed())?;
        for (k, v) in &self.failed {
            writeln!(f, "    {k:<22} {v}")?;
        }
        write!(
            f,
            "  Salesforce calls {} ({:.4} per learner), {:.1} s",
            self.salesforce_calls,
            if self.seen == 0 {
                0.0
            } else {
                self.salesforce_calls as f64 / self.seen as f64
            },
            self.elapsed_ms as f64 / 1000.0
        )
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Checkpoint {
    department_index: usize,
    cursor: Option<String>,
    summary_seen: u64,
}

pub struct Backfill<'a> {
    /// The one apply path (docs/rules.md "Flow").
    pub engine: &'a Engine,
    /// SkillSync's learner listing.
    pub ss: &'a dyn SkillSyncApi,
    /// The departments of the scope (R3).
    pub scope: &'a ScopeResolver,
    pub dry_run: bool,
    pub restart: bool,
    /// Told how the run goes (the CLI draws a progress bar); `None` = silent.
    pub progress: Option<&'a dyn Progress>,
    /// Counts Salesforce calls (for the summary); `None` = not counted.
    pub sf_calls: Option<&'a (dyn Fn() -> u64 + Send + Sync)>,
}

/// What a backfill reports while it runs.
pub trait Progress: Send + Sync {
    /// Learners SkillSync lists in the scope (counted before the run), and those already
    /// done by an interrupted run this one resumes.
    fn start(&self, total: u64, done: u64);
    /// Now walking this department (`index` of `of`, from 1).
    fn department(&self, name: &str, index: usize, of: usize);
    /// Learners done so far (this run and the resumed one).
    fn advance(&self, done: u64);
    fn finish(&self);
    /// The Salesforce budget governor's status, to show when it pauses bulk work
    /// (README "Salesforce API budget").
    fn budget(&self, _status: tokio::sync::watch::Receiver<crate::salesforce::BudgetStatus>) {}
}

/// Build the engine from configuration (bulk priority) and run.
pub async fn run_from_settings(
    settings: &Settings,
    store: Arc<dyn Store>,
    dry_run: bool,
    restart: bool,
    progress: Option<&dyn Progress>,
) -> anyhow::Result<Summary> {
    anyhow::ensure!(
        settings.sync.enabled || dry_run,
        "sync.enabled = false (R1): only `backfill --dry-run` is allowed"
    );
    // Bulk priority: paused first by the budget governor (salesforce.max_api_share).
    let parts = crate::app::build(
        settings,
        store,
        crate::app::Options {
            priority: crate::salesforce::Priority::Bulk,
            mapping: None,
            validate_source: false,
            mark_uncertain: false,
        },
    )
    .await?;
    parts.scope.validate_source().await.map_err(|e| {
        anyhow::anyhow!("refusing to backfill: source department is not valid (R2): {e}")
    })?;
    let counter = parts.salesforce.clone();
    let calls = move || counter.total_calls();
    if let Some(p) = progress {
        p.budget(parts.salesforce.budget().subscribe());
    }
    Backfill {
        engine: &parts.engine,
        ss: parts.skillsync.as_ref(),
        scope: &parts.scope,
        dry_run,
        restart,
        progress,
        sf_calls: Some(&calls),
    }
    .run()
    .await
}

impl Backfill<'_> {
    pub async fn run(&self) -> anyhow::Result<Summary> {
        let started = Instant::now();
        let calls_at_start = self.sf_calls.map(|c| c()).unwrap_or(0);
        let mut summary = Summary {
            dry_run: self.dry_run,
            ..Default::default()
        };
        let departments = self.scope.departments().await?;
        let settings = self.engine.settings();
        let store = self.engine.store().clone();
        summary.walked = Walked {
            source_department_id: settings.source_department_id.clone(),
            scope: serde_json::to_value(settings.scope)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            departments: departments
                .iter()
                .map(|d| (d.id.clone(), d.name.clone(), 0))
                .collect(),
        };
        let mut cp: Checkpoint = match (
            self.restart || self.dry_run,
            store.checkpoint(CHECKPOINT).await?,
        ) {
            (false, Some(s)) => serde_json::from_str(&s).unwrap_or_default(),
            _ => Checkpoint::default(),
        };
        if cp != Checkpoint::default() {
            eprintln!(
                "resuming backfill at department {}/{} ({} learners already done; --restart to start over)",
                cp.department_index + 1,
                departments.len(),
                cp.summary_seen
            );
        }
        if let Some(p) = self.progress {
            // SkillSync's pages carry no total: count the listing first (SkillSync calls
            // only), so the bar can show a total, a rate and an ETA.
            let mut total = 0u64;
            for d in &departments {
                let mut cursor: Option<String> = None;
                loop {
                    let page = self.ss.learners_page(&d.id, cursor.as_deref()).await?;
                    total += page.items.len() as u64;
                    match page.next_cursor {
                        Some(c) => cursor = Some(c),
                        None => break,
                    }
                }
            }
            p.start(total, cp.summary_seen);
        }
        let mut buffer: Vec<Learner> = Vec::new();
        while cp.department_index < departments.len() {
            let dept = &departments[cp.department_index];
            if let Some(p) = self.progress {
                p.department(&dept.name, cp.department_index + 1, departments.len());
            }
            let page = self
                .ss
                .learners_page(&dept.id, cp.cursor.as_deref())
                .await?;
            summary.walked.departments[cp.department_index].2 += page.items.len() as u64;
            buffer.extend(page.items);
            match page.next_cursor {
                Some(c) => cp.cursor = Some(c),
                None => {
                    cp.department_index += 1;
                    cp.cursor = None;
                }
            }
            let last = cp.department_index >= departments.len();
            if buffer.len() >= BATCH || last {
                let batch = std::mem::take(&mut buffer);
                self.process_batch(&batch, &mut summary).await?;
                cp.summary_seen += batch.len() as u64;
                if let Some(p) = self.progress {
                    p.advance(cp.summary_seen);
                }
                if !self.dry_run {
                    store
                        .set_checkpoint(CHECKPOINT, Some(&serde_json::to_string(&cp)?))
                        .await?;
                }
            }
        }
        if !self.dry_run {
            store.set_checkpoint(CHECKPOINT, None).await?;
        }
        if let Some(p) = self.progress {
            p.finish();
        }
        summary.salesforce_calls = self.sf_calls.map(|c| c()).unwrap_or(0) - calls_at_start;
        summary.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(summary)
    }

    /// One batch of learner snapshots through the engine; transient failures are retried
    /// with backoff, then end the run (the checkpoint keeps what was done).
    async fn process_batch(&self, batch: &[Learner], summary: &mut Summary) -> anyhow::Result<()> {
        summary.seen += batch.len() as u64;
        let item = |l: &Learner| Item::Snapshot(SnapshotItem::new(l.clone(), Origin::Backfill));
        let mut results = self.apply(batch.iter().map(item).collect()).await;
        let mut wait = Duration::from_millis(200);
        for attempt in 1..=BATCH_RETRIES {
            let again: Vec<usize> = (0..results.len())
                .filter(|&k| matches!(&results[k], Err(e) if e.is_transient()))
                .collect();
            if again.is_empty() {
                break;
            }
            if attempt == BATCH_RETRIES {
                let e = results[again[0]].as_ref().unwrap_err();
                anyhow::bail!(
                    "backfill stopped ({} learners could not be applied): {e}",
                    again.len()
                );
            }
            tracing::warn!(
                learners = again.len(),
                ?wait,
                "transient failures; retrying them"
            );
            tokio::time::sleep(wait).await;
            wait *= 2;
            let items = again.iter().map(|&k| item(&batch[k])).collect();
            for (k, r) in again.into_iter().zip(self.apply(items).await) {
                results[k] = r;
            }
        }
        for (l, r) in batch.iter().zip(results) {
            let o = match r {
                Ok(o) => o,
                Err(e) => {
                    *summary.failed.entry(e.kind().to_string()).or_default() += 1;
                    continue;
                }
            };
            match (o.class, o.code) {
                (OutcomeClass::Applied, Code::Created) => summary.created += 1,
                (OutcomeClass::Applied, Code::Linked | Code::Relinked) => summary.linked += 1,
                (OutcomeClass::Applied, Code::Moved) => {
                    summary.updated += 1;
                    summary.moved += 1;
                }
                (OutcomeClass::Applied, Code::Unlinked) => summary.unlinked += 1,
                (OutcomeClass::Applied, _) => summary.updated += 1,
                (OutcomeClass::Skipped, c) => {
                    *summary.skipped.entry(c.as_str().into()).or_default() += 1
                }
                (OutcomeClass::Failed, c) => {
                    *summary.failed.entry(c.as_str().into()).or_default() += 1
                }
            }
            if self.dry_run && o.class != OutcomeClass::Skipped {
                let verb = match o.class {
                    OutcomeClass::Failed => "FAIL".to_string(),
                    _ => o.code.as_str().to_uppercase(),
                };
                summary.plan.push(format!(
                    "{verb:<9} {} ({}): {} — {}",
                    l.id, l.username, o.code, o.detail
                ));
            }
        }
        Ok(())
    }

    async fn apply(&self, items: Vec<Item>) -> Vec<Result<Outcome, SyncError>> {
        if self.dry_run {
            self.engine.plan(items).await
        } else {
            self.engine.apply(items).await
        }
    }
}

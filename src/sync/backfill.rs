//! `syncback backfill` (R2–R8 in bulk): walk every in-scope learner in SkillSync and sync
//! them with batched Salesforce work — one SOQL `IN` query for the Accounts and one for the
//! Contacts of a batch, then sObject Collections (200 records per call) for the writes.
//! Resumable: a checkpoint (department index + page cursor) is saved in the store after
//! every batch. `--dry-run` prints the plan without writing to Salesforce.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::{Settings, SyncSettings};
use crate::model::{Learner, LearnerStatus};
use crate::salesforce::{soql, Record, SalesforceApi};
use crate::skillsync::scope::ScopeResolver;
use crate::skillsync::SkillSyncApi;
use crate::store::{LearnerState, LinkState, Store};

use super::rules::{self, AccountTarget, ContactRow, MatchDecision, Permanent};

const CHECKPOINT: &str = "backfill";
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
    pub settings: &'a SyncSettings,
    pub sf: &'a dyn SalesforceApi,
    pub ss: &'a dyn SkillSyncApi,
    pub scope: &'a ScopeResolver,
    pub store: &'a dyn Store,
    pub dry_run: bool,
    pub restart: bool,
    pub progress: bool,
    /// Counts Salesforce calls (for the summary); `None` = not counted.
    pub sf_calls: Option<&'a (dyn Fn() -> u64 + Send + Sync)>,
    /// The Salesforce budget governor's status, shown on the progress bar when it pauses
    /// bulk work (README "Salesforce API budget").
    pub budget: Option<tokio::sync::watch::Receiver<crate::salesforce::BudgetStatus>>,
}

/// Build the clients from configuration and run.
pub async fn run_from_settings(
    settings: &Settings,
    store: Arc<dyn Store>,
    dry_run: bool,
    restart: bool,
) -> anyhow::Result<Summary> {
    // Bulk priority: paused first by the budget governor (salesforce.max_api_share).
    let sf = crate::salesforce::Client::new(&settings.salesforce)?
        .with_priority(crate::salesforce::Priority::Bulk);
    let ss = Arc::new(crate::skillsync::Client::new(&settings.skillsync)?);
    let scope = ScopeResolver::new(
        ss.clone(),
        &settings.sync.source_department_id,
        settings.sync.scope,
        Duration::from_secs(settings.skillsync.department_cache_ttl_secs),
    );
    scope.validate_source().await.map_err(|e| {
        anyhow::anyhow!("refusing to backfill: source department is not valid (R2): {e}")
    })?;
    anyhow::ensure!(
        settings.sync.enabled || dry_run,
        "sync.enabled = false (R1): only `backfill --dry-run` is allowed"
    );
    let counter_sf = sf.clone();
    let calls = move || counter_sf.total_calls();
    Backfill {
        settings: &settings.sync,
        sf: &sf,
        ss: ss.as_ref(),
        scope: &scope,
        store: store.as_ref(),
        dry_run,
        restart,
        progress: true,
        sf_calls: Some(&calls),
        budget: Some(sf.budget().subscribe()),
    }
    .run()
    .await
}

/// One learner's plan inside a batch.
enum Step {
    Skip(&'static str),
    Fail(Permanent),
    /// Update an existing Contact (found by link or matched) with fields + link.
    Update {
        contact: String,
        linked_before: bool,
        moved: bool,
        fields: Record,
    },
    /// Create through the external-id upsert (crash safe).
    Create {
        fields: Record,
    },
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
        summary.walked = Walked {
            source_department_id: self.settings.source_department_id.clone(),
            scope: serde_json::to_value(self.settings.scope)
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
            self.store.checkpoint(CHECKPOINT).await?,
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
        let bar = if self.progress {
            let b = ProgressBar::new_spinner();
            b.set_style(
                ProgressStyle::with_template(
                    "{spinner} {prefix}{pos} learners {msg} ({per_sec}, {elapsed})",
                )
                .expect("static template"),
            );
            b.enable_steady_tick(Duration::from_millis(200));
            b
        } else {
            ProgressBar::hidden()
        };
        bar.set_position(cp.summary_seen);
        let budget_view = self.budget.clone().map(|rx| {
            crate::cli::budget::show_on(bar.clone(), crate::salesforce::Priority::Bulk, rx)
        });
        let mut accounts: HashMap<String, Vec<String>> = HashMap::new();
        let mut buffer: Vec<Learner> = Vec::new();
        while cp.department_index < departments.len() {
            let dept = &departments[cp.department_index];
            bar.set_message(format!(
                "department {} ({}/{})",
                dept.name,
                cp.department_index + 1,
                departments.len()
            ));
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
                self.process_batch(&batch, &mut accounts, &mut summary)
                    .await?;
                cp.summary_seen += batch.len() as u64;
                bar.set_position(cp.summary_seen);
                if !self.dry_run {
                    self.store
                        .set_checkpoint(CHECKPOINT, Some(&serde_json::to_string(&cp)?))
                        .await?;
                }
            }
        }
        if !self.dry_run {
            self.store.set_checkpoint(CHECKPOINT, None).await?;
        }
        if let Some(v) = budget_view {
            v.abort();
        }
        bar.finish_and_clear();
        summary.salesforce_calls = self.sf_calls.map(|c| c()).unwrap_or(0) - calls_at_start;
        summary.elapsed_ms = started.elapsed().as_millis() as u64;
        Ok(summary)
    }

    async fn process_batch(
        &self,
        batch: &[Learner],
        accounts: &mut HashMap<String, Vec<String>>,
        summary: &mut Summary,
    ) -> anyhow::Result<()> {
        summary.seen += batch.len() as u64;
        let s = self.settings;
        // Learners that are inactive or out of scope (the department listing is by
        // department, but a learner may carry another id) are skipped.
        let mut active: Vec<&Learner> = Vec::new();
        for l in batch {
            if l.status != LearnerStatus::Active {
                *summary.skipped.entry("inactive".into()).or_default() += 1;
            } else if !self.scope.in_scope(l.department_id.as_deref()).await? {
                *summary.skipped.entry("out_of_scope".into()).or_default() += 1;
            } else {
                active.push(l);
            }
        }
        if active.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = active.iter().map(|l| l.id.clone()).collect();
        let states: HashMap<String, LearnerState> = self
            .store
            .learners(&ids)
            .await?
            .into_iter()
            .map(|st| (st.learner_id.clone(), st))
            .collect();

        // R4: every Account name of the batch in one query (IN), cached for the run.
        let mut targets: Vec<Result<AccountTarget, Permanent>> = Vec::new();
        let mut wanted: Vec<String> = Vec::new();
        for l in &active {
            let t = rules::account_target(s, l);
            if let Ok(AccountTarget::Name(n)) = &t {
                if !accounts.contains_key(&n.to_lowercase())
                    && !wanted.iter().any(|w| w.eq_ignore_ascii_case(n))
                {
                    wanted.push(n.clone());
                }
            }
            targets.push(t);
        }
        for chunk in wanted.chunks(200) {
            let q = format!(
                "SELECT Id, Name FROM Account WHERE {}",
                soql::in_list("Name", chunk)
            );
            for n in chunk {
                accounts.entry(n.to_lowercase()).or_default();
            }
            for r in self.sf.query(&q).await? {
                if let (Some(id), Some(name)) = (
                    r.get("Id").and_then(Value::as_str),
                    r.get("Name").and_then(Value::as_str),
                ) {
                    accounts
                        .entry(name.to_lowercase())
                        .or_default()
                        .push(id.to_string());
                }
            }
        }

        // R5/R8: the batch's Contacts, by match field or link, in one query.
        let link = &s.link_field;
        let mut rows: Vec<ContactRow> = Vec::new();
        let mut account_of: HashMap<String, String> = HashMap::new();
        for chunk in active.chunks(BATCH) {
            let usernames: Vec<&str> = chunk.iter().map(|l| l.username.as_str()).collect();
            let lids: Vec<&str> = chunk.iter().map(|l| l.id.as_str()).collect();
            let mut fields = vec!["Id", "AccountId", link.as_str()];
            if s.match_field != *link && s.match_field != "Id" && s.match_field != "AccountId" {
                fields.push(s.match_field.as_str());
            }
            let q = format!(
                "SELECT {} FROM Contact WHERE {} OR {}",
                fields.join(", "),
                soql::in_list(&s.match_field, &usernames),
                soql::in_list(link, &lids)
            );
            for r in self.sf.query(&q).await? {
                if let Some(row) = ContactRow::from_record(&r, link, &s.match_field) {
                    if let Some(a) = r.get("AccountId").and_then(Value::as_str) {
                        account_of.insert(row.id.clone(), a.to_string());
                    }
                    rows.push(row);
                }
            }
        }

        // Decide each learner.
        let mut claimed: HashSet<String> = HashSet::new();
        let mut steps: Vec<(&Learner, Step)> = Vec::new();
        for (l, target) in active.iter().zip(targets) {
            let step = (|| {
                let account = match target? {
                    AccountTarget::Id(id) => id,
                    AccountTarget::Name(n) => rules::pick_account(
                        &n,
                        accounts
                            .get(&n.to_lowercase())
                            .map(Vec::as_slice)
                            .unwrap_or(&[]),
                    )?,
                };
                let mine: Vec<ContactRow> = rows
                    .iter()
                    .filter(|r| {
                        r.link
                            .as_deref()
                            .is_some_and(|x| x.eq_ignore_ascii_case(&l.id))
                            || r.match_value
                                .as_deref()
                                .is_some_and(|v| v.to_lowercase() == l.username.to_lowercase())
                    })
                    .cloned()
                    .collect();
                let mut fields = rules::contact_fields(s, l, &account);
                fields.insert(link.clone(), json!(l.id));
                Ok(match rules::decide_match(&l.id, &l.username, &mine)? {
                    MatchDecision::Linked(c) | MatchDecision::Link(c) => {
                        if !claimed.insert(c.clone()) {
                            return Err(Permanent::new(
                                "contact_conflict",
                                format!("Contact {c} matches several learners of this backfill"),
                            ));
                        }
                        let linked_before = mine.iter().any(|r| r.id == c && r.link.is_some());
                        let moved = account_of.get(&c).is_some_and(|a| *a != account);
                        Step::Update {
                            contact: c,
                            linked_before,
                            moved,
                            fields,
                        }
                    }
                    MatchDecision::Create => Step::Create { fields },
                })
            })();
            let step = match step {
                Ok(st) => st,
                Err(p) => Step::Fail(p),
            };
            // A learner the store knows as deactivated stays unlinked (R9).
            let step = match states.get(&l.id).map(|st| st.link) {
                Some(LinkState::Deactivated) => Step::Skip("deactivated"),
                _ => step,
            };
            steps.push((l, step));
        }

        // Write: Collections update for existing Contacts, Collections upsert for new ones.
        let mut updates: Vec<(usize, Record)> = Vec::new();
        let mut creates: Vec<(usize, Record)> = Vec::new();
        for (i, (l, step)) in steps.iter().enumerate() {
            match step {
                Step::Skip(why) => *summary.skipped.entry((*why).into()).or_default() += 1,
                Step::Fail(p) => {
                    *summary.failed.entry(p.code.into()).or_default() += 1;
                    if self.dry_run {
                        summary.plan.push(format!(
                            "FAIL    {} ({}): {} — {}",
                            l.id, l.username, p.code, p.detail
                        ));
                    } else {
                        self.record_failure(l, states.get(&l.id), p).await?;
                    }
                }
                Step::Update {
                    contact,
                    linked_before,
                    moved,
                    fields,
                } => {
                    if self.dry_run {
                        let verb = if *linked_before { "UPDATE" } else { "LINK  " };
                        let mv = if *moved {
                            format!(
                                " and MOVE to Account {}",
                                fields["AccountId"].as_str().unwrap_or("")
                            )
                        } else {
                            String::new()
                        };
                        summary.plan.push(format!(
                            "{verb}  {} ({}) → Contact {contact}{mv}",
                            l.id, l.username
                        ));
                    }
                    let mut r = fields.clone();
                    r.insert("attributes".into(), json!({"type": "Contact"}));
                    r.insert("Id".into(), json!(contact));
                    updates.push((i, r));
                }
                Step::Create { fields } => {
                    if self.dry_run {
                        summary.plan.push(format!(
                            "CREATE  {} ({}) under Account {}",
                            l.id,
                            l.username,
                            fields["AccountId"].as_str().unwrap_or("")
                        ));
                    }
                    let mut r = fields.clone();
                    r.insert("attributes".into(), json!({"type": "Contact"}));
                    creates.push((i, r));
                }
            }
        }
        if self.dry_run {
            for (i, _) in &updates {
                if let Step::Update {
                    linked_before,
                    moved,
                    ..
                } = &steps[*i].1
                {
                    self.count_update(summary, *linked_before, *moved);
                }
            }
            summary.created += creates.len() as u64;
            return Ok(());
        }
        let mut done: Vec<LearnerState> = Vec::new();
        if !updates.is_empty() {
            let records: Vec<Record> = updates.iter().map(|(_, r)| r.clone()).collect();
            let results = self.sf.update_many(&records, false).await?;
            for ((i, r), res) in updates.iter().zip(results) {
                let (l, step) = &steps[*i];
                if res.success {
                    if let Step::Update {
                        linked_before,
                        moved,
                        ..
                    } = step
                    {
                        self.count_update(summary, *linked_before, *moved);
                    }
                    done.push(linked_state(l, r));
                } else {
                    let p = save_failure(&res.errors);
                    *summary.failed.entry(p.code.into()).or_default() += 1;
                    self.record_failure(l, states.get(&l.id), &p).await?;
                }
            }
        }
        if !creates.is_empty() {
            let records: Vec<Record> = creates.iter().map(|(_, r)| r.clone()).collect();
            let results = self
                .sf
                .upsert_many("Contact", link, &records, false)
                .await?;
            for ((i, r), res) in creates.iter().zip(results) {
                let (l, _) = &steps[*i];
                if res.success {
                    if res.created == Some(false) {
                        summary.updated += 1;
                    } else {
                        summary.created += 1;
                    }
                    let mut r = r.clone();
                    if let Some(id) = &res.id {
                        r.insert("Id".into(), json!(id));
                    }
                    done.push(linked_state(l, &r));
                } else {
                    let p = save_failure(&res.errors);
                    *summary.failed.entry(p.code.into()).or_default() += 1;
                    self.record_failure(l, states.get(&l.id), &p).await?;
                }
            }
        }
        for st in &done {
            self.store.put_learner(st).await?;
        }
        Ok(())
    }

    fn count_update(&self, summary: &mut Summary, linked_before: bool, moved: bool) {
        if linked_before {
            summary.updated += 1;
            if moved {
                summary.moved += 1;
            }
        } else {
            summary.linked += 1;
            if moved {
                summary.moved += 1;
            }
        }
    }

    async fn record_failure(
        &self,
        l: &Learner,
        state: Option<&LearnerState>,
        p: &Permanent,
    ) -> anyhow::Result<()> {
        let base = state.cloned().unwrap_or(LearnerState {
            learner_id: l.id.clone(),
            contact_id: None,
            link: LinkState::Unlinked,
            account_id: None,
            last_outcome: None,
            last_error: None,
            updated_at: Utc::now(),
        });
        self.store
            .put_learner(&LearnerState {
                last_outcome: Some(format!("backfill failed: {}", p.code)),
                last_error: Some(p.detail.clone()),
                updated_at: Utc::now(),
                ..base
            })
            .await?;
        Ok(())
    }
}

fn linked_state(l: &Learner, r: &Record) -> LearnerState {
    LearnerState {
        learner_id: l.id.clone(),
        contact_id: r.get("Id").and_then(Value::as_str).map(String::from),
        link: LinkState::Linked,
        account_id: r.get("AccountId").and_then(Value::as_str).map(String::from),
        last_outcome: Some("applied: backfill".into()),
        last_error: None,
        updated_at: Utc::now(),
    }
}

fn save_failure(errors: &[crate::salesforce::ApiError]) -> Permanent {
    let detail = errors
        .iter()
        .map(|e| format!("{}: {}", e.error_code, e.message))
        .collect::<Vec<_>>()
        .join("; ");
    Permanent::new("salesforce_rejected", detail)
}

//! The executor (docs/rules.md "Flow"): one round of a batch — at most one item per
//! learner, so the round's items are independent. It loads what the planner needs with
//! batched reads (stored state, scope answers, Accounts through one SOQL `IN` query,
//! candidate Contacts through another), asks the planner ([`super::plan`]) for a decision
//! per item, performs the decisions with batched writes ([`super::write`]), and commits
//! every item's outcome in one store transaction.

use std::collections::HashMap;

use chrono::Utc;

use crate::config::SyncSettings;
use crate::model::{EntityKind, Learner, LearnerStatus};
use crate::store::{Commit, EventRecord};

use super::engine::Engine;
use super::item::{Item, SnapshotItem};
use super::outcome::{Code, Outcome, OutcomeClass, Permanent, StepError, SyncError};
use super::plan::{self, ChildOp, Early, LearnerStep};
use super::rules;
use super::state::{EntityVersion, LearnerState};

/// One item of a round.
pub(super) struct Slot<'a> {
    pub idx: usize,
    pub item: &'a Item,
    /// Settled without a write (R12 within the batch).
    pub early: Option<Early>,
}

/// Where an item stands while the round is worked out.
pub(super) enum Work {
    Done(Result<Outcome, SyncError>),
    /// A learner to write (learner events, snapshots, a child's first sync).
    Learner(Box<LearnerWork>),
    /// A child record of a linked learner.
    Child(ChildOp),
}

pub(super) struct LearnerWork {
    pub learner: Learner,
    pub active: bool,
    pub state: Option<LearnerState>,
    pub snapshot: Option<SnapshotItem>,
    /// A child event whose learner was first synced from its SkillSync snapshot.
    pub then_child: bool,
    pub step: Option<LearnerStep>,
    pub known_gone: bool,
    pub in_scope: bool,
    /// What the step did (filled after the writes).
    pub result: Option<Result<Settled, StepError>>,
}

impl LearnerWork {
    fn new(learner: Learner, active: bool, state: Option<LearnerState>) -> Box<Self> {
        Box::new(LearnerWork {
            learner,
            active,
            state,
            snapshot: None,
            then_child: false,
            step: None,
            known_gone: false,
            in_scope: true,
            result: None,
        })
    }
}

/// What a learner's step came to: (code, detail, new state, class).
pub(super) type Settled = (Code, String, Option<LearnerState>, OutcomeClass);

/// A child write's result: (code, detail).
pub(super) type ChildResult = Result<(Code, String), StepError>;

/// What a round produced for each item, in slot order.
pub(super) type RoundResult = Vec<(usize, Result<Outcome, SyncError>)>;

impl Engine {
    /// Apply one round (at most one item per learner).
    pub(super) async fn round(
        &self,
        s: &SyncSettings,
        slots: &[Slot<'_>],
        dry_run: bool,
    ) -> RoundResult {
        let mut work: Vec<Work> = Vec::with_capacity(slots.len());
        let mut commits: Vec<Vec<Commit>> = vec![Vec::new(); slots.len()];
        let ids: Vec<String> = slots
            .iter()
            .filter_map(|sl| sl.item.learner_id().map(String::from))
            .collect();
        let states: HashMap<String, LearnerState> = match self.store.learners(&ids).await {
            Ok(v) => v.into_iter().map(|s| (s.learner_id.clone(), s)).collect(),
            Err(e) => {
                let e = SyncError::from(e);
                return slots.iter().map(|sl| (sl.idx, Err(e.clone()))).collect();
            }
        };

        // Load: R1, R12, R11's first sync.
        for (k, sl) in slots.iter().enumerate() {
            let w = self.prepare(s, sl, &states, &mut commits[k]).await;
            work.push(w);
        }
        // Scope (R3) for the learners to write.
        for w in work.iter_mut() {
            if let Work::Learner(lw) = w {
                if let Err(e) = self.scope_of(s, lw).await {
                    *w = Work::Done(Err(e));
                }
            }
        }
        // Plan, then write; a remembered Contact found deleted is planned again (R10).
        let mut known_gone_pass = false;
        loop {
            let plan_rows = self.load_and_plan(s, &mut work, known_gone_pass).await;
            if let Err(e) = plan_rows {
                for w in work.iter_mut() {
                    if matches!(w, Work::Learner(lw) if lw.result.is_none()) {
                        *w = Work::Done(Err(e.clone()));
                    }
                }
                break;
            }
            if dry_run {
                planned_only(&mut work);
                break;
            }
            let again = self.write_contacts(s, &mut work).await;
            if !again || known_gone_pass {
                break;
            }
            known_gone_pass = true;
        }
        if !dry_run {
            self.finish_learners(&mut work).await;
        }
        // Children of synced learners (R11), after their Contacts exist.
        for (k, w) in work.iter_mut().enumerate() {
            if let Work::Learner(lw) = w {
                if lw.then_child {
                    if let Item::Event(env) = slots[k].item {
                        let item = slots[k].item;
                        *w = match lw.result.clone() {
                            // The learner's first sync failed: so does the event (R11).
                            Some(Err(StepError::Transient(e))) => Work::Done(Err(e)),
                            Some(Err(StepError::Permanent(p))) => {
                                commits[k].push(self.failure(item, &p, None));
                                Work::Done(Ok(outcome(
                                    OutcomeClass::Failed,
                                    p.code,
                                    p.detail,
                                    item,
                                )))
                            }
                            synced => {
                                let state = match synced {
                                    Some(Ok((_, _, st, _))) => st,
                                    _ => None,
                                };
                                self.commit_first_sync(lw, env, &mut commits[k]);
                                match plan::plan_child(env, state.as_ref()) {
                                    Ok(op) => Work::Child(op),
                                    Err((code, detail)) => {
                                        let detail = format!(
                                            "learner first synced from its snapshot; {detail}"
                                        );
                                        commits[k].push(self.record(
                                            item,
                                            code.class(),
                                            code,
                                            &detail,
                                            None,
                                            true,
                                        ));
                                        Work::Done(Ok(outcome(code.class(), code, detail, item)))
                                    }
                                }
                            }
                        };
                    }
                }
            }
        }
        let child_results = if dry_run {
            planned_children(&work)
        } else {
            self.write_children(&work).await
        };

        // Outcomes, committed in one transaction.
        let mut out: Vec<(usize, Result<Outcome, SyncError>)> = Vec::with_capacity(slots.len());
        for (k, (sl, w)) in slots.iter().zip(work).enumerate() {
            let r = match w {
                Work::Done(r) => r,
                Work::Learner(lw) => match lw.result.expect("learner settled") {
                    Ok((code, detail, state, class)) => {
                        commits[k].push(self.record(sl.item, class, code, &detail, state, true));
                        Ok(outcome(class, code, detail, sl.item))
                    }
                    Err(StepError::Transient(e)) => Err(e),
                    Err(StepError::Permanent(p)) => {
                        let st = lw.state.clone();
                        commits[k].push(self.failure(sl.item, &p, st));
                        Ok(outcome(OutcomeClass::Failed, p.code, p.detail, sl.item))
                    }
                },
                Work::Child(_) => match child_results.get(&k).cloned() {
                    Some(Ok((code, detail))) => {
                        commits[k].push(self.record(
                            sl.item,
                            OutcomeClass::Applied,
                            code,
                            &detail,
                            None,
                            true,
                        ));
                        Ok(outcome(OutcomeClass::Applied, code, detail, sl.item))
                    }
                    Some(Err(StepError::Transient(e))) => Err(e),
                    Some(Err(StepError::Permanent(p))) => {
                        let st = sl.item.learner_id().and_then(|l| states.get(l)).cloned();
                        commits[k].push(self.failure(sl.item, &p, st));
                        Ok(outcome(OutcomeClass::Failed, p.code, p.detail, sl.item))
                    }
                    None => Err(SyncError::transient(
                        "salesforce",
                        "child record not written",
                    )),
                },
            };
            if r.is_err() {
                commits[k].clear();
            }
            out.push((sl.idx, r));
        }
        let all: Vec<Commit> = commits.into_iter().flatten().collect();
        if !all.is_empty() && !dry_run {
            if let Err(e) = self.store.commit_many(&all).await {
                let e = SyncError::from(e);
                return out
                    .into_iter()
                    .map(|(i, r)| (i, r.and(Err(e.clone()))))
                    .collect();
            }
        }
        out
    }

    /// R1, R12 (stored versions and processed ids), R11's first sync of an unknown learner.
    async fn prepare(
        &self,
        s: &SyncSettings,
        sl: &Slot<'_>,
        states: &HashMap<String, LearnerState>,
        commits: &mut Vec<Commit>,
    ) -> Work {
        let lid = sl.item.learner_id().unwrap_or("").to_string();
        let state = states.get(&lid).cloned();
        match sl.item {
            Item::Snapshot(snap) => {
                if !s.enabled {
                    let detail = "Inbound Learner Sync is off (R1)".to_string();
                    return self.skip(commits, sl.item, Code::SyncDisabled, detail, false);
                }
                let active = snap.learner.status == LearnerStatus::Active;
                let mut lw = LearnerWork::new(snap.learner.clone(), active, state);
                lw.snapshot = Some(snap.clone());
                Work::Learner(lw)
            }
            Item::Event(env) => {
                let Some((kind, entity_id)) = env.entity() else {
                    return Work::Done(Err(SyncError::BadEvent("event without an entity".into())));
                };
                let early = match &sl.early {
                    Some(e) => Some(e.clone()),
                    None => {
                        let processed = match self.store.is_processed(&env.id).await {
                            Ok(p) => p,
                            Err(e) => return Work::Done(Err(e.into())),
                        };
                        let last = match self.store.entity_version(kind, entity_id).await {
                            Ok(v) => v,
                            Err(e) => return Work::Done(Err(e.into())),
                        };
                        plan::precheck(s.enabled, processed, last.as_ref(), env)
                    }
                };
                if let Some(a) = early {
                    return self.skip(commits, sl.item, a.code, a.detail, true);
                }
                if kind == EntityKind::Learner {
                    let learner = env
                        .data
                        .learner
                        .clone()
                        .expect("schema requires data.learner");
                    let active = rules::is_active(env.event_type, &learner);
                    return Work::Learner(LearnerWork::new(learner, active, state));
                }
                if state.is_some() {
                    return match plan::plan_child(env, state.as_ref()) {
                        Ok(op) => Work::Child(op),
                        Err((code, detail)) => {
                            let class = code.class();
                            if class == OutcomeClass::Failed {
                                let p = Permanent::new(code, detail.clone());
                                commits.push(self.failure(sl.item, &p, state));
                                return Work::Done(Ok(outcome(class, code, detail, sl.item)));
                            }
                            commits.push(self.record(sl.item, class, code, &detail, None, true));
                            Work::Done(Ok(outcome(code.class(), code, detail, sl.item)))
                        }
                    };
                }
                // R11: a learner not yet synced is first synced from its SkillSync snapshot.
                match self.ss.learner(&lid).await {
                    Ok(Some(snapshot)) => {
                        let active = snapshot.status == LearnerStatus::Active;
                        let mut lw = LearnerWork::new(snapshot, active, None);
                        lw.then_child = true;
                        Work::Learner(lw)
                    }
                    Ok(None) => {
                        let detail = format!("learner {lid} does not exist in SkillSync");
                        self.skip(commits, sl.item, Code::LearnerUnknown, detail, true)
                    }
                    Err(e) => match StepError::from(e) {
                        StepError::Transient(e) => Work::Done(Err(e)),
                        StepError::Permanent(p) => {
                            commits.push(self.failure(sl.item, &p, None));
                            Work::Done(Ok(outcome(OutcomeClass::Failed, p.code, p.detail, sl.item)))
                        }
                    },
                }
            }
        }
    }

    async fn scope_of(&self, s: &SyncSettings, lw: &mut LearnerWork) -> Result<(), SyncError> {
        // Inactive learners are unlinked wherever they are: scope is not asked.
        if !lw.active {
            return Ok(());
        }
        lw.in_scope = self
            .scope
            .in_scope(s, lw.learner.department_id.as_deref())
            .await
            .map_err(|e| match StepError::from(e) {
                StepError::Transient(e) => e,
                StepError::Permanent(p) => SyncError::transient("skillsync", p.detail),
            })?;
        Ok(())
    }

    /// The outcome record of an item.
    /// `item` skipped with `code` (no learner state written): its record, and its outcome.
    fn skip(
        &self,
        commits: &mut Vec<Commit>,
        item: &Item,
        code: Code,
        detail: String,
        mark_processed: bool,
    ) -> Work {
        commits.push(self.record(
            item,
            OutcomeClass::Skipped,
            code,
            &detail,
            None,
            mark_processed,
        ));
        Work::Done(Ok(outcome(OutcomeClass::Skipped, code, detail, item)))
    }

    fn record(
        &self,
        item: &Item,
        class: OutcomeClass,
        code: Code,
        detail: &str,
        learner: Option<LearnerState>,
        mark_processed: bool,
    ) -> Commit {
        let now = Utc::now();
        let learner = learner.map(|mut st| {
            st.updated_at = now;
            st.last_outcome = Some(format!("{}: {}", class.as_str(), code));
            st.last_error = None;
            st
        });
        let (record, entity, processed) = match item {
            Item::Event(env) => (
                EventRecord {
                    event_id: env.id.clone(),
                    event_type: env.event_type.as_str().to_string(),
                    learner_id: env.learner_id().unwrap_or("").to_string(),
                    occurred_at: env.occurred_at,
                    class,
                    code: code.as_str().to_string(),
                    detail: detail.to_string(),
                    recorded_at: now,
                },
                // Early skips (duplicate, stale, toggle off) do not move the entity's version.
                (!matches!(code, Code::Duplicate | Code::Stale | Code::SyncDisabled))
                    .then(|| env.entity())
                    .flatten()
                    .map(|(k, id)| {
                        (
                            k,
                            id.to_string(),
                            EntityVersion {
                                occurred_at: env.occurred_at,
                                event_id: env.id.clone(),
                            },
                        )
                    }),
                mark_processed,
            ),
            Item::Snapshot(snap) => (
                EventRecord {
                    event_id: format!(
                        "{}:{}:{}",
                        snap.origin.as_str(),
                        snap.learner.id,
                        uuid::Uuid::now_v7()
                    ),
                    event_type: snap.origin.event_type(),
                    learner_id: snap.learner.id.clone(),
                    occurred_at: snap.learner.updated_at,
                    class,
                    code: code.as_str().to_string(),
                    detail: format!("[{}] {}", snap.origin.describe(), detail),
                    recorded_at: now,
                },
                // Older learner events stay stale after the snapshot (R12).
                (code != Code::SyncDisabled).then(|| {
                    (
                        EntityKind::Learner,
                        snap.learner.id.clone(),
                        EntityVersion {
                            occurred_at: snap.learner.updated_at,
                            event_id: "~snapshot".into(),
                        },
                    )
                }),
                false,
            ),
        };
        Commit {
            record,
            mark_processed: processed,
            entity,
            learner,
        }
    }

    /// A permanent failure: recorded as failed (not marked processed, so a DLQ replay
    /// applies it; the entity's version does not move).
    fn failure(&self, item: &Item, p: &Permanent, state: Option<LearnerState>) -> Commit {
        let lid = item.learner_id().unwrap_or("");
        let mut c = self.record(item, OutcomeClass::Failed, p.code, &p.detail, None, false);
        c.entity = None;
        c.learner = Some(LearnerState {
            last_outcome: Some(format!("failed: {}", p.code)),
            last_error: Some(p.detail.clone()),
            updated_at: Utc::now(),
            ..state.unwrap_or_else(|| LearnerState::blank(lid))
        });
        c
    }

    /// R11: the learner of a child event was first synced from its SkillSync snapshot:
    /// record that (its version keeps older learner events stale, R12).
    fn commit_first_sync(
        &self,
        lw: &LearnerWork,
        env: &crate::model::Envelope,
        commits: &mut Vec<Commit>,
    ) {
        let Some(Ok((code, detail, Some(st), class))) = &lw.result else {
            return;
        };
        let now = Utc::now();
        commits.push(Commit {
            record: EventRecord {
                event_id: format!("snapshot:{}:{}", lw.learner.id, env.id),
                event_type: "learner.snapshot".into(),
                learner_id: lw.learner.id.clone(),
                occurred_at: lw.learner.updated_at,
                class: *class,
                code: code.as_str().into(),
                detail: detail.clone(),
                recorded_at: now,
            },
            mark_processed: false,
            entity: Some((
                EntityKind::Learner,
                lw.learner.id.clone(),
                EntityVersion {
                    occurred_at: lw.learner.updated_at,
                    event_id: "~snapshot".into(),
                },
            )),
            learner: Some(LearnerState {
                last_outcome: Some(format!("{}: {}", class.as_str(), code)),
                updated_at: now,
                ..st.clone()
            }),
        });
    }
}

/// A planned step as the learner's result: what it will have done once written (a
/// create's Contact id is filled in by the caller).
pub(super) fn step_result(step: Option<LearnerStep>) -> Result<Settled, StepError> {
    match step {
        Some(LearnerStep::Fail(p)) => Err(StepError::Permanent(p)),
        Some(LearnerStep::Skip {
            code,
            detail,
            state,
            ..
        }) => Ok((code, detail, state, OutcomeClass::Skipped)),
        Some(LearnerStep::Write {
            code,
            detail,
            state,
            ..
        }) => Ok((code, detail, Some(state), OutcomeClass::Applied)),
        None => Err(StepError::Transient(SyncError::transient(
            "salesforce",
            "learner not planned",
        ))),
    }
}

/// Dry run: the planned steps are the results; nothing is written.
fn planned_only(work: &mut [Work]) {
    for w in work.iter_mut() {
        let Work::Learner(lw) = w else { continue };
        if lw.result.is_none() {
            lw.result = Some(step_result(lw.step.clone()));
        }
    }
}

/// Dry run: the children that would be written.
fn planned_children(work: &[Work]) -> HashMap<usize, ChildResult> {
    work.iter()
        .enumerate()
        .filter_map(|(i, w)| match w {
            Work::Child(ChildOp::Upsert { object, ext_id, .. }) => Some((
                i,
                Ok((
                    Code::Upserted,
                    format!("{object} {ext_id} would be upserted (R11)"),
                )),
            )),
            Work::Child(ChildOp::Delete { object, ext_id, .. }) => Some((
                i,
                Ok((
                    Code::Deleted,
                    format!("{object} {ext_id} would be deleted (R11)"),
                )),
            )),
            _ => None,
        })
        .collect()
}

fn outcome(class: OutcomeClass, code: Code, detail: String, item: &Item) -> Outcome {
    Outcome {
        class,
        code,
        detail,
        learner_id: item.learner_id().unwrap_or("").to_string(),
    }
}

//! The executor's Contact work for one round (docs/rules.md R3–R10): batched reads of
//! Accounts and candidate Contacts, the planner's decisions, batched Contact writes.

use std::collections::{HashMap, HashSet};

use serde_json::{json, Value};
use tracing::info;

use crate::config::SyncSettings;
use crate::salesforce::{soql, Record};

use super::engine::Engine;
use super::execute::Work;
use super::outcome::{Code, Permanent, StepError, SyncError};
use super::plan::{self, ChildrenPlan, Claims, ContactOp, LearnerInput, LearnerStep};
use super::rules::{self, AccountTarget, ContactRow, LearnerPlan};
use super::write::{self, RecordError, RecordResult};

/// SOQL text per query, well inside Salesforce's statement and request-line limits.
const SOQL_BUDGET: usize = 12_000;

/// What the Contact query must find for one learner.
#[derive(Default)]
struct Wants {
    ids: Vec<String>,
    matches: Vec<String>,
    links: Vec<String>,
}

impl Engine {
    /// Load Accounts and candidate Contacts for the round's learners still to plan, and plan them.
    pub(super) async fn load_and_plan(
        &self,
        s: &SyncSettings,
        work: &mut [Work],
        only_known_gone: bool,
    ) -> Result<(), SyncError> {
        let todo: Vec<usize> = work
            .iter()
            .enumerate()
            .filter(|(_, w)| {
                matches!(w, Work::Learner(lw) if lw.result.is_none()
                    && (!only_known_gone || lw.known_gone))
            })
            .map(|(i, _)| i)
            .collect();
        if todo.is_empty() {
            return Ok(());
        }
        let mut names: Vec<String> = Vec::new();
        let mut wants = Wants::default();
        for &i in &todo {
            let Work::Learner(lw) = &work[i] else {
                continue;
            };
            let l = &lw.learner;
            let snapshot = lw.snapshot.as_ref();
            if snapshot.is_some() {
                wants.links.push(l.id.clone());
            }
            if let Some(h) = snapshot.and_then(|x| x.contact_hint.as_ref()) {
                wants.ids.push(h.clone());
            }
            let state = lw.state.as_ref().filter(|_| !lw.known_gone);
            if let LearnerPlan::Sync { relink, .. } =
                rules::plan_learner(lw.active, lw.in_scope, state)
            {
                if let Ok(AccountTarget::Name(n)) = rules::account_target(s, l) {
                    if self.accounts.get(&n).is_none()
                        && !names.iter().any(|x| x.eq_ignore_ascii_case(&n))
                    {
                        names.push(n);
                    }
                }
                let was_linked = relink.as_deref().is_some_and(|k| {
                    state
                        .and_then(|st| st.linked_contact())
                        .is_some_and(|c| c.eq_ignore_ascii_case(k))
                });
                if !was_linked {
                    if let Some(k) = relink {
                        wants.ids.push(k);
                    }
                    wants.matches.push(l.username.clone());
                    wants.links.push(l.id.clone());
                }
            }
        }
        let accounts = self.load_accounts(&names).await?;
        let rows = self.load_contacts(s, &wants).await?;
        // Each learner sees only its own candidate rows (by Id, link or match value).
        let mut index: HashMap<String, Vec<usize>> = HashMap::new();
        for (k, r) in rows.iter().enumerate() {
            let keys = [Some(&r.id), r.link.as_ref(), r.match_value.as_ref()];
            for key in keys.into_iter().flatten() {
                let v = index.entry(key.to_lowercase()).or_default();
                if v.last() != Some(&k) {
                    v.push(k);
                }
            }
        }
        let mut claims = Claims::default();
        for &i in &todo {
            let Work::Learner(lw) = &mut work[i] else {
                continue;
            };
            let account = match rules::account_target(s, &lw.learner) {
                Err(p) => Err(p),
                Ok(AccountTarget::Id(id)) => Ok(id),
                Ok(AccountTarget::Name(n)) => match self.accounts.get(&n) {
                    Some(id) => Ok(id),
                    None => {
                        let ids = accounts.get(&n.to_lowercase()).cloned().unwrap_or_default();
                        let picked = rules::pick_account(&n, &ids);
                        if let Ok(id) = &picked {
                            self.accounts.put(&n, id);
                        }
                        picked
                    }
                },
            };
            let snapshot = lw.snapshot.as_ref();
            let mut mine: Vec<usize> = Vec::new();
            let hint = snapshot.and_then(|x| x.contact_hint.as_ref());
            let known = lw.state.as_ref().and_then(|st| st.contact_id.as_ref());
            for key in [
                Some(&lw.learner.id),
                Some(&lw.learner.username),
                hint,
                known,
            ]
            .into_iter()
            .flatten()
            {
                mine.extend(index.get(&key.to_lowercase()).into_iter().flatten());
            }
            mine.sort_unstable();
            mine.dedup();
            let my_rows: Vec<ContactRow> = mine.into_iter().map(|k| rows[k].clone()).collect();
            let input = LearnerInput {
                learner: &lw.learner,
                active: lw.active,
                in_scope: lw.in_scope,
                state: lw.state.as_ref(),
                account,
                rows: &my_rows,
                links_loaded: snapshot.is_some(),
                hint: snapshot.and_then(|x| x.contact_hint.as_deref()),
                keep_fields: snapshot.is_some_and(|x| x.keep_fields),
                children: snapshot.and_then(|x| x.children.as_ref()),
                known_gone: lw.known_gone,
            };
            lw.step = Some(plan::plan_learner(s, &input, &mut claims));
        }
        Ok(())
    }

    /// R4: Account Name → Ids for the names not cached, one SOQL `IN` query per chunk.
    async fn load_accounts(
        &self,
        names: &[String],
    ) -> Result<HashMap<String, Vec<String>>, SyncError> {
        let mut out: HashMap<String, Vec<String>> = HashMap::new();
        for chunk in soql::chunks_by_len(names, SOQL_BUDGET) {
            let q = format!(
                "SELECT Id, Name FROM Account WHERE {}",
                soql::in_list("Name", chunk)
            );
            for r in self.sf.query(&q).await.map_err(step_err)? {
                if let (Some(id), Some(name)) = (
                    r.get("Id").and_then(Value::as_str),
                    r.get("Name").and_then(Value::as_str),
                ) {
                    out.entry(name.to_lowercase())
                        .or_default()
                        .push(id.to_string());
                }
            }
        }
        Ok(out)
    }

    /// R5/R8/R10: the Contacts by Id (remembered, chosen), by match value and by link.
    async fn load_contacts(
        &self,
        s: &SyncSettings,
        w: &Wants,
    ) -> Result<Vec<ContactRow>, SyncError> {
        let link = &s.link_field;
        let mut fields = vec!["Id", "AccountId", link.as_str()];
        if s.match_field != *link && s.match_field != "Id" && s.match_field != "AccountId" {
            fields.push(s.match_field.as_str());
        }
        let mut rows: Vec<ContactRow> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        let parts: [(&str, &Vec<String>); 3] = [
            ("Id", &w.ids),
            (s.match_field.as_str(), &w.matches),
            (link.as_str(), &w.links),
        ];
        // One query holds all three lists while they fit; longer lists are chunked.
        let mut pending: Vec<(&str, Vec<String>)> = Vec::new();
        for (field, values) in parts {
            for chunk in soql::chunks_by_len(values, SOQL_BUDGET / 3) {
                pending.push((field, chunk.to_vec()));
            }
        }
        let mut start = 0;
        while start < pending.len() {
            let mut conds = Vec::new();
            let mut len = 0;
            let mut end = start;
            while end < pending.len() {
                let c = soql::in_list(pending[end].0, &pending[end].1);
                if !conds.is_empty() && len + c.len() > SOQL_BUDGET {
                    break;
                }
                len += c.len();
                conds.push(c);
                end += 1;
            }
            start = end;
            let q = format!(
                "SELECT {} FROM Contact WHERE {}",
                fields.join(", "),
                conds.join(" OR ")
            );
            for r in self.sf.query(&q).await.map_err(step_err)? {
                if let Some(row) = ContactRow::from_record(&r, link, &s.match_field) {
                    if seen.insert(row.id.clone()) {
                        rows.push(row);
                    }
                }
            }
        }
        Ok(rows)
    }

    /// Perform the planned Contact writes: unlinks (and stray links) first — the link field
    /// is unique, so a Contact can take a link only once no other carries it — then updates,
    /// then creates. Returns whether a remembered Contact was found deleted (plan again).
    pub(super) async fn write_contacts(&self, s: &SyncSettings, work: &mut [Work]) -> bool {
        let link = s.link_field.clone();
        // (work index, record).
        let mut unlinks: Vec<(usize, Record)> = Vec::new();
        let mut updates: Vec<(usize, Record)> = Vec::new();
        let mut creates: Vec<(usize, Record)> = Vec::new();
        for (i, w) in work.iter_mut().enumerate() {
            let Work::Learner(lw) = w else { continue };
            if lw.result.is_some() {
                continue;
            }
            let Some(step) = lw.step.clone() else {
                continue;
            };
            let unlink = |id: &str| {
                let mut r = Record::new();
                r.insert("attributes".into(), json!({"type": "Contact"}));
                r.insert("Id".into(), json!(id));
                r.insert(link.clone(), Value::Null);
                r
            };
            match &step {
                LearnerStep::Fail(p) => lw.result = Some(Err(StepError::Permanent(p.clone()))),
                LearnerStep::Skip { stray, .. } | LearnerStep::Write { stray, .. }
                    if !stray.is_empty() =>
                {
                    for c in stray {
                        info!(learner_id = %lw.learner.id, contact = %c, "clearing a stray link");
                        unlinks.push((i, unlink(c)));
                    }
                    if let LearnerStep::Write { op, .. } = &step {
                        push_op(i, op, &unlink, &mut unlinks, &mut updates, &mut creates);
                    }
                }
                LearnerStep::Skip { .. } => {}
                LearnerStep::Write { op, .. } => {
                    push_op(i, op, &unlink, &mut unlinks, &mut updates, &mut creates)
                }
            }
        }
        let mut errors: HashMap<usize, StepError> = HashMap::new();
        let mut gone: HashSet<usize> = HashSet::new();
        let mut created: HashMap<usize, (String, bool)> = HashMap::new();

        if !unlinks.is_empty() {
            let recs: Vec<Record> = unlinks.iter().map(|(_, r)| r.clone()).collect();
            let res = write::write_all(recs, "AccountId", |b| async move {
                self.sf.update_many(&b, false).await
            })
            .await;
            for ((i, _), r) in unlinks.iter().zip(res) {
                match r {
                    // A Contact deleted meanwhile carries no link any more (R9).
                    RecordResult::Saved(_) | RecordResult::NotFound => {}
                    RecordResult::Failed(e) => {
                        errors.entry(*i).or_insert(e.into_step());
                    }
                }
            }
        }
        updates.retain(|(i, _)| !errors.contains_key(i));
        creates.retain(|(i, _)| !errors.contains_key(i));
        if !updates.is_empty() {
            let recs: Vec<Record> = updates.iter().map(|(_, r)| r.clone()).collect();
            let res = write::write_all(recs, "AccountId", |b| async move {
                self.sf.update_many(&b, false).await
            })
            .await;
            for ((i, r), res) in updates.iter().zip(res) {
                match res {
                    RecordResult::Saved(_) => {}
                    RecordResult::NotFound => {
                        let by_known = matches!(&work[*i], Work::Learner(lw)
                            if matches!(lw.step, Some(LearnerStep::Write { by_known: true, .. })));
                        if by_known {
                            gone.insert(*i);
                        } else {
                            let id = r.get("Id").and_then(Value::as_str).unwrap_or("");
                            let hinted = matches!(&work[*i], Work::Learner(lw)
                                if lw.snapshot.as_ref().is_some_and(|x| x.contact_hint.is_some()));
                            errors.insert(
                                *i,
                                StepError::Permanent(if hinted {
                                    Permanent::new(
                                        Code::ContactNotFound,
                                        format!(
                                            "the chosen Contact {id} does not exist in Salesforce"
                                        ),
                                    )
                                } else {
                                    Permanent::new(
                                        Code::NotFound,
                                        format!("Contact {id} was deleted meanwhile"),
                                    )
                                }),
                            );
                        }
                    }
                    RecordResult::Failed(e) => {
                        let e = self.account_failure(r, e);
                        errors.insert(*i, e.into_step());
                    }
                }
            }
        }
        if !creates.is_empty() {
            let recs: Vec<Record> = creates.iter().map(|(_, r)| r.clone()).collect();
            let link = link.clone();
            let res = write::write_all(recs, "AccountId", |b| {
                let link = link.clone();
                async move { self.sf.upsert_many("Contact", &link, &b, false).await }
            })
            .await;
            for ((i, r), res) in creates.iter().zip(res) {
                match res {
                    RecordResult::Saved(sr) => {
                        let id = sr.id.clone().unwrap_or_default();
                        created.insert(*i, (id, sr.created != Some(false)));
                    }
                    RecordResult::NotFound => {
                        errors.insert(
                            *i,
                            StepError::Transient(SyncError::transient(
                                "salesforce",
                                "Contact upsert answered NOT_FOUND",
                            )),
                        );
                    }
                    RecordResult::Failed(e) => {
                        let e = self.account_failure(r, e);
                        errors.insert(*i, e.into_step());
                    }
                }
            }
        }

        // Settle each learner from its own records' results.
        for (i, w) in work.iter_mut().enumerate() {
            let Work::Learner(lw) = w else { continue };
            if lw.result.is_some() {
                continue;
            }
            if gone.contains(&i) {
                info!(learner_id = %lw.learner.id, "remembered Contact was deleted in Salesforce; matching again (R10)");
                lw.known_gone = true;
                lw.step = None;
                continue;
            }
            if let Some(e) = errors.remove(&i) {
                lw.result = Some(Err(e));
                continue;
            }
            let is_create = matches!(
                lw.step,
                Some(LearnerStep::Write {
                    op: ContactOp::Create { .. },
                    ..
                })
            );
            let mut result = super::execute::step_result(lw.step.clone());
            if let (true, Ok((code, detail, Some(state), _))) = (is_create, &mut result) {
                let (id, was_created) = created.remove(&i).unwrap_or_default();
                state.contact_id = Some(id.clone());
                if was_created {
                    detail.push_str(&format!(": {id}"));
                } else {
                    *code = Code::Updated;
                    *detail = format!("Contact found by its link and updated (R8): {id}");
                }
            }
            lw.result = Some(result);
        }
        !gone.is_empty()
    }

    /// A cached Account that was deleted or merged makes the write fail on a reference:
    /// drop it from the cache and let the item retry (it will look the name up again).
    fn account_failure(&self, r: &Record, e: RecordError) -> RecordError {
        let account = r.get("AccountId").and_then(Value::as_str).unwrap_or("");
        match e {
            RecordError::Reference(errs) if self.accounts.has_id(account) => {
                self.accounts.invalidate_id(account);
                RecordError::Transient(SyncError::transient(
                    "salesforce",
                    format!(
                        "cached Account {account} was rejected ({}); looking it up again",
                        errs.first().map(|e| e.error_code.as_str()).unwrap_or("")
                    ),
                ))
            }
            other => other,
        }
    }

    /// R10 and snapshots: make the written Contacts' children equal SkillSync's.
    pub(super) async fn finish_learners(&self, work: &mut [Work]) {
        for w in work.iter_mut() {
            let Work::Learner(lw) = w else { continue };
            let plan = match &lw.step {
                Some(LearnerStep::Write { children, .. }) => children.clone(),
                _ => continue,
            };
            let Some(Ok((_, detail, Some(st), _))) = &mut lw.result else {
                continue;
            };
            let Some(contact) = st.contact_id.clone() else {
                continue;
            };
            let (children, what) = match plan {
                ChildrenPlan::Leave => continue,
                ChildrenPlan::Set(c) => (Ok(c), "enrollments/certifications"),
                ChildrenPlan::FromSkillSync => (
                    self.children_from_skillsync(&lw.learner.id).await,
                    "re-synced enrollments/certifications from SkillSync",
                ),
            };
            let r = match children {
                Ok(c) => self.set_children(&contact, &c).await,
                Err(e) => Err(e),
            };
            match r {
                Ok((wr, d)) => {
                    let suffix = if what.starts_with("re-synced") {
                        " (R10)"
                    } else {
                        ""
                    };
                    detail.push_str(&format!("; {what}: {wr} written, {d} deleted{suffix}"));
                }
                Err(e) => lw.result = Some(Err(e)),
            }
        }
    }

    async fn children_from_skillsync(
        &self,
        learner_id: &str,
    ) -> Result<super::item::Children, StepError> {
        Ok(super::item::Children {
            enrollments: self.ss.enrollments(learner_id).await?,
            certifications: self.ss.certifications(learner_id).await?,
        })
    }
}

fn push_op(
    i: usize,
    op: &ContactOp,
    unlink: &dyn Fn(&str) -> Record,
    unlinks: &mut Vec<(usize, Record)>,
    updates: &mut Vec<(usize, Record)>,
    creates: &mut Vec<(usize, Record)>,
) {
    match op {
        ContactOp::Unlink { id } => unlinks.push((i, unlink(id))),
        ContactOp::Update { id, fields } => {
            let mut r = fields.clone();
            r.insert("attributes".into(), json!({"type": "Contact"}));
            r.insert("Id".into(), json!(id));
            updates.push((i, r));
        }
        ContactOp::Create { fields } => {
            let mut r = fields.clone();
            r.insert("attributes".into(), json!({"type": "Contact"}));
            creates.push((i, r));
        }
    }
}

fn step_err(e: crate::salesforce::SfError) -> SyncError {
    match StepError::from(e) {
        StepError::Transient(e) => e,
        // A read the executor makes cannot fail for one item only: retry the round's items.
        StepError::Permanent(p) => SyncError::transient("salesforce", p.detail),
    }
}

//! Enrollments and certifications (docs/rules.md R10, R11).

use std::collections::HashSet;

use chrono::Utc;
use serde_json::{json, Value};

use crate::config::SyncSettings;
use crate::model::{EntityKind, Envelope, EventType};
use crate::salesforce::{soql, Record, SfError};
use crate::store::{Commit, EventRecord};

use super::engine::{Applied, Engine};
use super::item::Children;
use super::outcome::{Code, Permanent, StepResult};
use super::rules;
use super::state::{EntityVersion, LearnerState, LinkState};

impl Engine {
    /// R11: upsert (or delete) a child record of a linked learner, syncing the learner from
    /// its SkillSync snapshot first when it was never synced.
    pub(super) async fn child_event(
        &self,
        s: &SyncSettings,
        env: &Envelope,
        learner_id: &str,
        state: Option<LearnerState>,
    ) -> StepResult<Applied> {
        let mut prefix = String::new();
        let mut state = state;
        if state.is_none() {
            let Some(snapshot) = self.ss.learner(learner_id).await? else {
                return Ok(Applied::skipped(
                    Code::LearnerUnknown,
                    format!("learner {learner_id} does not exist in SkillSync"),
                    None,
                ));
            };
            let active = snapshot.status == crate::model::LearnerStatus::Active;
            let applied = self.learner_sync(s, &snapshot, active, None, None).await?;
            prefix = format!(
                "learner first synced from its snapshot ({}: {}); ",
                applied.code, applied.detail
            );
            if let Some(st) = &applied.learner {
                // Record the snapshot's version so older learner events stay stale (R12).
                self.store
                    .commit(&Commit {
                        record: EventRecord {
                            event_id: format!("snapshot:{}:{}", learner_id, env.id),
                            event_type: "learner.snapshot".into(),
                            learner_id: learner_id.into(),
                            occurred_at: snapshot.updated_at,
                            class: applied.class,
                            code: applied.code.as_str().into(),
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
                            ..st.clone()
                        }),
                    })
                    .await?;
            }
            state = applied.learner;
        }
        let contact = match state.as_ref() {
            Some(st) if st.link == LinkState::Linked && st.contact_id.is_some() => {
                st.contact_id.clone().unwrap()
            }
            Some(st) => {
                return Ok(Applied::skipped(
                    Code::LearnerNotLinked,
                    format!(
                        "{prefix}learner is {} (R11: only linked learners' records sync)",
                        st.link.as_str()
                    ),
                    None,
                ))
            }
            None => {
                return Ok(Applied::skipped(
                    Code::LearnerNotLinked,
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
                _ => return Err(Permanent::new(Code::BadEvent, "event without its record").into()),
            };
        if env.event_type == EventType::EnrollmentDeleted {
            return match self
                .sf
                .delete_by_external_id(object, ext_field, &ext_id)
                .await
            {
                Ok(()) => Ok(Applied::done(
                    Code::Deleted,
                    format!("{prefix}{object} {ext_id} deleted (R11)"),
                    None,
                )),
                Err(SfError::NotFound) => Ok(Applied::done(
                    Code::Deleted,
                    format!("{prefix}{object} {ext_id} was already absent (R11)"),
                    None,
                )),
                Err(e) => Err(e.into()),
            };
        }
        let res = self.sf.upsert(object, ext_field, &ext_id, &fields).await?;
        Ok(Applied::done(
            Code::Upserted,
            format!(
                "{prefix}{object} {ext_id} {} as {} on Contact {contact} (R11)",
                if res.created { "created" } else { "updated" },
                res.id
            ),
            None,
        ))
    }

    /// R10 / snapshots: make the Contact's `SkillSync_Enrollment__c` and
    /// `SkillSync_Certification__c` records equal `children` — upsert what is listed
    /// (sObject Collections, ≤200 records per call), delete that Contact's records that are
    /// not. Returns (records written, records deleted).
    pub(super) async fn set_children(
        &self,
        contact: &str,
        children: &Children,
    ) -> StepResult<(usize, usize)> {
        let with_ext = |mut r: Record, object: &str, field: &str, id: &str| {
            r.insert("attributes".into(), json!({ "type": object }));
            r.insert(field.into(), json!(id));
            r
        };
        let e_records: Vec<Record> = children
            .enrollments
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
        let c_records: Vec<Record> = children
            .certifications
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
        let e_keep: HashSet<&str> = children.enrollments.iter().map(|e| e.id.as_str()).collect();
        let c_keep: HashSet<&str> = children
            .certifications
            .iter()
            .map(|c| c.id.as_str())
            .collect();
        let mut written = 0;
        let mut extras: Vec<String> = Vec::new();
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
            // The Contact's records SkillSync no longer has.
            let q = format!(
                "SELECT Id, {field} FROM {object} WHERE {}",
                soql::eq("Contact__c", contact)
            );
            for r in self.sf.query(&q).await? {
                let ext = r.get(field).and_then(Value::as_str).unwrap_or("");
                if !keep.contains(ext) {
                    if let Some(id) = r.get("Id").and_then(Value::as_str) {
                        extras.push(id.to_string());
                    }
                }
            }
            if records.is_empty() {
                continue;
            }
            let results = self.sf.upsert_many(object, field, records, false).await?;
            rejected(object, &results)?;
            written += results.len();
        }
        let deleted = extras.len();
        if !extras.is_empty() {
            let results = self.sf.delete_many(&extras, false).await?;
            let gone: Vec<_> = results
                .into_iter()
                .filter(|r| {
                    !r.errors
                        .iter()
                        .any(|e| e.error_code == "ENTITY_IS_DELETED" || e.error_code == "NOT_FOUND")
                })
                .collect();
            rejected("child", &gone)?;
        }
        Ok((written, deleted))
    }
}

/// Per-record failures of a Collections call → one permanent failure naming them all.
fn rejected(object: &str, results: &[crate::salesforce::SaveResult]) -> StepResult<()> {
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.success)
        .flat_map(|r| {
            r.errors
                .iter()
                .map(|e| format!("{}: {}", e.error_code, e.message))
        })
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    if failed.iter().any(|f| {
        crate::salesforce::TRANSIENT_CODES
            .iter()
            .any(|c| f.starts_with(c))
    }) {
        return Err(super::outcome::StepError::Transient(
            super::outcome::SyncError::transient(
                "salesforce",
                format!("{object} records: {}", failed.join("; ")),
            ),
        ));
    }
    Err(Permanent::new(
        Code::SalesforceRejected,
        format!(
            "{} {object} records rejected: {}",
            failed.len(),
            failed.join("; ")
        ),
    )
    .into())
}

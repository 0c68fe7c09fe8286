//! Enrollments and certifications (docs/rules.md R10, R11).

use std::collections::{BTreeMap, HashMap, HashSet};

use serde_json::{json, Value};

use crate::salesforce::{soql, Record, SfError};

use super::engine::Engine;
use super::execute::{ChildResult, Work};
use super::item::Children;
use super::outcome::{Code, Permanent, StepError, StepResult};
use super::plan::ChildOp;
use super::rules;
use super::write::{self, RecordResult};

impl Engine {
    /// R11: the round's enrollment and certification writes — upserts through Collections
    /// upsert by external id (one call per object, records sorted by their Contact), deletes
    /// by external id (one call for one record; otherwise one query for the Ids and one
    /// Collections delete). Each record's result settles its own item.
    pub(super) async fn write_children(&self, work: &[Work]) -> HashMap<usize, ChildResult> {
        let mut out = HashMap::new();
        type Upserts<'a> = BTreeMap<(&'a str, &'a str), Vec<(usize, &'a str, Record)>>;
        let mut upserts: Upserts = BTreeMap::new();
        let mut deletes: BTreeMap<(&str, &str), Vec<(usize, &str)>> = BTreeMap::new();
        for (i, w) in work.iter().enumerate() {
            match w {
                Work::Child(ChildOp::Upsert {
                    object,
                    ext_field,
                    ext_id,
                    record,
                }) => {
                    let mut r = record.clone();
                    r.insert("attributes".into(), json!({ "type": object }));
                    r.insert((*ext_field).into(), json!(ext_id));
                    upserts
                        .entry((object, ext_field))
                        .or_default()
                        .push((i, ext_id.as_str(), r));
                }
                Work::Child(ChildOp::Delete {
                    object,
                    ext_field,
                    ext_id,
                }) => deletes
                    .entry((object, ext_field))
                    .or_default()
                    .push((i, ext_id.as_str())),
                _ => {}
            }
        }
        for ((object, field), items) in upserts {
            let recs: Vec<Record> = items.iter().map(|(_, _, r)| r.clone()).collect();
            let res = write::write_all(recs, "Contact__c", |b| async move {
                self.sf.upsert_many(object, field, &b, false).await
            })
            .await;
            for ((i, ext_id, r), res) in items.iter().zip(res) {
                let contact = r.get("Contact__c").and_then(Value::as_str).unwrap_or("");
                out.insert(
                    *i,
                    match res {
                        RecordResult::Saved(sr) => Ok((
                            Code::Upserted,
                            format!(
                                "{object} {ext_id} {} as {} on Contact {contact} (R11)",
                                if sr.created == Some(false) {
                                    "updated"
                                } else {
                                    "created"
                                },
                                sr.id.unwrap_or_default()
                            ),
                        )),
                        RecordResult::NotFound => Err(StepError::Permanent(Permanent::new(
                            Code::NotFound,
                            format!("Contact {contact} of {object} {ext_id} does not exist"),
                        ))),
                        RecordResult::Failed(e) => Err(e.into_step()),
                    },
                );
            }
        }
        for ((object, field), items) in deletes {
            for (i, r) in self.delete_children(object, field, &items).await {
                out.insert(i, r);
            }
        }
        out
    }

    async fn delete_children(
        &self,
        object: &str,
        field: &str,
        items: &[(usize, &str)],
    ) -> Vec<(usize, ChildResult)> {
        let deleted = |ext: &str, was: bool| {
            Ok((
                Code::Deleted,
                if was {
                    format!("{object} {ext} deleted (R11)")
                } else {
                    format!("{object} {ext} was already absent (R11)")
                },
            ))
        };
        if let [(i, ext)] = items {
            return vec![(
                *i,
                match self.sf.delete_by_external_id(object, field, ext).await {
                    Ok(()) => deleted(ext, true),
                    Err(SfError::NotFound) => deleted(ext, false),
                    Err(e) => Err(e.into()),
                },
            )];
        }
        let exts: Vec<String> = items.iter().map(|(_, e)| e.to_string()).collect();
        let mut ids: HashMap<String, String> = HashMap::new();
        for chunk in soql::chunks_by_len(&exts, 12_000) {
            let q = format!(
                "SELECT Id, {field} FROM {object} WHERE {}",
                soql::in_list(field, chunk)
            );
            match self.sf.query(&q).await {
                Ok(rows) => {
                    for r in rows {
                        if let (Some(id), Some(ext)) = (
                            r.get("Id").and_then(Value::as_str),
                            r.get(field).and_then(Value::as_str),
                        ) {
                            ids.insert(ext.to_string(), id.to_string());
                        }
                    }
                }
                Err(e) => {
                    let e = StepError::from(e);
                    return items.iter().map(|(i, _)| (*i, Err(e.clone()))).collect();
                }
            }
        }
        let present: Vec<(usize, &str, String)> = items
            .iter()
            .filter_map(|(i, ext)| ids.get(*ext).map(|id| (*i, *ext, id.clone())))
            .collect();
        let mut out: Vec<(usize, ChildResult)> = items
            .iter()
            .filter(|(_, ext)| !ids.contains_key(*ext))
            .map(|(i, ext)| (*i, deleted(ext, false)))
            .collect();
        if present.is_empty() {
            return out;
        }
        let id_list: Vec<String> = present.iter().map(|(_, _, id)| id.clone()).collect();
        match self.sf.delete_many(&id_list, false).await {
            Ok(results) => {
                for ((i, ext, _), r) in present.iter().zip(results) {
                    let gone = r.success
                        || r.errors.iter().any(|e| {
                            e.error_code == "ENTITY_IS_DELETED" || e.error_code == "NOT_FOUND"
                        });
                    out.push((
                        *i,
                        if gone {
                            deleted(ext, r.success)
                        } else {
                            Err(super::write::rejected(&r.errors).into())
                        },
                    ));
                }
            }
            Err(e) => {
                let e = StepError::from(e);
                out.extend(present.iter().map(|(i, _, _)| (*i, Err(e.clone()))));
            }
        }
        out
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

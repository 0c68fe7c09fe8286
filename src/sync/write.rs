//! Batched Salesforce writes of the executor (docs/rules.md "Salesforce"): sObject
//! Collections with `allOrNone=false`, so each record's result settles its own item;
//! records sorted by their parent (Salesforce locks the parent Account or Contact, and
//! records of one parent in parallel calls cause `UNABLE_TO_LOCK_ROW`); a record that hits
//! a lock is retried alone, a few times, before its item is retried later.

use std::future::Future;
use std::time::Duration;

use serde_json::Value;

use crate::salesforce::{ApiError, Record, SaveResult, SfError};

use super::outcome::{Code, Permanent, StepError, SyncError};

/// Lock retries of a record inside one batch before its item is retried later (R13).
const LOCK_RETRIES: u32 = 3;

/// What one record's write came to.
#[derive(Clone, Debug)]
pub(super) enum RecordResult {
    Saved(SaveResult),
    /// The record (not a reference) does not exist: `NOT_FOUND` / `ENTITY_IS_DELETED`.
    NotFound,
    Failed(RecordError),
}

#[derive(Clone, Debug)]
pub(super) enum RecordError {
    /// Retry later (lock still held, limits, server trouble, timeout of the call).
    Transient(SyncError),
    /// A reference field was refused (a cached Account deleted or merged, …).
    Reference(Vec<ApiError>),
    /// Validation rule, required field, duplicate value, ….
    Rejected(Vec<ApiError>),
}

impl RecordError {
    pub fn into_step(self) -> StepError {
        match self {
            RecordError::Transient(e) => StepError::Transient(e),
            RecordError::Reference(errs) | RecordError::Rejected(errs) => {
                StepError::Permanent(rejected(&errs))
            }
        }
    }
}

/// Salesforce refused a record: one permanent failure naming every error.
pub(super) fn rejected(errs: &[ApiError]) -> Permanent {
    Permanent::new(
        Code::SalesforceRejected,
        crate::salesforce::fmt_errors(errs),
    )
}

fn classify(errs: &[ApiError]) -> RecordResult {
    let has = |c: &str| errs.iter().any(|e| e.error_code == c);
    if errs
        .iter()
        .any(|e| crate::salesforce::TRANSIENT_CODES.contains(&e.error_code.as_str()))
    {
        let msg = errs
            .iter()
            .map(|e| format!("{}: {}", e.error_code, e.message))
            .collect::<Vec<_>>()
            .join("; ");
        return RecordResult::Failed(RecordError::Transient(SyncError::transient(
            "salesforce",
            msg,
        )));
    }
    let on_reference = errs.iter().any(|e| {
        e.fields.iter().any(|f| f != "Id")
            && matches!(
                e.error_code.as_str(),
                "INVALID_CROSS_REFERENCE_KEY" | "ENTITY_IS_DELETED" | "FIELD_INTEGRITY_EXCEPTION"
            )
    }) || has("INVALID_CROSS_REFERENCE_KEY");
    if on_reference {
        return RecordResult::Failed(RecordError::Reference(errs.to_vec()));
    }
    if has("NOT_FOUND") || has("ENTITY_IS_DELETED") {
        return RecordResult::NotFound;
    }
    RecordResult::Failed(RecordError::Rejected(errs.to_vec()))
}

fn is_lock(r: &RecordResult) -> bool {
    matches!(r, RecordResult::Failed(RecordError::Transient(e)) if e.to_string().contains("UNABLE_TO_LOCK_ROW"))
}

/// A whole call failed: every record of it gets the same result.
fn call_failed(e: &SfError) -> RecordResult {
    match e {
        SfError::Transient { .. } => RecordResult::Failed(RecordError::Transient(
            SyncError::transient("salesforce", e.to_string()),
        )),
        SfError::NotFound => RecordResult::NotFound,
        SfError::Permanent { errors, .. } => classify(errors),
        SfError::MultipleMatches { .. } => {
            RecordResult::Failed(RecordError::Rejected(vec![ApiError {
                message: e.to_string(),
                error_code: "MULTIPLE_CHOICES".into(),
                fields: vec![],
            }]))
        }
    }
}

/// Write `records` (sorted here by `parent_field`) through `call` (a Collections call,
/// chunked by 200 by the client), retrying only the records that hit a row lock. Results
/// are in the order of `records`.
pub(super) async fn write_all<F, Fut>(
    records: Vec<Record>,
    parent_field: &str,
    call: F,
) -> Vec<RecordResult>
where
    F: Fn(Vec<Record>) -> Fut,
    Fut: Future<Output = Result<Vec<SaveResult>, SfError>>,
{
    let mut order: Vec<usize> = (0..records.len()).collect();
    let parent = |r: &Record| {
        r.get(parent_field)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    order.sort_by_key(|&i| parent(&records[i]));
    let mut results: Vec<Option<RecordResult>> = vec![None; records.len()];
    let mut pending = order;
    let mut attempt = 0;
    while !pending.is_empty() {
        let batch: Vec<Record> = pending.iter().map(|&i| records[i].clone()).collect();
        let answers: Vec<RecordResult> = match call(batch).await {
            Ok(saved) => {
                let mut a: Vec<RecordResult> = saved
                    .into_iter()
                    .map(|s| {
                        if s.success {
                            RecordResult::Saved(s)
                        } else {
                            classify(&s.errors)
                        }
                    })
                    .collect();
                // A short answer would leave records unsettled: treat them as not written.
                while a.len() < pending.len() {
                    a.push(RecordResult::Failed(RecordError::Transient(
                        SyncError::transient("salesforce", "no result for this record"),
                    )));
                }
                a
            }
            Err(e) => vec![call_failed(&e); pending.len()],
        };
        let mut locked = Vec::new();
        for (&i, r) in pending.iter().zip(answers) {
            if is_lock(&r) && attempt < LOCK_RETRIES {
                locked.push(i);
            } else {
                results[i] = Some(r);
            }
        }
        if !locked.is_empty() {
            attempt += 1;
            let wait = 50u64 << attempt;
            tokio::time::sleep(Duration::from_millis(
                wait + rand::random::<u64>() % (wait + 1),
            ))
            .await;
        }
        pending = locked;
    }
    results
        .into_iter()
        .map(|r| r.expect("every record settled"))
        .collect()
}

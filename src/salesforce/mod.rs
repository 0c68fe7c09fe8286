//! Salesforce REST (docs/rules.md "Salesforce").
//!
//! [`SalesforceApi`] is the port the sync engine talks to. [`client::Client`] implements it
//! over HTTP (`reqwest`, OAuth 2.0, SOQL, sObjects, upsert by external id, Collections);
//! the in-memory org of [`crate::sandbox::salesforce`] implements it directly so the
//! rules engine is testable without network.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub mod budget;
pub mod client;
pub mod soql;

pub use budget::{Budget, BudgetStatus, Priority};
pub use client::Client;

/// A Salesforce record as JSON (`{"Id": …, "Email": …}`; `attributes` may be present).
pub type Record = serde_json::Map<String, serde_json::Value>;

/// One entry of Salesforce's error body `[{"message","errorCode","fields"}]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    pub message: String,
    #[serde(rename = "errorCode")]
    pub error_code: String,
    #[serde(default)]
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SfError {
    /// Retry later: connect/timeout, 5xx, `REQUEST_LIMIT_EXCEEDED`, `UNABLE_TO_LOCK_ROW`,
    /// `SERVER_UNAVAILABLE`, 429.
    #[error("salesforce transient error ({code}): {message}")]
    Transient {
        status: Option<u16>,
        code: String,
        message: String,
    },
    /// Will not succeed by retrying: validation errors, bad references, auth refused, ….
    #[error("salesforce rejected the call (HTTP {status}): {}", fmt_errors(.errors))]
    Permanent { status: u16, errors: Vec<ApiError> },
    /// Upsert by external id matched several records (HTTP 300).
    #[error("external id matches several records: {ids:?}")]
    MultipleMatches { ids: Vec<String> },
    /// The record does not exist (HTTP 404 / `NOT_FOUND` / `ENTITY_IS_DELETED`).
    #[error("record not found")]
    NotFound,
}

/// Salesforce's errors in one line: `CODE: message [field,…]; …`.
pub fn fmt_errors(errors: &[ApiError]) -> String {
    errors
        .iter()
        .map(|e| {
            if e.fields.is_empty() {
                format!("{}: {}", e.error_code, e.message)
            } else {
                format!("{}: {} [{}]", e.error_code, e.message, e.fields.join(","))
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Salesforce error codes that are worth retrying.
pub const TRANSIENT_CODES: &[&str] = &[
    "REQUEST_LIMIT_EXCEEDED",
    "UNABLE_TO_LOCK_ROW",
    "SERVER_UNAVAILABLE",
    "QUERY_TIMEOUT",
    "TXN_SECURITY_METERING_ERROR",
];

impl SfError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SfError::Transient { .. })
    }
    /// The first Salesforce `errorCode` (or a synthetic one).
    pub fn code(&self) -> &str {
        match self {
            SfError::Transient { code, .. } => code,
            SfError::Permanent { errors, .. } => errors
                .first()
                .map(|e| e.error_code.as_str())
                .unwrap_or("UNKNOWN"),
            SfError::MultipleMatches { .. } => "MULTIPLE_CHOICES",
            SfError::NotFound => "NOT_FOUND",
        }
    }
    /// Classify an error body from Salesforce.
    pub fn from_errors(status: u16, errors: Vec<ApiError>) -> SfError {
        if status == 404
            || errors
                .iter()
                .any(|e| e.error_code == "NOT_FOUND" || e.error_code == "ENTITY_IS_DELETED")
        {
            return SfError::NotFound;
        }
        let transient_code = errors
            .iter()
            .find(|e| TRANSIENT_CODES.contains(&e.error_code.as_str()));
        if status >= 500 || status == 429 || transient_code.is_some() {
            let (code, message) = transient_code
                .or(errors.first())
                .map(|e| (e.error_code.clone(), e.message.clone()))
                .unwrap_or_else(|| (format!("HTTP_{status}"), String::new()));
            return SfError::Transient {
                status: Some(status),
                code,
                message,
            };
        }
        SfError::Permanent { status, errors }
    }
}

/// Result of an upsert by external id.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpsertResult {
    pub id: String,
    /// 201 (true) vs 200 (false).
    pub created: bool,
}

/// Per-record result of an sObject Collections call (`[{id, success, errors, created}]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SaveResult {
    #[serde(default)]
    pub id: Option<String>,
    pub success: bool,
    #[serde(default)]
    pub errors: Vec<ApiError>,
    #[serde(default)]
    pub created: Option<bool>,
}

/// The subset of `GET /sobjects/{name}/describe` we use.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Describe {
    pub name: String,
    pub fields: Vec<FieldDescribe>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FieldDescribe {
    pub name: String,
    #[serde(rename = "type")]
    pub field_type: String,
    #[serde(rename = "externalId", default)]
    pub external_id: bool,
    #[serde(default)]
    pub unique: bool,
    #[serde(default)]
    pub nillable: bool,
}

/// The Salesforce operations the engine and backfill use. Every method is one API call,
/// except [`SalesforceApi::query`] (one per page) and the collection calls (one per 200 records).
#[async_trait]
pub trait SalesforceApi: Send + Sync {
    /// Run a SOQL query (built with [`soql`]), following `nextRecordsUrl`. Records keep
    /// their fields; `attributes` may be present.
    async fn query(&self, soql: &str) -> Result<Vec<Record>, SfError>;
    async fn create(&self, sobject: &str, fields: &Record) -> Result<String, SfError>;
    async fn get(&self, sobject: &str, id: &str, fields: &[&str]) -> Result<Record, SfError>;
    async fn update(&self, sobject: &str, id: &str, fields: &Record) -> Result<(), SfError>;
    async fn delete(&self, sobject: &str, id: &str) -> Result<(), SfError>;
    /// `PATCH /sobjects/{sobject}/{ext_field}/{ext_id}`.
    async fn upsert(
        &self,
        sobject: &str,
        ext_field: &str,
        ext_id: &str,
        fields: &Record,
    ) -> Result<UpsertResult, SfError>;
    /// `DELETE /sobjects/{sobject}/{ext_field}/{ext_id}`; `NotFound` when absent.
    async fn delete_by_external_id(
        &self,
        sobject: &str,
        ext_field: &str,
        ext_id: &str,
    ) -> Result<(), SfError>;
    /// `POST /composite/sobjects` (each record has `attributes.type`), chunked by 200.
    async fn create_many(
        &self,
        records: &[Record],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>, SfError>;
    /// `PATCH /composite/sobjects` (each record has `Id` and `attributes.type`), chunked by 200.
    async fn update_many(
        &self,
        records: &[Record],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>, SfError>;
    /// `PATCH /composite/sobjects/{sobject}/{ext_field}`, chunked by 200.
    async fn upsert_many(
        &self,
        sobject: &str,
        ext_field: &str,
        records: &[Record],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>, SfError>;
    /// `DELETE /composite/sobjects?ids=…`, chunked by 200.
    async fn delete_many(
        &self,
        ids: &[String],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>, SfError>;
    async fn describe(&self, sobject: &str) -> Result<Describe, SfError>;
}

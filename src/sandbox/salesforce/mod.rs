//! A faithful in-memory Salesforce org (docs/rules.md "Salesforce") for tests and `syncback demo`.
//!
//! It speaks the REST wire format the client uses — OAuth token endpoint, SOQL query
//! with `nextRecordsUrl` paging, sObject create/get/update/delete, upsert by external id
//! (201/200/300), sObject Collections, describe — with Salesforce's status codes, error
//! bodies `[{"message","errorCode","fields"}]`, 18-character ids and
//! `Sforce-Limit-Info`. It is also a [`SalesforceApi`] in-process, with the same
//! semantics and counters, so the rules engine can be tested without network.
//!
//! Objects: `Account`, `Contact`, `SkillSync_Enrollment__c`, `SkillSync_Certification__c`
//! with required fields, unique external ids, and reference checks.

mod api;
mod faults;
mod http;
mod index;
mod schema;
mod soql;
mod state;
#[cfg(test)]
mod tests;

use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::salesforce::{Record, SfError};

pub use faults::Fault;
pub use http::endpoint_name;
use schema::object;
use state::OrgState;

/// The sandbox org. Clones share state.
#[derive(Clone)]
pub struct Org {
    state: Arc<Mutex<OrgState>>,
}

impl Default for Org {
    fn default() -> Self {
        Self::new()
    }
}

impl Org {
    pub const CLIENT_ID: &'static str = "sandbox-client";
    pub const CLIENT_SECRET: &'static str = "sandbox-secret";

    pub fn new() -> Org {
        Org {
            state: Arc::new(Mutex::new(OrgState {
                api_limit: 15_000,
                page_size: 2_000,
                ..Default::default()
            })),
        }
    }

    /// Seed a record (validated like a create). Not counted as an API call.
    pub fn insert(&self, sobject: &str, fields: Record) -> Result<String, SfError> {
        self.state.lock().unwrap().create(sobject, &fields)
    }

    /// Seed a record bypassing validation and uniqueness (to create the states only a
    /// misconfigured org has, e.g. two Contacts with the same external id).
    pub fn insert_unchecked(&self, sobject: &str, mut fields: Record) -> String {
        let mut s = self.state.lock().unwrap();
        let o = object(sobject).expect("known sObject");
        let id = s.new_id(o);
        fields.insert("Id".into(), json!(id));
        s.put_record(o, id.clone(), fields);
        id
    }

    /// Every record of `sobject`, ordered by id.
    pub fn records(&self, sobject: &str) -> Vec<Record> {
        let s = self.state.lock().unwrap();
        object(sobject)
            .ok()
            .and_then(|o| s.records.get(o.name))
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn record(&self, sobject: &str, id: &str) -> Option<Record> {
        let s = self.state.lock().unwrap();
        s.find(object(sobject).ok()?, id).cloned()
    }

    /// Delete as an admin would (not counted).
    pub fn remove(&self, sobject: &str, id: &str) -> bool {
        self.state.lock().unwrap().delete(sobject, id).is_ok()
    }

    /// REST calls served per endpoint, sorted, named like [`crate::salesforce::Client::calls`]
    /// (`"GET query"`, `"PATCH sobjects/Contact/SkillSync_User_Id__c"`, `"GET sobjects/Contact/{id}"`).
    pub fn requests_by_endpoint(&self) -> Vec<(String, u64)> {
        self.state
            .lock()
            .unwrap()
            .counts
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// REST calls served (token requests excluded).
    pub fn total_requests(&self) -> u64 {
        self.state.lock().unwrap().counts.values().sum()
    }

    pub fn reset_counts(&self) {
        self.state.lock().unwrap().counts.clear();
    }

    /// Answer an upsert that updates with `204 No Content` and no body, as API versions
    /// before 46.0 do.
    pub fn set_legacy_upsert(&self, on: bool) {
        self.state.lock().unwrap().legacy_upsert = on;
    }

    /// Allow the JWT bearer flow for assertions signed by this RSA public key (PEM).
    pub fn trust_jwt_key(&self, public_pem: &[u8]) {
        self.state
            .lock()
            .unwrap()
            .jwt_keys
            .push(public_pem.to_vec());
    }

    /// Invalidate every issued token (the next call gets 401 `INVALID_SESSION_ID`).
    pub fn expire_tokens(&self) {
        self.state.lock().unwrap().tokens.clear();
    }

    /// The `M` of `Sforce-Limit-Info: api-usage=N/M` (the org's daily API limit).
    pub fn set_api_limit(&self, max: u64) {
        self.state.lock().unwrap().api_limit = max;
    }

    /// Set the `N` of `Sforce-Limit-Info: api-usage=N/M` for today: other integrations
    /// using the org's allocation (up), or the rolling window freeing up (down).
    pub fn set_api_used(&self, used: u64) {
        let mut s = self.state.lock().unwrap();
        s.api_day = Some(chrono::Utc::now().date_naive());
        s.api_used = used;
    }

    /// Today's (used, limit), as `Sforce-Limit-Info` reports it.
    pub fn api_usage(&self) -> (u64, u64) {
        let s = self.state.lock().unwrap();
        let today = chrono::Utc::now().date_naive();
        let used = if s.api_day == Some(today) {
            s.api_used
        } else {
            0
        };
        (used, s.api_limit)
    }

    /// Records per query page (then `nextRecordsUrl`).
    pub fn set_page_size(&self, n: usize) {
        self.state.lock().unwrap().page_size = n.max(1);
    }
}

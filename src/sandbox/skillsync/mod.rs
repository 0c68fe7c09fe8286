//! An in-memory SkillSync LMS speaking the wire format of docs/rules.md "SkillSync": OAuth 2.0 client
//! credentials, departments (a tree), learners, enrollments and certifications, cursor
//! pagination, and fault injection. Usable in-process (it implements [`SkillSyncApi`])
//! and over HTTP (`syncback sandbox skillsync --listen ADDR`).

mod http;
mod seed;
mod writes;

pub use seed::DEPARTMENTS as SAMPLE_DEPARTMENTS;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::model::{Certification, Department, Enrollment, Learner, Page};
use crate::sandbox::faults::{FaultControls, SandboxFault};
use crate::skillsync::{SkillSyncApi, SsError};
use crate::webhook::signature::{decode_secret, SigningKey};

/// Injected failures: the next N API calls (not token requests) fail this way.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    /// 503 Service Unavailable.
    Unavailable,
    /// 429 Too Many Requests.
    RateLimited,
    /// Answer only after this long (trips client timeouts).
    Timeout(Duration),
}

impl SandboxFault for Fault {
    fn hold(&self) -> Option<Duration> {
        match self {
            Fault::Timeout(d) => Some(*d),
            _ => None,
        }
    }
}

#[derive(Default)]
struct State_ {
    departments: BTreeMap<String, Department>,
    learners: BTreeMap<String, Learner>,
    enrollments: BTreeMap<String, Enrollment>,
    certifications: BTreeMap<String, Certification>,
    tokens: HashSet<String>,
    page_size: usize,
    /// Injected faults, latency, and the count of API calls (see `sandbox::faults`).
    faults: FaultControls<Fault>,
    /// Where writes through the HTTP API send their signed events, if anywhere.
    webhook: Option<(String, SigningKey)>,
}

/// The sandbox LMS. Clones share state.
#[derive(Clone)]
pub struct Lms {
    state: Arc<Mutex<State_>>,
}

impl Default for Lms {
    fn default() -> Self {
        Self::new()
    }
}

fn page<T: Clone>(items: Vec<T>, cursor: Option<&str>, size: usize) -> Page<T> {
    let start: usize = cursor
        .and_then(|c| c.strip_prefix("o"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let end = (start + size).min(items.len());
    Page {
        items: items
            .get(start..end)
            .map(|s| s.to_vec())
            .unwrap_or_default(),
        next_cursor: (end < items.len()).then(|| format!("o{end}")),
    }
}

impl Lms {
    pub const CLIENT_ID: &'static str = "sandbox-client";
    pub const CLIENT_SECRET: &'static str = "sandbox-secret";

    pub fn new() -> Self {
        Lms {
            state: Arc::new(Mutex::new(State_ {
                page_size: 100,
                ..Default::default()
            })),
        }
    }

    pub fn add_department(&self, id: &str, name: &str, parent: Option<&str>) {
        self.state.lock().unwrap().departments.insert(
            id.to_string(),
            Department {
                id: id.into(),
                name: name.into(),
                parent_id: parent.map(String::from),
            },
        );
    }

    pub fn upsert_learner(&self, l: Learner) {
        self.state.lock().unwrap().learners.insert(l.id.clone(), l);
    }

    pub fn remove_learner(&self, id: &str) {
        self.state.lock().unwrap().learners.remove(id);
    }

    pub fn learner(&self, id: &str) -> Option<Learner> {
        self.state.lock().unwrap().learners.get(id).cloned()
    }

    pub fn add_enrollment(&self, e: Enrollment) {
        self.state
            .lock()
            .unwrap()
            .enrollments
            .insert(e.id.clone(), e);
    }

    pub fn remove_enrollment(&self, id: &str) {
        self.state.lock().unwrap().enrollments.remove(id);
    }

    pub fn remove_certification(&self, id: &str) {
        self.state.lock().unwrap().certifications.remove(id);
    }

    pub fn add_certification(&self, c: Certification) {
        self.state
            .lock()
            .unwrap()
            .certifications
            .insert(c.id.clone(), c);
    }

    pub fn set_page_size(&self, n: usize) {
        self.state.lock().unwrap().page_size = n.max(1);
    }

    /// The next `n` API calls fail with `fault` (`n = 0` clears).
    pub fn fail_next(&self, n: u32, fault: Fault) {
        self.state.lock().unwrap().faults.fail_next(n, fault);
    }

    /// Issue an API token without the OAuth exchange (for `curl` against the sandbox).
    pub fn issue_token(&self) -> String {
        let token = format!("ss_{}", uuid::Uuid::new_v4().simple());
        self.state.lock().unwrap().tokens.insert(token.clone());
        token
    }

    /// Writes through the HTTP API (`POST /api/v1/learners`, …) also send the signed
    /// webhook SkillSync would send, to `url` (e.g. `http://127.0.0.1:8080/webhooks/skillsync`).
    pub fn send_webhooks_to(&self, url: &str, secret: &str) -> Result<(), String> {
        let key = decode_secret(secret)?;
        self.state.lock().unwrap().webhook = Some((url.to_string(), key));
        Ok(())
    }

    /// Every issued token stops working (the next call gets 401).
    pub fn expire_tokens(&self) {
        self.state.lock().unwrap().tokens.clear();
    }

    /// Injected faults not yet consumed.
    pub fn faults_pending(&self) -> u32 {
        self.state.lock().unwrap().faults.pending()
    }

    /// Every API call waits this long before it is served.
    pub fn set_latency(&self, d: Duration) {
        self.state.lock().unwrap().faults.set_latency(d);
    }

    /// API calls served (token requests excluded).
    pub fn requests(&self) -> u64 {
        self.state.lock().unwrap().faults.calls()
    }

    pub fn reset_counts(&self) {
        self.state.lock().unwrap().faults.reset_calls();
    }

    /// The gate of every API call, in-process or over HTTP: count it, wait out latency
    /// and holds; the fault it must answer, if one is due.
    async fn enter(&self) -> Option<Fault> {
        let admission = self.state.lock().unwrap().faults.admit();
        admission.wait().await
    }

    fn children(&self, id: &str) -> Option<Vec<Department>> {
        let s = self.state.lock().unwrap();
        s.departments.get(id)?;
        Some(
            s.departments
                .values()
                .filter(|d| d.parent_id.as_deref() == Some(id))
                .cloned()
                .collect(),
        )
    }

    fn learners_in(&self, department_id: &str) -> Vec<Learner> {
        self.state
            .lock()
            .unwrap()
            .learners
            .values()
            .filter(|l| l.department_id.as_deref() == Some(department_id))
            .cloned()
            .collect()
    }

    /// A learner's enrollments; `None` (404) when SkillSync knows neither the learner nor
    /// any enrollment of it.
    fn enrollments_of(&self, learner_id: &str) -> Option<Vec<Enrollment>> {
        let s = self.state.lock().unwrap();
        let items: Vec<Enrollment> = s
            .enrollments
            .values()
            .filter(|e| e.learner_id == learner_id)
            .cloned()
            .collect();
        (s.learners.contains_key(learner_id) || !items.is_empty()).then_some(items)
    }

    fn certifications_of(&self, learner_id: &str) -> Option<Vec<Certification>> {
        let s = self.state.lock().unwrap();
        let items: Vec<Certification> = s
            .certifications
            .values()
            .filter(|c| c.learner_id == learner_id)
            .cloned()
            .collect();
        (s.learners.contains_key(learner_id) || !items.is_empty()).then_some(items)
    }

    fn page_size(&self) -> usize {
        self.state.lock().unwrap().page_size
    }
}

fn fault_error(f: Fault) -> SsError {
    SsError::Transient(match f {
        Fault::Unavailable => "503 Service Unavailable (injected)".into(),
        Fault::RateLimited => "429 Too Many Requests (injected)".into(),
        Fault::Timeout(_) => "timeout (injected)".into(),
    })
}

/// In-process access with the same semantics (and faults) as over HTTP.
#[async_trait]
impl SkillSyncApi for Lms {
    async fn department(&self, id: &str) -> Result<Option<Department>, SsError> {
        if let Some(f) = self.enter().await {
            return Err(fault_error(f));
        }
        Ok(self.state.lock().unwrap().departments.get(id).cloned())
    }

    async fn department_children(&self, id: &str) -> Result<Vec<Department>, SsError> {
        if let Some(f) = self.enter().await {
            return Err(fault_error(f));
        }
        Ok(self.children(id).unwrap_or_default())
    }

    async fn learner(&self, id: &str) -> Result<Option<Learner>, SsError> {
        if let Some(f) = self.enter().await {
            return Err(fault_error(f));
        }
        Ok(Lms::learner(self, id))
    }

    async fn learners_page(
        &self,
        department_id: &str,
        cursor: Option<&str>,
    ) -> Result<Page<Learner>, SsError> {
        if let Some(f) = self.enter().await {
            return Err(fault_error(f));
        }
        Ok(page(
            self.learners_in(department_id),
            cursor,
            self.page_size(),
        ))
    }

    async fn enrollments(&self, learner_id: &str) -> Result<Vec<Enrollment>, SsError> {
        if let Some(f) = self.enter().await {
            return Err(fault_error(f));
        }
        Ok(self.enrollments_of(learner_id).unwrap_or_default())
    }

    async fn certifications(&self, learner_id: &str) -> Result<Vec<Certification>, SsError> {
        if let Some(f) = self.enter().await {
            return Err(fault_error(f));
        }
        Ok(self.certifications_of(learner_id).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cover_everything_once() {
        let all: Vec<u32> = (0..7).collect();
        let mut got = Vec::new();
        let mut cursor = None;
        loop {
            let p = page(all.clone(), cursor.as_deref(), 3);
            got.extend(p.items);
            match p.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(got, all);
    }
}

//! An in-memory SkillSync LMS speaking the wire format of docs/rules.md "SkillSync": OAuth 2.0 client
//! credentials, departments (a tree), learners, enrollments and certifications, cursor
//! pagination, and fault injection. Usable in-process (it implements [`SkillSyncApi`])
//! and over HTTP (`syncback sandbox skillsync --listen ADDR`).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::model::{Certification, Department, Enrollment, Learner, Page};
use crate::skillsync::{SkillSyncApi, SsError};

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

#[derive(Default)]
struct State_ {
    departments: BTreeMap<String, Department>,
    learners: BTreeMap<String, Learner>,
    enrollments: BTreeMap<String, Enrollment>,
    certifications: BTreeMap<String, Certification>,
    tokens: HashSet<String>,
    page_size: usize,
    fault: Option<(u32, Fault)>,
    latency: Duration,
    requests: u64,
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
        self.state.lock().unwrap().fault = (n > 0).then_some((n, fault));
    }

    /// Every issued token stops working (the next call gets 401).
    pub fn expire_tokens(&self) {
        self.state.lock().unwrap().tokens.clear();
    }

    pub fn set_latency(&self, d: Duration) {
        self.state.lock().unwrap().latency = d;
    }

    /// API calls served (token requests excluded).
    pub fn requests(&self) -> u64 {
        self.state.lock().unwrap().requests
    }

    pub fn reset_counts(&self) {
        self.state.lock().unwrap().requests = 0;
    }

    /// Count the call, apply latency, and take an injected fault if one is due.
    async fn enter(&self) -> Option<Fault> {
        let (latency, fault) = {
            let mut s = self.state.lock().unwrap();
            s.requests += 1;
            let fault = super::take_fault(&mut s.fault);
            (s.latency, fault)
        };
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if let Some(Fault::Timeout(d)) = fault {
            tokio::time::sleep(d).await;
            return None;
        }
        fault
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

    /// Serve over HTTP on `addr` (port 0 picks one); returns the bound address.
    pub async fn serve(
        &self,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let router = self.router();
        let handle = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok((bound, handle))
    }

    pub fn router(&self) -> Router {
        let api = Router::new()
            .route("/api/v1/departments/{id}", get(h_department))
            .route("/api/v1/departments/{id}/children", get(h_children))
            .route("/api/v1/learners", get(h_learners))
            .route("/api/v1/learners/{id}", get(h_learner))
            .route("/api/v1/learners/{id}/enrollments", get(h_enrollments))
            .route(
                "/api/v1/learners/{id}/certifications",
                get(h_certifications),
            )
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                auth_and_faults,
            ));
        Router::new()
            .route("/oauth2/token", post(h_token))
            .merge(api)
            .with_state(self.clone())
    }
}

fn err(status: StatusCode, error: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": error, "message": message.into()})),
    )
        .into_response()
}

#[derive(Deserialize)]
struct TokenForm {
    grant_type: String,
    client_id: Option<String>,
    client_secret: Option<String>,
}

async fn h_token(State(lms): State<Lms>, Form(f): Form<TokenForm>) -> Response {
    if f.grant_type != "client_credentials" {
        return err(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "use client_credentials",
        );
    }
    if f.client_id.as_deref() != Some(Lms::CLIENT_ID)
        || f.client_secret.as_deref() != Some(Lms::CLIENT_SECRET)
    {
        return err(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client or wrong secret",
        );
    }
    let token = format!("ss_{}", uuid::Uuid::new_v4().simple());
    lms.state.lock().unwrap().tokens.insert(token.clone());
    Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": 3600})).into_response()
}

async fn auth_and_faults(State(lms): State<Lms>, req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(String::from);
    let known = token.is_some_and(|t| lms.state.lock().unwrap().tokens.contains(&t));
    if !known {
        return err(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing, expired or unknown bearer token",
        );
    }
    match lms.enter().await {
        Some(Fault::Unavailable) => err(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "injected fault",
        ),
        Some(Fault::RateLimited) => err(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "injected fault",
        ),
        _ => next.run(req).await,
    }
}

fn not_found(what: &str, id: &str) -> Response {
    err(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("{what} {id} not found"),
    )
}

#[derive(Serialize)]
struct Items<T> {
    items: Vec<T>,
    next_cursor: Option<String>,
}

fn items<T: Serialize + Clone>(all: Vec<T>, cursor: Option<&str>, size: usize) -> Response {
    let p = page(all, cursor, size);
    Json(Items {
        items: p.items,
        next_cursor: p.next_cursor,
    })
    .into_response()
}

#[derive(Deserialize)]
struct CursorQuery {
    cursor: Option<String>,
    department_id: Option<String>,
}

async fn h_department(State(lms): State<Lms>, Path(id): Path<String>) -> Response {
    match lms.state.lock().unwrap().departments.get(&id) {
        Some(d) => Json(d.clone()).into_response(),
        None => not_found("department", &id),
    }
}

async fn h_children(
    State(lms): State<Lms>,
    Path(id): Path<String>,
    Query(q): Query<CursorQuery>,
) -> Response {
    match lms.children(&id) {
        Some(c) => items(c, q.cursor.as_deref(), lms.page_size()),
        None => not_found("department", &id),
    }
}

async fn h_learners(State(lms): State<Lms>, Query(q): Query<CursorQuery>) -> Response {
    let Some(d) = q.department_id else {
        return err(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "department_id is required",
        );
    };
    items(lms.learners_in(&d), q.cursor.as_deref(), lms.page_size())
}

async fn h_learner(State(lms): State<Lms>, Path(id): Path<String>) -> Response {
    match lms.learner(&id) {
        Some(l) => Json(l).into_response(),
        None => not_found("learner", &id),
    }
}

async fn h_enrollments(
    State(lms): State<Lms>,
    Path(id): Path<String>,
    Query(q): Query<CursorQuery>,
) -> Response {
    match lms.enrollments_of(&id) {
        Some(e) => items(e, q.cursor.as_deref(), lms.page_size()),
        None => not_found("learner", &id),
    }
}

async fn h_certifications(
    State(lms): State<Lms>,
    Path(id): Path<String>,
    Query(q): Query<CursorQuery>,
) -> Response {
    match lms.certifications_of(&id) {
        Some(c) => items(c, q.cursor.as_deref(), lms.page_size()),
        None => not_found("learner", &id),
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

//! Adding to the sandbox LMS over HTTP, so `backfill`, `reconcile` and the demo can be
//! tried with your own data:
//!
//! - `POST /api/v1/learners` (201; 409 if the id exists; `id` generated when absent),
//!   `PUT /api/v1/learners/{id}` (create or replace: 201 / 200);
//! - `POST /api/v1/learners/{id}/enrollments`, `POST /api/v1/learners/{id}/certifications`
//!   (201; 404 for an unknown learner).
//!
//! Bodies are the snapshots of docs/rules.md "Webhook contract"; omitted fields get
//! defaults (`status` active / enrolled, timestamps now, `department_name` from the
//! department). Violations answer 422 naming the field. When webhooks are configured
//! ([`Lms::send_webhooks_to`]) every write also sends the signed event SkillSync would
//! send (`learner.created`, `learner.updated`, `learner.deactivated`, …).

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::http::err;
use super::Lms;
use crate::model::{Certification, Enrollment, Learner, LearnerStatus};

type Object = Map<String, Value>;

/// A refused write: status, error code, message.
struct Refused(StatusCode, &'static str, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        err(self.0, self.1, self.2)
    }
}

fn invalid(message: impl Into<String>) -> Refused {
    Refused(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message.into())
}

fn now() -> Value {
    json!(crate::sync::rules::sf_datetime(Utc::now()))
}

fn object(
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Object, Refused> {
    match body {
        Ok(Json(Value::Object(o))) => Ok(o),
        Ok(_) => Err(invalid("the body must be a JSON object")),
        Err(e) => Err(Refused(
            StatusCode::BAD_REQUEST,
            "bad_request",
            e.body_text(),
        )),
    }
}

fn default(o: &mut Object, key: &str, value: Value) {
    if o.get(key).is_none_or(Value::is_null) {
        o.insert(key.to_string(), value);
    }
}

fn generated_id(prefix: &str) -> Value {
    json!(format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ))
}

/// Fill defaults and check a learner body against the departments.
fn learner_from(lms: &Lms, mut o: Object) -> Result<Learner, Refused> {
    default(&mut o, "id", generated_id("L"));
    default(&mut o, "status", json!("active"));
    default(&mut o, "updated_at", now());
    if o.get("username")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        return Err(invalid(
            "username is required (it is what R5 matches Contacts on)",
        ));
    }
    if let Some(dept) = o.get("department_id").filter(|v| !v.is_null()) {
        let dept = dept
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| dept.to_string());
        let Some(d) = lms.state.lock().unwrap().departments.get(&dept).cloned() else {
            return Err(invalid(format!("department_id {dept}: no such department")));
        };
        default(&mut o, "department_name", json!(d.name));
    }
    serde_json::from_value(Value::Object(o)).map_err(|e| invalid(format!("learner: {e}")))
}

/// Answer `status` with `body`, naming the webhook sent for the write, if any.
async fn answer<T: Serialize>(
    lms: &Lms,
    status: StatusCode,
    body: &T,
    event: Option<(&str, Value)>,
) -> Response {
    let mut resp = (status, Json(body)).into_response();
    if let Some((kind, data)) = event {
        if let Some(note) = lms.emit(kind, data).await {
            if let Ok(v) = HeaderValue::from_str(&note) {
                resp.headers_mut().insert("x-sandbox-webhook", v);
            }
        }
    }
    resp
}

pub(super) async fn h_create_learner(
    State(lms): State<Lms>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let l = match object(body).and_then(|o| learner_from(&lms, o)) {
        Ok(l) => l,
        Err(r) => return r.into_response(),
    };
    if lms.learner(&l.id).is_some() {
        return err(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "learner {} exists; PUT /api/v1/learners/{} replaces it",
                l.id, l.id
            ),
        );
    }
    lms.upsert_learner(l.clone());
    answer(
        &lms,
        StatusCode::CREATED,
        &l,
        Some(("learner.created", json!({"learner": l}))),
    )
    .await
}

pub(super) async fn h_put_learner(
    State(lms): State<Lms>,
    Path(id): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let l = match object(body).and_then(|mut o| {
        o.insert("id".into(), json!(id));
        learner_from(&lms, o)
    }) {
        Ok(l) => l,
        Err(r) => return r.into_response(),
    };
    let before = lms.learner(&l.id);
    lms.upsert_learner(l.clone());
    let (status, kind) = match before.map(|b| b.status) {
        None => (StatusCode::CREATED, "learner.created"),
        Some(LearnerStatus::Active) if l.status == LearnerStatus::Inactive => {
            (StatusCode::OK, "learner.deactivated")
        }
        Some(LearnerStatus::Inactive) if l.status == LearnerStatus::Active => {
            (StatusCode::OK, "learner.reactivated")
        }
        Some(_) => (StatusCode::OK, "learner.updated"),
    };
    answer(&lms, status, &l, Some((kind, json!({"learner": l})))).await
}

pub(super) async fn h_create_enrollment(
    State(lms): State<Lms>,
    Path(learner): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let mut o = match object(body) {
        Ok(o) => o,
        Err(r) => return r.into_response(),
    };
    if lms.learner(&learner).is_none() {
        return err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("learner {learner} not found"),
        );
    }
    o.insert("learner_id".into(), json!(learner));
    default(&mut o, "id", generated_id("E"));
    default(&mut o, "status", json!("enrolled"));
    default(&mut o, "enrolled_at", now());
    default(&mut o, "updated_at", now());
    let e: Enrollment = match serde_json::from_value(Value::Object(o)) {
        Ok(e) => e,
        Err(e) => return invalid(format!("enrollment: {e}")).into_response(),
    };
    lms.add_enrollment(e.clone());
    answer(
        &lms,
        StatusCode::CREATED,
        &e,
        Some(("enrollment.created", json!({"enrollment": e}))),
    )
    .await
}

pub(super) async fn h_create_certification(
    State(lms): State<Lms>,
    Path(learner): Path<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let mut o = match object(body) {
        Ok(o) => o,
        Err(r) => return r.into_response(),
    };
    if lms.learner(&learner).is_none() {
        return err(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("learner {learner} not found"),
        );
    }
    o.insert("learner_id".into(), json!(learner));
    default(&mut o, "id", generated_id("C"));
    default(&mut o, "status", json!("active"));
    default(&mut o, "issued_at", now());
    default(&mut o, "updated_at", now());
    let c: Certification = match serde_json::from_value(Value::Object(o)) {
        Ok(c) => c,
        Err(e) => return invalid(format!("certification: {e}")).into_response(),
    };
    lms.add_certification(c.clone());
    answer(
        &lms,
        StatusCode::CREATED,
        &c,
        Some(("certification.issued", json!({"certification": c}))),
    )
    .await
}

impl Lms {
    /// Send the signed event SkillSync would send for a write; a note for the response
    /// header (`evt_… 202`), or `None` when webhooks are off.
    async fn emit(&self, kind: &str, data: Value) -> Option<String> {
        let (url, key) = self.state.lock().unwrap().webhook.clone()?;
        let id = format!("evt_{}", uuid::Uuid::new_v4().simple());
        let env = json!({"id": id, "type": kind, "occurred_at": now(), "data": data});
        let body = serde_json::to_vec(&env).ok()?;
        let ts = Utc::now().timestamp();
        let sent = reqwest::Client::new()
            .post(&url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", key.sign(&id, ts, &body))
            .body(body)
            .send()
            .await;
        Some(match sent {
            Ok(r) => format!("{kind} {id} {}", r.status().as_u16()),
            Err(e) => {
                tracing::warn!(error = %e, %url, "sandbox webhook not delivered");
                format!("{kind} {id} not delivered")
            }
        })
    }
}

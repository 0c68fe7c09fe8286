//! The HTTP face of the sandbox LMS: the OAuth 2.0 token endpoint and the REST API of
//! docs/rules.md "SkillSync", behind a bearer check and the fault controls.

use std::net::SocketAddr;

use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Form, Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{page, writes, Fault, Lms};

impl Lms {
    /// Serve over HTTP on `addr` (port 0 picks one); returns the bound address.
    pub async fn serve(
        &self,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        crate::sandbox::serve(self.router(), addr).await
    }

    pub fn router(&self) -> Router {
        let api = Router::new()
            .route("/api/v1/departments/{id}", get(h_department))
            .route("/api/v1/departments/{id}/children", get(h_children))
            .route(
                "/api/v1/learners",
                get(h_learners).post(writes::h_create_learner),
            )
            .route(
                "/api/v1/learners/{id}",
                get(h_learner).put(writes::h_put_learner),
            )
            .route(
                "/api/v1/learners/{id}/enrollments",
                get(h_enrollments).post(writes::h_create_enrollment),
            )
            .route(
                "/api/v1/learners/{id}/certifications",
                get(h_certifications).post(writes::h_create_certification),
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

pub(super) fn err(status: StatusCode, error: &str, message: impl Into<String>) -> Response {
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
    let token = crate::sandbox::bearer_token(req.headers(), &["Bearer"]);
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

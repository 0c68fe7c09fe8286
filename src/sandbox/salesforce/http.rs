//! The HTTP face of the sandbox org: the OAuth token endpoint (client credentials, password,
//! JWT bearer), the REST gate (bearer check, counting, faults, `Sforce-Limit-Info`), routes.

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Form, Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;

use super::api::upsert_collection;
use super::schema::{canonical_id, describe, err, object, OBJECTS};
use super::state::{
    collection_create, collection_update, delete_any, delete_external, get_record, ok_result,
};
use super::Org;
use crate::salesforce::{Record, SfError};

/// The JSON error response Salesforce sends for `e`.
fn error_response(e: &SfError) -> Response {
    let (status, body) = match e {
        SfError::Permanent { status, errors } => (*status, json!(errors)),
        SfError::Transient {
            status,
            code,
            message,
        } => (
            status.unwrap_or(503),
            json!([{"message": message, "errorCode": code, "fields": []}]),
        ),
        SfError::NotFound => (
            404,
            json!([{"message": "The requested resource does not exist", "errorCode": "NOT_FOUND", "fields": []}]),
        ),
        SfError::MultipleMatches { ids } => (
            300,
            json!(ids
                .iter()
                .map(|id| format!("/services/data/v61.0/sobjects/{id}"))
                .collect::<Vec<_>>()),
        ),
    };
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(body),
    )
        .into_response()
}

fn reply<T: serde::Serialize>(r: Result<T, SfError>, status: StatusCode) -> Response {
    match r {
        Ok(v) => (status, Json(v)).into_response(),
        Err(e) => error_response(&e),
    }
}

#[derive(Deserialize)]
struct TokenForm {
    #[serde(default)]
    grant_type: String,
    client_id: Option<String>,
    client_secret: Option<String>,
    password: Option<String>,
    assertion: Option<String>,
}

/// The JWT bearer flow: an RS256 assertion from the sandbox's connected app
/// (`iss` = [`Org::CLIENT_ID`]), signed by a registered key, not expired.
fn jwt_ok(org: &Org, assertion: Option<&str>) -> bool {
    let Some(jwt) = assertion else { return false };
    let keys = org.state.lock().unwrap().jwt_keys.clone();
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_issuer(&[Org::CLIENT_ID]);
    v.validate_aud = false;
    v.set_required_spec_claims(&["exp", "iss", "sub"]);
    keys.iter().any(|pem| {
        jsonwebtoken::DecodingKey::from_rsa_pem(pem)
            .ok()
            .is_some_and(|k| jsonwebtoken::decode::<Value>(jwt, &k, &v).is_ok())
    })
}

async fn h_token(State(org): State<Org>, headers: HeaderMap, Form(f): Form<TokenForm>) -> Response {
    let ok = match f.grant_type.as_str() {
        "client_credentials" => {
            f.client_id.as_deref() == Some(Org::CLIENT_ID)
                && f.client_secret.as_deref() == Some(Org::CLIENT_SECRET)
        }
        "password" => f.password.as_deref() == Some(Org::CLIENT_SECRET),
        crate::salesforce::client::JWT_GRANT => {
            if !jwt_ok(&org, f.assertion.as_deref()) {
                return (
                    StatusCode::BAD_REQUEST,
                    Json(
                        json!({"error": "invalid_grant", "error_description": "invalid assertion"}),
                    ),
                )
                    .into_response();
            }
            true
        }
        _ => {
            return (StatusCode::BAD_REQUEST, Json(json!({"error": "unsupported_grant_type", "error_description": "grant type not supported"}))).into_response();
        }
    };
    if !ok {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_client", "error_description": "invalid client credentials"}))).into_response();
    }
    let token = format!("00D5g000000SBOX!{}", uuid::Uuid::new_v4().simple());
    org.state.lock().unwrap().tokens.insert(token.clone());
    let host = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    Json(json!({
        "access_token": token,
        "instance_url": format!("http://{host}"),
        "id": format!("http://{host}/id/00D5g000000SBOX/0055g000000SBOX"),
        "token_type": "Bearer",
        "issued_at": Utc::now().timestamp_millis().to_string(),
        "signature": "c2FuZGJveA==",
    }))
    .into_response()
}

/// Bearer check, call counting, latency and faults; `Sforce-Limit-Info` on every answer.
async fn rest_gate(State(org): State<Org>, req: Request, next: Next) -> Response {
    let token = crate::sandbox::bearer_token(req.headers(), &["Bearer", "OAuth"]);
    if !token.is_some_and(|t| org.state.lock().unwrap().tokens.contains(&t)) {
        return (StatusCode::UNAUTHORIZED, Json(json!([{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]))).into_response();
    }
    let endpoint = endpoint_name(req.method(), req.uri().path());
    if req.method() != Method::GET {
        if let Some(hold) = org.take_write_hold() {
            // Held, then applied in a task of its own: a client that times out and goes
            // away does not cancel it (the late-landing write).
            let org = org.clone();
            let task = tokio::spawn(async move {
                tokio::time::sleep(hold).await;
                let mut resp = match org.enter(endpoint).await {
                    Err(e) => error_response(&e),
                    Ok(()) => next.run(req).await,
                };
                if let Ok(v) = HeaderValue::from_str(&org.limit_info()) {
                    resp.headers_mut().insert("Sforce-Limit-Info", v);
                }
                resp
            });
            return task.await.unwrap_or_else(|e| {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("held write failed: {e}"),
                )
                    .into_response()
            });
        }
    }
    let mut resp = match org.enter(endpoint).await {
        Err(e) => error_response(&e),
        Ok(()) => next.run(req).await,
    };
    if let Ok(v) = HeaderValue::from_str(&org.limit_info()) {
        resp.headers_mut().insert("Sforce-Limit-Info", v);
    }
    resp
}

/// `"PATCH sobjects/Contact/SkillSync_User_Id__c"` etc.: method + path template, no ids.
pub fn endpoint_name(method: &Method, path: &str) -> String {
    let rest = path.trim_end_matches('/');
    let rest = rest
        .split_once("/services/data/")
        .map(|(_, r)| r)
        .unwrap_or(rest);
    let parts: Vec<&str> = rest.split('/').skip(1).collect(); // drop vXX.X
    let tpl = match parts.as_slice() {
        ["query", ..] => "query".to_string(),
        ["sobjects", t, "describe"] => format!("sobjects/{t}/describe"),
        ["sobjects", t] => format!("sobjects/{t}"),
        ["sobjects", t, id] if canonical_id(id).is_some() => format!("sobjects/{t}/{{id}}"),
        ["sobjects", t, field] => format!("sobjects/{t}/{field}"),
        ["sobjects", t, field, _] => format!("sobjects/{t}/{field}"),
        ["composite", "sobjects"] => "composite/sobjects".to_string(),
        ["composite", "sobjects", t, f] => format!("composite/sobjects/{t}/{f}"),
        [] => "resources".to_string(),
        other => other.join("/"),
    };
    format!("{method} {tpl}")
}

#[derive(Deserialize)]
struct QueryParams {
    q: Option<String>,
}

fn query_page(org: &Org, mut rows: Vec<Record>, total: usize) -> Response {
    let mut s = org.state.lock().unwrap();
    let size = s.page_size;
    let rest = if rows.len() > size {
        rows.split_off(size)
    } else {
        Vec::new()
    };
    let mut body = json!({"totalSize": total, "done": rest.is_empty(), "records": rows});
    if !rest.is_empty() {
        let loc = format!(
            "01gSBOX{}-{}",
            uuid::Uuid::new_v4().simple(),
            total - rest.len()
        );
        body["nextRecordsUrl"] = json!(format!("/services/data/v61.0/query/{loc}"));
        s.locators.insert(loc, (rest, total));
    }
    Json(body).into_response()
}

async fn h_query(State(org): State<Org>, Query(p): Query<QueryParams>) -> Response {
    let Some(q) = p.q else {
        return error_response(&err(400, "MALFORMED_QUERY", "q is required", &[]));
    };
    let rows = org.state.lock().unwrap().query(&q);
    match rows {
        Ok((rows, total)) => query_page(&org, rows, total),
        Err(e) => error_response(&e),
    }
}

async fn h_query_more(State(org): State<Org>, Path((_v, loc)): Path<(String, String)>) -> Response {
    let taken = org.state.lock().unwrap().locators.remove(&loc);
    match taken {
        Some((rows, total)) => query_page(&org, rows, total),
        None => error_response(&err(
            400,
            "INVALID_QUERY_LOCATOR",
            "invalid query locator",
            &[],
        )),
    }
}

fn body_record(body: &Bytes) -> Result<Record, SfError> {
    serde_json::from_slice::<Record>(body).map_err(|e| {
        err(
            400,
            "JSON_PARSER_ERROR",
            &format!("Unexpected JSON: {e}"),
            &[],
        )
    })
}

async fn h_create(
    State(org): State<Org>,
    Path((_v, t)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let r = body_record(&body).and_then(|rec| org.state.lock().unwrap().create(&t, &rec));
    reply(
        r.map(|id| json!({"id": id, "success": true, "errors": []})),
        StatusCode::CREATED,
    )
}

async fn h_describe(Path((_v, t)): Path<(String, String)>) -> Response {
    reply(describe(&t), StatusCode::OK)
}

#[derive(Deserialize)]
struct FieldsParam {
    fields: Option<String>,
}

/// `/sobjects/{T}/{id}` (GET, PATCH, DELETE).
async fn h_record(
    State(org): State<Org>,
    method: Method,
    Path((_v, t, id)): Path<(String, String, String)>,
    Query(fp): Query<FieldsParam>,
    body: Bytes,
) -> Response {
    match method {
        Method::GET => {
            let fields: Vec<String> = fp
                .fields
                .map(|f| f.split(',').map(|s| s.trim().to_string()).collect())
                .unwrap_or_default();
            let refs: Vec<&str> = fields.iter().map(String::as_str).collect();
            reply(
                get_record(&org.state.lock().unwrap(), &t, &id, &refs),
                StatusCode::OK,
            )
        }
        Method::PATCH => match body_record(&body)
            .and_then(|rec| org.state.lock().unwrap().update(&t, &id, &rec))
        {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => error_response(&e),
        },
        Method::DELETE => match org.state.lock().unwrap().delete(&t, &id) {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => error_response(&e),
        },
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}

/// `/sobjects/{T}/{extField}/{extId}` (GET, PATCH = upsert, DELETE).
async fn h_external(
    State(org): State<Org>,
    method: Method,
    Path((_v, t, field, value)): Path<(String, String, String, String)>,
    body: Bytes,
) -> Response {
    let mut s = org.state.lock().unwrap();
    match method {
        Method::PATCH => {
            match body_record(&body).and_then(|rec| s.upsert(&t, &field, &value, &rec)) {
                Ok(u) if !u.created && s.legacy_upsert => StatusCode::NO_CONTENT.into_response(),
                Ok(u) => {
                    let status = if u.created {
                        StatusCode::CREATED
                    } else {
                        StatusCode::OK
                    };
                    (status, Json(json!({"id": u.id, "success": true, "errors": [], "created": u.created}))).into_response()
                }
                Err(SfError::MultipleMatches { ids }) => multiple_choices(&t, &ids),
                Err(e) => error_response(&e),
            }
        }
        Method::DELETE => match delete_external(&mut s, &t, &field, &value) {
            Ok(()) => StatusCode::NO_CONTENT.into_response(),
            Err(SfError::MultipleMatches { ids }) => multiple_choices(&t, &ids),
            Err(e) => error_response(&e),
        },
        Method::GET => {
            let found = object(&t).and_then(|o| s.by_external(o, &field, &value));
            match found {
                Ok((_, ids)) if ids.len() == 1 => {
                    reply(get_record(&s, &t, &ids[0], &[]), StatusCode::OK)
                }
                Ok((_, ids)) if ids.is_empty() => error_response(&SfError::NotFound),
                Ok((_, ids)) => multiple_choices(&t, &ids),
                Err(e) => error_response(&e),
            }
        }
        _ => StatusCode::METHOD_NOT_ALLOWED.into_response(),
    }
}

/// 300 Multiple Choices: the JSON list of the matching records' URLs.
fn multiple_choices(sobject: &str, ids: &[String]) -> Response {
    let name = object(sobject).map(|o| o.name).unwrap_or(sobject);
    let urls: Vec<String> = ids
        .iter()
        .map(|id| format!("/services/data/v61.0/sobjects/{name}/{id}"))
        .collect();
    (StatusCode::MULTIPLE_CHOICES, Json(urls)).into_response()
}

#[derive(Deserialize)]
struct CollectionBody {
    #[serde(rename = "allOrNone", default)]
    all_or_none: bool,
    records: Vec<Record>,
}

#[derive(Deserialize)]
struct DeleteParams {
    ids: Option<String>,
    #[serde(rename = "allOrNone")]
    all_or_none: Option<bool>,
}

async fn h_collection(
    State(org): State<Org>,
    method: Method,
    Query(dp): Query<DeleteParams>,
    body: Bytes,
) -> Response {
    if method == Method::DELETE {
        let ids: Vec<String> = dp
            .ids
            .unwrap_or_default()
            .split(',')
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        let r = org.collection(dp.all_or_none.unwrap_or(false), &ids, |s, id| {
            delete_any(s, id).map(|()| ok_result(id.clone(), None))
        });
        return reply(r, StatusCode::OK);
    }
    let b: CollectionBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error_response(&err(400, "JSON_PARSER_ERROR", &e.to_string(), &[])),
    };
    let r = match method {
        Method::POST => org.collection(b.all_or_none, &b.records, collection_create),
        Method::PATCH => org.collection(b.all_or_none, &b.records, collection_update),
        _ => return StatusCode::METHOD_NOT_ALLOWED.into_response(),
    };
    reply(r, StatusCode::OK)
}

async fn h_upsert_collection(
    State(org): State<Org>,
    Path((_v, t, field)): Path<(String, String, String)>,
    body: Bytes,
) -> Response {
    let b: CollectionBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(e) => return error_response(&err(400, "JSON_PARSER_ERROR", &e.to_string(), &[])),
    };
    reply(
        upsert_collection(&org, &t, &field, &b.records, b.all_or_none),
        StatusCode::OK,
    )
}

/// `GET /services/data/vXX.X/`: the resources of a version.
async fn h_resources(Path(v): Path<String>) -> Response {
    let base = format!("/services/data/{v}");
    Json(json!({
        "sobjects": format!("{base}/sobjects"),
        "query": format!("{base}/query"),
        "composite": format!("{base}/composite"),
        "limits": format!("{base}/limits"),
    }))
    .into_response()
}

/// `GET /services/data/vXX.X/limits`: the org's limits; `DailyApiRequests` is the one the
/// budget governor reads (the call itself counts, as on Salesforce).
async fn h_limits(State(org): State<Org>) -> Response {
    let (used, max) = org.api_usage();
    Json(json!({
        "DailyApiRequests": {"Max": max, "Remaining": max.saturating_sub(used)},
        "DailyBulkApiBatches": {"Max": 15000, "Remaining": 15000},
    }))
    .into_response()
}

async fn h_versions() -> Response {
    Json(json!([{"label": "Winter '25", "url": "/services/data/v61.0", "version": "61.0"}]))
        .into_response()
}

async fn h_sobjects() -> Response {
    let list: Vec<Value> = OBJECTS
        .iter()
        .map(|o| json!({"name": o.name, "keyPrefix": o.prefix, "custom": o.name.ends_with("__c")}))
        .collect();
    Json(json!({"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": list})).into_response()
}

impl Org {
    /// The HTTP face of the org.
    pub fn router(&self) -> Router {
        let base = "/services/data/{v}";
        let record = get(h_record).patch(h_record).delete(h_record);
        let external = get(h_external).patch(h_external).delete(h_external);
        let rest = Router::new()
            .route(base, get(h_resources))
            .route(&format!("{base}/"), get(h_resources))
            .route(&format!("{base}/limits"), get(h_limits))
            .route(&format!("{base}/limits/"), get(h_limits))
            .route(&format!("{base}/query"), get(h_query))
            .route(&format!("{base}/query/"), get(h_query))
            .route(&format!("{base}/query/{{loc}}"), get(h_query_more))
            .route(&format!("{base}/sobjects"), get(h_sobjects))
            .route(&format!("{base}/sobjects/"), get(h_sobjects))
            .route(&format!("{base}/sobjects/{{t}}"), post(h_create))
            .route(&format!("{base}/sobjects/{{t}}/"), post(h_create))
            .route(&format!("{base}/sobjects/{{t}}/describe"), get(h_describe))
            .route(&format!("{base}/sobjects/{{t}}/describe/"), get(h_describe))
            .route(&format!("{base}/sobjects/{{t}}/{{id}}"), record)
            .route(&format!("{base}/sobjects/{{t}}/{{f}}/{{x}}"), external)
            .route(
                &format!("{base}/composite/sobjects"),
                post(h_collection).patch(h_collection).delete(h_collection),
            )
            .route(
                &format!("{base}/composite/sobjects/{{t}}/{{f}}"),
                patch(h_upsert_collection),
            )
            .route_layer(axum::middleware::from_fn_with_state(
                self.clone(),
                rest_gate,
            ));
        Router::new()
            .route("/services/oauth2/token", post(h_token))
            .route("/services/data", get(h_versions))
            .route("/services/data/", get(h_versions))
            .merge(rest)
            .with_state(self.clone())
    }

    /// Serve over HTTP on `addr` (port 0 picks one); returns the bound address.
    pub async fn serve(
        &self,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
        crate::sandbox::serve(self.router(), addr).await
    }
}

//! The receiver (docs/rules.md "Webhook contract"; README "Operations"): `POST /webhooks/skillsync`, `/healthz`, `/readyz`, `/metrics`.
//!
//! A webhook is checked in this order, each failure answering with one JSON shape
//! `{"error": <code>, "message": <text>, "violations": [...]}`:
//! content type (`415`) → body size (`413`, `408` when it is not sent within
//! `server.body_read_timeout_secs`) → signature (`401`) → JSON (`400`) → schema (`422`) →
//! publish with publisher confirm (`202`, or `503` if the broker is unavailable).
//! Nothing is ever answered `2xx` before the broker confirmed the message. Requests the
//! HTTP parser refuses (`400`, `414`, `431`) get the same shape from `server.rs`.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use serde_json::{json, Value};
use tracing::{debug, warn};

mod server;
pub use server::serve_with;

use crate::config::{ServerSettings, Settings};
use crate::queue::{Message, Queue};
use crate::store::Store;
use crate::telemetry;
use crate::webhook::schema::{SchemaValidator, Violation};
use crate::webhook::signature::{SignatureError, Verifier};

/// Shared state of the receiver.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    verifier: Verifier,
    schema: SchemaValidator,
    max_body_bytes: usize,
    body_timeout: std::time::Duration,
    received: ReceivedCounters,
    /// `syncback_publish_seconds`, registered once.
    publish_seconds: metrics::Histogram,
    ops: Arc<Ops>,
}

/// The store of a process that has one, filled in once it could be opened (a process
/// starts while its store is down and reports not-ready meanwhile).
pub type StoreSlot = Arc<tokio::sync::OnceCell<Arc<dyn Store>>>;

/// A slot already holding `store`.
pub fn store_slot(store: Option<Arc<dyn Store>>) -> Option<StoreSlot> {
    store.map(|s| Arc::new(tokio::sync::OnceCell::new_with(Some(s))))
}

/// What `/readyz` and `/metrics` look at (every process role serves these).
struct Ops {
    queue: Arc<dyn Queue>,
    store: Option<StoreSlot>,
    metrics: PrometheusHandle,
}

impl AppState {
    /// `store` is checked by `/readyz` when this process also runs workers.
    pub fn new(
        settings: &Settings,
        queue: Arc<dyn Queue>,
        store: Option<Arc<dyn Store>>,
    ) -> anyhow::Result<Self> {
        Self::with_store_slot(settings, queue, store_slot(store))
    }

    /// Like [`AppState::new`], with a store that may still be opening.
    pub fn with_store_slot(
        settings: &Settings,
        queue: Arc<dyn Queue>,
        store: Option<StoreSlot>,
    ) -> anyhow::Result<Self> {
        let secrets: Vec<&str> = settings
            .webhooks
            .secrets
            .iter()
            .map(|s| s.expose())
            .collect();
        anyhow::ensure!(!secrets.is_empty(), "webhooks.secrets is empty");
        let verifier = Verifier::new(&secrets, settings.webhooks.tolerance_secs)
            .map_err(|e| anyhow::anyhow!("webhooks.secrets: {e}"))?;
        let schema = SchemaValidator::new().map_err(|e| anyhow::anyhow!("schemas: {e}"))?;
        let metrics = telemetry::metrics_handle();
        Ok(Self {
            inner: Arc::new(Inner {
                verifier,
                schema,
                max_body_bytes: settings.webhooks.max_body_bytes,
                body_timeout: std::time::Duration::from_secs(
                    settings.server.body_read_timeout_secs.max(1),
                ),
                received: ReceivedCounters::new(),
                publish_seconds: metrics::histogram!(telemetry::PUBLISH_SECONDS),
                ops: Arc::new(Ops {
                    queue,
                    store,
                    metrics,
                }),
            }),
        })
    }
}

/// The stable error body.
#[derive(Debug, Serialize)]
pub struct ErrorBody {
    pub error: &'static str,
    pub message: String,
    /// Always present (`[]` when empty).
    pub violations: Vec<Violation>,
}

fn reject(status: StatusCode, error: &'static str, message: impl Into<String>) -> Response {
    reject_with(status, error, message, Vec::new())
}

fn reject_with(
    status: StatusCode,
    error: &'static str,
    message: impl Into<String>,
    violations: Vec<Violation>,
) -> Response {
    metrics::counter!(telemetry::REJECTED, "reason" => error).increment(1);
    let body = ErrorBody {
        error,
        message: message.into(),
        violations,
    };
    warn!(status = status.as_u16(), error, message = %body.message, "webhook rejected");
    (status, Json(body)).into_response()
}

/// Requests with more headers than this are answered `431`.
pub const MAX_HEADERS: usize = 100;
/// Requests whose header names and values exceed this many bytes are answered `431`.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// The receiver: the webhook endpoint plus the ops endpoints.
pub fn router(state: AppState) -> Router {
    let ops = state.inner.ops.clone();
    hardened(
        Router::new()
            .route("/webhooks/skillsync", post(receive_webhook))
            // The webhook handler enforces `webhooks.max_body_bytes` itself (JSON 413).
            .layer(DefaultBodyLimit::disable())
            .with_state(state)
            .merge(ops_routes(ops)),
    )
}

/// Every error in the one JSON shape: unknown paths (`404`), other methods (`405`);
/// too many or too large headers (`431`) are answered by the server (`server.rs`).
fn hardened(router: Router) -> Router {
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

async fn not_found(uri: axum::http::Uri) -> Response {
    reject(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no such path {:?}; webhooks go to POST /webhooks/skillsync",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let allowed = if uri.path() == "/webhooks/skillsync" {
        "POST"
    } else {
        "GET"
    };
    let mut r = reject(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}; use {allowed}", uri.path()),
    );
    r.headers_mut()
        .insert(axum::http::header::ALLOW, allowed.parse().expect("static"));
    r
}

/// The JSON `431` for a request whose headers exceed `MAX_HEADER_BYTES` (checked by the
/// server in `server.rs` before routing, so that every route is covered at no per-route cost).
fn header_limits(h: &HeaderMap) -> Option<Response> {
    // The count (`MAX_HEADERS`) is the parser's own limit: such a request never gets here.
    let bytes: usize = h.iter().map(|(k, v)| k.as_str().len() + v.len()).sum();
    if bytes > MAX_HEADER_BYTES {
        return Some(reject(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("{bytes} bytes of headers; at most {MAX_HEADER_BYTES} are accepted"),
        ));
    }
    None
}

/// The JSON answer for a request hyper's parser refused (it answered `code` with no
/// body): a malformed request (`400`), a URI too long (`414`), more than 100 headers or a
/// head over `server`'s parser buffer (`431`).
pub(crate) fn parser_rejection(code: u16) -> (StatusCode, String) {
    let (status, error, message) = match code {
        414 => (
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            "the request URI is too long".to_string(),
        ),
        431 => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "more than {MAX_HEADERS} headers, or a request head too large to parse; \
                 at most {MAX_HEADERS} headers and {MAX_HEADER_BYTES} bytes of them are accepted"
            ),
        ),
        _ => (
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the request is not valid HTTP/1.1 (request line or headers malformed)".to_string(),
        ),
    };
    metrics::counter!(telemetry::REJECTED, "reason" => error).increment(1);
    warn!(status = status.as_u16(), error, %message, "request refused by the HTTP parser");
    let body = ErrorBody {
        error,
        message,
        violations: Vec::new(),
    };
    (
        status,
        serde_json::to_string(&body)
            .unwrap_or_else(|_| format!(r#"{{"error":"{error}","message":"","violations":[]}}"#)),
    )
}

/// `/healthz`, `/readyz` (broker, and store when given) and `/metrics`, for processes
/// without the webhook endpoint (`syncback work` with `worker.listen`).
pub fn ops_router(queue: Arc<dyn Queue>, store: Option<StoreSlot>) -> Router {
    hardened(ops_routes(Arc::new(Ops {
        queue,
        store,
        metrics: telemetry::metrics_handle(),
    })))
}

fn ops_routes(ops: Arc<Ops>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(ops)
}

/// Serve until `shutdown` resolves, then finish in-flight requests; the `[server]`
/// timeouts and connection cap at their defaults (see [`serve_with`]).
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, router, &ServerSettings::default(), shutdown).await
}

/// `application/json`, with optional parameters (`; charset=utf-8`).
fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        ct.split(';')
            .next()
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
    })
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The Standard Webhooks header, or its `svix-` twin as sent by Svix-based senders, which
/// use the same scheme under their own header names.
fn signed_header<'a>(headers: &'a HeaderMap, standard: &str, svix: &str) -> Option<&'a str> {
    header(headers, standard).or_else(|| header(headers, svix))
}

/// `syncback_webhooks_received_total` for every event type of the schema, registered
/// once (no label allocation or registry lookup per request).
struct ReceivedCounters(Vec<(&'static str, metrics::Counter)>);

impl ReceivedCounters {
    const TYPES: [&'static str; 11] = [
        "learner.created",
        "learner.updated",
        "learner.deactivated",
        "learner.reactivated",
        "enrollment.created",
        "enrollment.updated",
        "enrollment.completed",
        "enrollment.deleted",
        "certification.issued",
        "certification.revoked",
        "certification.expired",
    ];

    fn new() -> Self {
        ReceivedCounters(
            Self::TYPES
                .iter()
                .map(|t| (*t, metrics::counter!(telemetry::RECEIVED, "type" => *t)))
                .collect(),
        )
    }

    fn increment(&self, event_type: &str) {
        match self.0.iter().find(|(t, _)| *t == event_type) {
            Some((_, c)) => c.increment(1),
            None => metrics::counter!(telemetry::RECEIVED, "type" => event_type.to_string())
                .increment(1),
        }
    }
}

async fn receive_webhook(State(state): State<AppState>, req: axum::extract::Request) -> Response {
    let started = Instant::now();
    let s = &state.inner;
    // Moved out of the request, not cloned as the `HeaderMap` extractor would.
    let (parts, body) = req.into_parts();
    let headers = parts.headers;

    // 415: the envelope is JSON and nothing else.
    let ct = header(&headers, "content-type");
    if !is_json(ct) {
        return reject(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            match ct {
                Some(ct) => format!("Content-Type {ct:?} is not accepted; send application/json"),
                None => "Content-Type is missing; send application/json".into(),
            },
        );
    }

    // 413: read at most max_body_bytes (a lying or absent Content-Length does not help).
    let too_large = || {
        reject(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "body exceeds {} bytes (webhooks.max_body_bytes)",
                s.max_body_bytes
            ),
        )
    };
    if let Some(len) = header(&headers, "content-length").and_then(|l| l.parse::<usize>().ok()) {
        if len > s.max_body_bytes {
            return too_large();
        }
    }
    let raw =
        match tokio::time::timeout(s.body_timeout, axum::body::to_bytes(body, s.max_body_bytes))
            .await
        {
            Ok(Ok(b)) => b,
            Ok(Err(_)) => return too_large(),
            Err(_) => {
                let mut r = reject(
                    StatusCode::REQUEST_TIMEOUT,
                    "body_timeout",
                    format!(
                        "body not received within {} s (server.body_read_timeout_secs)",
                        s.body_timeout.as_secs()
                    ),
                );
                r.headers_mut().insert(
                    axum::http::header::CONNECTION,
                    axum::http::HeaderValue::from_static("close"),
                );
                return r;
            }
        };

    // 401: Standard Webhooks signature over the raw body, before anything is parsed.
    let id = signed_header(&headers, "webhook-id", "svix-id");
    if let Err(e) = s.verifier.verify(
        id,
        signed_header(&headers, "webhook-timestamp", "svix-timestamp"),
        signed_header(&headers, "webhook-signature", "svix-signature"),
        &raw,
        Utc::now().timestamp(),
    ) {
        let code = match e {
            SignatureError::Stale(..) => "stale_timestamp",
            SignatureError::MissingHeader(_) => "missing_signature",
            _ => "bad_signature",
        };
        return reject(StatusCode::UNAUTHORIZED, code, e.to_string());
    }
    let id = id.unwrap_or_default().to_string();

    // 400: JSON at all, and an object.
    let envelope: Value = match serde_json::from_slice(&raw) {
        Ok(v @ Value::Object(_)) => v,
        Ok(_) => {
            return reject(
                StatusCode::BAD_REQUEST,
                "not_json",
                "body must be a JSON object (the event envelope)",
            )
        }
        Err(e) => {
            return reject(
                StatusCode::BAD_REQUEST,
                "not_json",
                format!("body is not JSON: {e}"),
            )
        }
    };

    // 422: schema, then the envelope id must be the signed webhook-id.
    if let Err(violations) = s.schema.validate(&envelope) {
        let n = violations.len();
        return reject_with(
            StatusCode::UNPROCESSABLE_ENTITY,
            "schema",
            format!("envelope violates the schema ({n} violation(s))"),
            violations,
        );
    }
    if envelope.get("id").and_then(Value::as_str) != Some(id.as_str()) {
        return reject_with(
            StatusCode::UNPROCESSABLE_ENTITY,
            "schema",
            "envelope id differs from the webhook-id header",
            vec![Violation {
                path: "/id".into(),
                message: format!("must equal the webhook-id header {id:?}"),
            }],
        );
    }

    // 202 only after the publisher confirm; 503 tells SkillSync to retry later.
    let msg = Message {
        webhook_id: id.clone(),
        received_at: Utc::now(),
        envelope,
    };
    // The body exactly as signed (valid JSON, checked above) is what gets queued.
    match s.ops.queue.publish_encoded(&msg, &raw).await {
        Ok(()) => {
            let event_type = msg.event_type().unwrap_or_default();
            s.received.increment(event_type);
            s.publish_seconds.record(started.elapsed().as_secs_f64());
            // Debug, not info: one line per webhook is noise at thousands per second
            // (rejections are warnings; workers log each event's outcome).
            debug!(event_id = %id, event_type = %event_type, "webhook accepted");
            accepted(&id)
        }
        Err(e) => reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker_unavailable",
            format!("event not queued, retry later: {e}"),
        ),
    }
}

/// `202 {"status":"accepted","id":…}`, written directly (no `Value` tree per request).
fn accepted(id: &str) -> Response {
    let id = serde_json::to_string(id).unwrap_or_else(|_| "\"\"".into());
    (
        StatusCode::ACCEPTED,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        format!(r#"{{"status":"accepted","id":{id}}}"#),
    )
        .into_response()
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready when the broker (and the store, in processes that have one) answer.
async fn readyz(State(s): State<Arc<Ops>>) -> Response {
    let broker = match s.queue.ping().await {
        Ok(()) => "ok".to_string(),
        Err(e) => e.to_string(),
    };
    let store = match &s.store {
        None => None,
        Some(slot) => Some(match slot.get() {
            None => "connecting".to_string(),
            Some(st) => match st.ping().await {
                Ok(()) => "ok".to_string(),
                Err(e) => e.to_string(),
            },
        }),
    };
    let ready = broker == "ok" && store.as_deref().is_none_or(|s| s == "ok");
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = json!({"status": if ready { "ready" } else { "not_ready" }, "broker": broker});
    if let Some(store) = store {
        body["store"] = json!(store);
    }
    (status, Json(body)).into_response()
}

/// Prometheus text format; queue depths are sampled at scrape time.
async fn metrics_text(State(ops): State<Arc<Ops>>) -> Response {
    if let Ok(d) = ops.queue.depths().await {
        metrics::gauge!(telemetry::QUEUE_DEPTH, "queue" => "main").set(d.main as f64);
        metrics::gauge!(telemetry::QUEUE_DEPTH, "queue" => "retry").set(d.retrying as f64);
        metrics::gauge!(telemetry::QUEUE_DEPTH, "queue" => "dead").set(d.dead as f64);
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        ops.metrics.render(),
    )
        .into_response()
}

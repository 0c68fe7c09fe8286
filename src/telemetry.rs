//! Logs (`tracing`) and Prometheus metrics (`metrics` + `metrics-exporter-prometheus`), README "Operations".
//!
//! Metric names live here so the code, the Grafana dashboard and the docs agree.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::config::{LogFormat, LogSettings};

/// Webhooks accepted (202), label `type`.
pub const RECEIVED: &str = "syncback_webhooks_received_total";
/// Webhooks rejected, label `reason` (`bad_signature`, `stale`, `not_json`, `schema`, `too_large`, `broker_unavailable`).
pub const REJECTED: &str = "syncback_webhooks_rejected_total";
/// Seconds from receipt to publisher confirm.
pub const PUBLISH_SECONDS: &str = "syncback_publish_seconds";
/// Events settled by workers, labels `type`, `outcome` (`applied`/`skipped`/`failed`/`retried`/`dead_lettered`), `code`.
pub const EVENTS: &str = "syncback_events_total";
/// Seconds from webhook receipt to settlement (queue lag + processing), label `type`.
pub const EVENT_LAG_SECONDS: &str = "syncback_event_lag_seconds";
/// Seconds spent applying one event, label `type`.
pub const PROCESSING_SECONDS: &str = "syncback_processing_seconds";
/// Transient failures retried, label `stage` (`inprocess`/`delayed`).
pub const RETRIES: &str = "syncback_retries_total";
/// Salesforce API calls, labels `endpoint`, `status`.
pub const SF_CALLS: &str = "syncback_salesforce_calls_total";
/// Last `Sforce-Limit-Info` api-usage (used and max).
pub const SF_API_USAGE: &str = "syncback_salesforce_api_usage";
pub const SF_API_LIMIT: &str = "syncback_salesforce_api_limit";
/// Seconds Salesforce calls spent waiting for the API budget (paused or slowed), label
/// `priority` (`live`/`bulk`).
pub const SF_BUDGET_PAUSED_SECONDS: &str = "syncback_salesforce_budget_paused_seconds_total";
/// 1 while the budget governor holds a priority's calls (`salesforce.max_api_share`),
/// label `priority` (`live`/`bulk`).
pub const SF_BUDGET_PAUSED: &str = "syncback_salesforce_budget_paused";
/// SkillSync API calls, labels `endpoint`, `status`.
pub const SS_CALLS: &str = "syncback_skillsync_calls_total";
/// Queue depths, label `queue` (`main`/`retry`/`dead`).
pub const QUEUE_DEPTH: &str = "syncback_queue_depth";
/// Age (receipt → now) of the last message a worker took off the queue: how far behind
/// the head of the queue is.
pub const QUEUE_AGE_SECONDS: &str = "syncback_queue_age_seconds";

/// Drift found by reconcile, label `kind` (`missing_contact`, `field_drift`, …).
pub const RECONCILE_DRIFT: &str = "syncback_reconcile_drift_total";
/// Drift repaired by reconcile, label `kind`.
pub const RECONCILE_REPAIRED: &str = "syncback_reconcile_repaired_total";
/// Unix time a reconcile pass last finished, label `pass` (`full`/`incremental`/`verify`).
pub const RECONCILE_LAST_PASS: &str = "syncback_reconcile_last_pass_timestamp_seconds";
/// Learners whose last Salesforce write had an ambiguous outcome, awaiting verification.
pub const RECONCILE_UNCERTAIN: &str = "syncback_reconcile_uncertain_learners";

/// Every metric the service exports (the dashboard and docs are checked against this).
pub const ALL: &[&str] = &[
    RECEIVED,
    REJECTED,
    PUBLISH_SECONDS,
    EVENTS,
    EVENT_LAG_SECONDS,
    PROCESSING_SECONDS,
    RETRIES,
    SF_CALLS,
    SF_API_USAGE,
    SF_API_LIMIT,
    SF_BUDGET_PAUSED_SECONDS,
    SF_BUDGET_PAUSED,
    SS_CALLS,
    QUEUE_DEPTH,
    QUEUE_AGE_SECONDS,
    RECONCILE_DRIFT,
    RECONCILE_REPAIRED,
    RECONCILE_LAST_PASS,
    RECONCILE_UNCERTAIN,
];

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the global Prometheus recorder once; later calls return the same handle.
pub fn metrics_handle() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0, 300.0,
                ])
                .expect("static buckets")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (tests); ours still renders.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Initialise `tracing` (text or JSON lines). `RUST_LOG` overrides `log.level`.
pub fn init_logging(settings: &LogSettings) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    // The AMQP client's own ERROR lines repeat what syncback reports itself, with the
    // config key (broker unavailable (queue.url), connection lost; reconnecting): off by
    // default. These defaults come first, so a `level` naming lapin or sqlx (or RUST_LOG)
    // wins.
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("lapin=off,sqlx=warn,{}", settings.level)));
    // Colour only on a terminal (never in a file or a pipe), and never with NO_COLOR.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

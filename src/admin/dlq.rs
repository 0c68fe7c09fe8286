//! The Dead letters page (docs/rules.md R13): the same queue operations as
//! `syncback dlq list|show|replay|purge` ([`crate::queue::Queue`]), with filters, a
//! confirmation that says how many, and progress for large sets.

use std::collections::BTreeSet;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use chrono::{DateTime, NaiveDateTime, Utc};
use minijinja::context;
use serde::{Deserialize, Serialize};

use super::pages::urlenc;
use super::{page, Authed, Console};
use crate::queue::{DlqFilter, DlqProgress};
use crate::store::AuditEntry;

/// A replay or purge running in the background.
#[derive(Clone, Debug, Serialize)]
pub struct Job {
    pub op: String,
    pub total: u64,
    pub done_count: u64,
    pub done: bool,
    pub error: Option<String>,
    pub pct: u64,
}

/// The filter fields as the page shows them.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct Filters {
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default, rename = "type")]
    pub event_type: Option<String>,
    #[serde(default)]
    pub learner: Option<String>,
    #[serde(default)]
    pub since: Option<String>,
    #[serde(default)]
    pub until: Option<String>,
    #[serde(default)]
    pub flash: Option<String>,
}

fn nonempty(s: &Option<String>) -> Option<String> {
    s.as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// `datetime-local` (UTC) or RFC 3339.
fn when(s: &Option<String>) -> Option<DateTime<Utc>> {
    let v = nonempty(s)?;
    DateTime::parse_from_rfc3339(&v)
        .map(|d| d.with_timezone(&Utc))
        .ok()
        .or_else(|| {
            NaiveDateTime::parse_from_str(&v, "%Y-%m-%dT%H:%M")
                .or_else(|_| NaiveDateTime::parse_from_str(&v, "%Y-%m-%dT%H:%M:%S"))
                .ok()
                .map(|n| n.and_utc())
        })
}

impl Filters {
    fn to_filter(&self) -> DlqFilter {
        DlqFilter {
            reason: nonempty(&self.reason),
            event_type: nonempty(&self.event_type),
            learner: nonempty(&self.learner),
            since: when(&self.since),
            until: when(&self.until),
            ..Default::default()
        }
    }

    fn view(&self) -> minijinja::Value {
        context! {
            reason => nonempty(&self.reason), type => nonempty(&self.event_type),
            learner => nonempty(&self.learner), since => nonempty(&self.since), until => nonempty(&self.until),
        }
    }
}

pub async fn list(
    State(c): State<Console>,
    Extension(who): Extension<Authed>,
    Query(f): Query<Filters>,
) -> Response {
    let i = c.inner();
    let all = match i.queue.dlq_list().await {
        Ok(a) => a,
        Err(e) => {
            return i.views.error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Broker unavailable",
                &format!("The dead-letter queue could not be read: {e}"),
            )
        }
    };
    let filter = f.to_filter();
    let reasons: BTreeSet<String> = all.iter().map(|d| d.reason_kind.clone()).collect();
    let types: BTreeSet<String> = all
        .iter()
        .filter_map(|d| d.message.event_type().map(str::to_string))
        .collect();
    let total = all.len();
    let shown: Vec<_> = all.into_iter().filter(|d| filter.matches(d)).collect();
    page(
        &c,
        &who,
        "dlq.html",
        "dlq",
        context! { shown => shown, total => total, reasons => reasons, types => types,
        f => f.view(), flash => f.flash },
    )
}

pub async fn show(
    State(c): State<Console>,
    Extension(who): Extension<Authed>,
    Path(id): Path<String>,
) -> Response {
    let i = c.inner();
    let Some(d) = i.queue.dlq_find(&id).await.ok().flatten() else {
        return i.views.error(
            StatusCode::NOT_FOUND,
            "No such dead letter",
            &format!("No dead letter with id {id} (it may have been replayed or purged)."),
        );
    };
    let history: Vec<serde_json::Value> = match &d.learner_id {
        Some(l) => i
            .store
            .history(l, 50)
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                serde_json::json!({"recorded_at": r.recorded_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                    "event_id": r.event_id, "event_type": r.event_type, "class": r.class.as_str(),
                    "code": r.code, "detail": r.detail})
            })
            .collect(),
        None => Vec::new(),
    };
    let resolvable = matches!(
        d.reason_kind.as_str(),
        "contact_ambiguous" | "contact_conflict" | "account_not_found" | "account_ambiguous"
    );
    let envelope = serde_json::to_string_pretty(&d.message.envelope).unwrap_or_default();
    page(
        &c,
        &who,
        "dlq_event.html",
        "dlq",
        context! { d => d, history => history, envelope => envelope, resolvable => resolvable },
    )
}

pub async fn action(
    State(c): State<Console>,
    Extension(who): Extension<Authed>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let i = c.inner();
    let get = |k: &str| {
        form.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    let op = get("op").unwrap_or_default();
    if op != "replay" && op != "purge" {
        return i.views.error(
            StatusCode::BAD_REQUEST,
            "Unknown action",
            "op must be replay or purge.",
        );
    }
    let scope = get("scope").unwrap_or_else(|| "selected".into());
    let ids: Vec<String> = form
        .iter()
        .filter(|(k, _)| k == "ids")
        .map(|(_, v)| v.clone())
        .collect();
    let filters = Filters {
        reason: get("reason"),
        event_type: get("type"),
        learner: get("learner"),
        since: get("since"),
        until: get("until"),
        flash: None,
    };
    let filter = if scope == "matching" {
        filters.to_filter()
    } else {
        if ids.is_empty() {
            return Redirect::to(&format!(
                "/dlq?flash={}",
                urlenc("Nothing selected: tick some dead letters, or choose “all matching the filter”.")
            ))
            .into_response();
        }
        DlqFilter {
            ids: ids.clone(),
            ..Default::default()
        }
    };
    let all = match i.queue.dlq_list().await {
        Ok(a) => a,
        Err(e) => {
            return i.views.error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Broker unavailable",
                &e.to_string(),
            )
        }
    };
    let matching: Vec<String> = all
        .iter()
        .filter(|d| filter.matches(d))
        .map(|d| d.message.webhook_id.clone())
        .collect();
    let count = matching.len() as u64;
    if count == 0 {
        return Redirect::to(&format!(
            "/dlq?flash={}",
            urlenc("Nothing matches any more.")
        ))
        .into_response();
    }
    if get("confirmed").is_none() {
        return page(
            &c,
            &who,
            "dlq_confirm.html",
            "dlq",
            context! { op => op, count => count, scope => scope, ids => ids,
            f => filters.view(), sample => matching.iter().take(5).collect::<Vec<_>>() },
        );
    }
    let job_id = crate::admin::auth::token()[..12].to_string();
    i.jobs.lock().unwrap().insert(
        job_id.clone(),
        Job {
            op: op.clone(),
            total: count,
            done_count: 0,
            done: false,
            error: None,
            pct: 0,
        },
    );
    let c2 = c.clone();
    let (jid, user) = (job_id.clone(), who.user.clone());
    let describe = if scope == "matching" {
        format!("dead letters matching {:?}", filter_text(&filters))
    } else {
        format!("{} selected dead letters", ids.len())
    };
    tokio::spawn(async move {
        let i = c2.inner();
        // `done_count` counts dead letters replayed or purged; the bar follows them, or
        // for a purge how much of the DLQ was gone through when the backend knows its depth.
        let update = |n: u64, pct: u64| {
            if let Some(j) = i.jobs.lock().unwrap().get_mut(&jid) {
                j.done_count = n;
                j.pct = pct.min(100);
            }
        };
        let result = if op == "replay" {
            let progress = |n: u64| update(n, n * 100 / count.max(1));
            i.queue.dlq_replay(&filter, &progress).await
        } else {
            let progress = |p: DlqProgress| update(p.removed, purge_pct(p, count));
            i.queue.dlq_purge(&filter, &progress).await
        };
        let (n, err) = match result {
            Ok(n) => (n, None),
            Err(e) => (0, Some(e.to_string())),
        };
        if let Some(j) = i.jobs.lock().unwrap().get_mut(&jid) {
            if err.is_none() {
                j.done_count = n;
                j.pct = 100;
            }
            j.done = true;
            j.error = err.clone();
        }
        let _ = i
            .store
            .add_audit(&AuditEntry {
                at: Utc::now(),
                actor: user,
                action: format!("dlq.{op}"),
                target: describe,
                before: Some(format!("{count} dead letters")),
                after: Some(match err {
                    None => format!("{n} {}", if op == "replay" { "replayed" } else { "purged" }),
                    Some(e) => format!("stopped: {e}"),
                }),
            })
            .await;
    });
    Redirect::to(&format!("/dlq/jobs/{job_id}")).into_response()
}

/// A purge job's bar: how much of the DLQ was gone through when the backend knows its
/// depth (the matching dead letters may all be near its head), else the share of the
/// `count` matching ones removed.
fn purge_pct(p: DlqProgress, count: u64) -> u64 {
    match p.total {
        Some(t) => p.seen * 100 / t.max(1),
        None => p.removed * 100 / count.max(1),
    }
}

fn filter_text(f: &Filters) -> String {
    let mut parts = Vec::new();
    for (k, v) in [
        ("reason", &f.reason),
        ("type", &f.event_type),
        ("learner", &f.learner),
        ("since", &f.since),
        ("until", &f.until),
    ] {
        if let Some(v) = nonempty(v) {
            parts.push(format!("{k}={v}"));
        }
    }
    if parts.is_empty() {
        "all".into()
    } else {
        parts.join(" ")
    }
}

pub async fn job(
    State(c): State<Console>,
    Extension(who): Extension<Authed>,
    Path(id): Path<String>,
) -> Response {
    let job = c.inner().jobs.lock().unwrap().get(&id).cloned();
    match job {
        Some(j) => page(
            &c,
            &who,
            "dlq_job.html",
            "dlq",
            context! { job => j, job_id => id },
        ),
        None => c.inner().views.error(
            StatusCode::NOT_FOUND,
            "No such job",
            "This replay/purge is not known to this console process.",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purge_bar_follows_the_dlq_gone_through_when_its_depth_is_known() {
        let p = |seen, total, removed| DlqProgress {
            seen,
            total,
            removed,
        };
        // All 3 matching removed a quarter of the way through a DLQ of 200: 25 %, not 100 %.
        assert_eq!(purge_pct(p(50, Some(200), 3), 3), 25);
        assert_eq!(purge_pct(p(200, Some(200), 3), 3), 100);
        assert_eq!(purge_pct(p(7, None, 1), 4), 25);
        assert_eq!(purge_pct(p(0, Some(0), 0), 0), 0);
    }
}

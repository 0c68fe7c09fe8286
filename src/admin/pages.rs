//! Console pages: Overview and Data Mapping (Learners, Resolve and Audit: [`super::learners`]).

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use chrono::{DateTime, Utc};
use minijinja::context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{mapping, page, Authed, Console};
use crate::config::ManagedBy;
use crate::salesforce::{soql, SalesforceApi};
use crate::skillsync::SkillSyncApi;

pub(crate) fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

fn ago(t: DateTime<Utc>) -> String {
    let s = (Utc::now() - t).num_seconds().max(0);
    match s {
        0..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

// ---------------------------------------------------------------- Overview

pub async fn overview(State(c): State<Console>, Extension(who): Extension<Authed>) -> Response {
    let panel = overview_data(&c).await;
    page(&c, &who, "overview.html", "overview", panel)
}

pub async fn overview_panel(State(c): State<Console>) -> Response {
    let ctx = overview_data(&c).await;
    c.inner().views.render("overview_panel.html", ctx)
}

#[derive(Serialize, Default)]
struct PerClass {
    applied: i64,
    skipped: i64,
    failed: i64,
}

async fn overview_data(c: &Console) -> minijinja::Value {
    let i = c.inner();
    let now = Utc::now();
    let (depths, queue_error) = match i.queue.depths().await {
        Ok(d) => (Some(d), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let tally = |counts: &[crate::store::OutcomeCount], div: i64| {
        let mut p = PerClass::default();
        for o in counts {
            match o.class.as_str() {
                "applied" => p.applied += o.count,
                "skipped" => p.skipped += o.count,
                _ => p.failed += o.count,
            }
        }
        p.applied /= div;
        p.skipped /= div;
        p.failed /= div;
        p
    };
    let last_min = i
        .store
        .outcome_counts(now - chrono::Duration::minutes(1))
        .await
        .unwrap_or_default();
    let last_15 = i
        .store
        .outcome_counts(now - chrono::Duration::minutes(15))
        .await
        .unwrap_or_default();
    let mut dlq_reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut dlq_oldest: Option<DateTime<Utc>> = None;
    if let Ok(all) = i.queue.dlq_list().await {
        for d in all {
            let at = d.first_failure_at.unwrap_or(d.message.received_at);
            dlq_oldest = Some(dlq_oldest.map_or(at, |o| o.min(at)));
            *dlq_reasons.entry(d.reason_kind).or_default() += 1;
        }
    }
    let workers: Vec<Value> = i
        .store
        .workers_seen(now - chrono::Duration::seconds(60))
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|w| {
            serde_json::json!({"worker_id": w.worker_id, "host": w.host, "role": w.role,
                "mapping_version": w.mapping_version, "ago": ago(w.seen_at),
                "api_used": w.api_used, "api_max": w.api_max})
        })
        .collect();
    // API usage: the freshest of the console's own client and the workers' reports.
    let api =
        i.sf.api_usage()
            .map(|(u, m)| {
                (
                    u as i64,
                    m as i64,
                    "as last reported by Salesforce to the console",
                )
            })
            .or_else(|| {
                workers.iter().find_map(|w| {
                    Some((
                        w["api_used"].as_i64()?,
                        w["api_max"].as_i64()?,
                        "as last reported by Salesforce to a worker",
                    ))
                })
            })
            .map(|(used, max, source)| {
                serde_json::json!({"used": used, "max": max, "source": source,
                "pct": if max > 0 { (used * 100 / max).min(100) } else { 0 }})
            });
    let failures: Vec<Value> = i
        .store
        .recent_failures(10)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            serde_json::json!({"recorded_at": ts(r.recorded_at), "learner_id": r.learner_id,
                "event_type": r.event_type, "code": r.code, "detail": r.detail})
        })
        .collect();
    let newest = i.store.recent_outcome().await.ok().flatten();
    context! {
        depths => depths,
        queue_error => queue_error,
        per_min => tally(&last_min, 1),
        per_15 => tally(&last_15, 1),
        outcomes => last_15,
        dlq_reasons => dlq_reasons.into_iter().collect::<Vec<_>>(),
        dlq_oldest => dlq_oldest.map(ago),
        workers => workers,
        api => api,
        failures => failures,
        newest_outcome => newest.as_ref().map(|r| ago(r.recorded_at)),
        lag => newest.as_ref().map(|r| {
            let ms = (r.recorded_at - r.occurred_at).num_milliseconds().max(0);
            if ms < 10_000 { format!("{ms} ms") } else { format!("{} s", ms / 1000) }
        }),
    }
}

// ---------------------------------------------------------------- Data Mapping

async fn contact_field_names(c: &Console) -> (Vec<String>, Option<String>) {
    match c.inner().sf.describe("Contact").await {
        Ok(d) => {
            let mut v: Vec<String> = d
                .fields
                .iter()
                .filter(|f| matches!(f.field_type.as_str(), "string" | "email" | "phone" | "url"))
                .map(|f| f.name.clone())
                .collect();
            v.sort();
            (v, None)
        }
        Err(e) => (
            Vec::new(),
            Some(format!(
                "(Could not read the Contact fields from Salesforce: {e})"
            )),
        ),
    }
}

async fn render_mapping(
    c: &Console,
    who: &Authed,
    view: &mapping::MappingView,
    shown: &crate::config::SyncSettings,
    errors: BTreeMap<String, String>,
    saved: Option<i64>,
    error: Option<String>,
) -> Response {
    let i = c.inner();
    let (mut fields, describe_note) = contact_field_names(c).await;
    if !fields.contains(&shown.match_field) {
        fields.insert(0, shown.match_field.clone());
    }
    let dept_name = match shown.source_department_id.trim() {
        "" => None,
        id => i.ss.department(id).await.ok().flatten().map(|d| d.name),
    };
    let default_account_name = match shown.default_account_id.trim() {
        "" => None,
        id => {
            i.sf.get("Account", id, &["Name"])
                .await
                .ok()
                .and_then(|r| r.get("Name").and_then(Value::as_str).map(str::to_string))
        }
    };
    let status = if errors.is_empty() && error.is_none() {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let mut r = page(
        c,
        who,
        "mapping.html",
        "mapping",
        context! {
            s => shown,
            readonly => view.managed_by == ManagedBy::File,
            version => view.version,
            saved_by => view.saved_by,
            saved_at => view.saved_at.map(ts),
            field_map => mapping::field_map_text(shown),
            contact_fields => fields,
            describe_note => describe_note,
            dept_name => dept_name,
            default_account_name => default_account_name,
            errors => errors,
            saved => saved,
            error => error,
        },
    );
    *r.status_mut() = status;
    r
}

#[derive(Deserialize, Default)]
pub struct SavedQuery {
    saved: Option<i64>,
}

pub async fn mapping_page(
    State(c): State<Console>,
    Extension(who): Extension<Authed>,
    Query(q): Query<SavedQuery>,
) -> Response {
    let i = c.inner();
    match mapping::current(i.store.as_ref(), &i.settings.sync).await {
        Ok(view) => {
            let shown = view.settings.clone();
            render_mapping(&c, &who, &view, &shown, BTreeMap::new(), q.saved, None).await
        }
        Err(e) => i.views.error(
            StatusCode::SERVICE_UNAVAILABLE,
            "Store unavailable",
            &e.to_string(),
        ),
    }
}

pub async fn mapping_save(
    State(c): State<Console>,
    Extension(who): Extension<Authed>,
    Form(form): Form<Vec<(String, String)>>,
) -> Response {
    let i = c.inner();
    let view = match mapping::current(i.store.as_ref(), &i.settings.sync).await {
        Ok(v) => v,
        Err(e) => {
            return i.views.error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Store unavailable",
                &e.to_string(),
            )
        }
    };
    if view.managed_by == ManagedBy::File {
        return i.views.error(
            StatusCode::CONFLICT,
            "Mapping is read-only",
            &mapping::SaveError::FileManaged.to_string(),
        );
    }
    // The version the form was based on: a save over someone else's newer one is refused.
    let based_on = form
        .iter()
        .find(|(k, _)| k == "version")
        .and_then(|(_, v)| v.parse::<i64>().ok());
    let mut pairs: Vec<(String, String)> = form
        .into_iter()
        .filter(|(k, _)| !matches!(k.as_str(), "csrf" | "version" | "account_q"))
        .collect();
    // An unchecked checkbox is absent from the form: Inbound Learner Sync off.
    if !pairs.iter().any(|(k, _)| k == "enabled") {
        pairs.push(("enabled".into(), "false".into()));
    }
    let next = match mapping::apply_pairs(&view.settings, &pairs) {
        Ok(n) => n,
        Err(errs) => {
            let errors = errs.into_iter().map(|e| (e.field, e.message)).collect();
            return render_mapping(&c, &who, &view, &view.settings, errors, None, None).await;
        }
    };
    let mut base = view.clone();
    if based_on.is_some() {
        base.version = based_on;
    }
    match mapping::save(
        i.store.as_ref(),
        &i.sf,
        i.ss.as_ref(),
        &base,
        next.clone(),
        &who.user,
    )
    .await
    {
        Ok(v) => Redirect::to(&format!("/mapping?saved={v}")).into_response(),
        Err(mapping::SaveError::Invalid(errs)) => {
            let mut errors = BTreeMap::new();
            for e in errs {
                errors.entry(e.field).or_insert(e.message);
            }
            render_mapping(&c, &who, &view, &next, errors, None, None).await
        }
        Err(e) => {
            render_mapping(
                &c,
                &who,
                &view,
                &next,
                BTreeMap::new(),
                None,
                Some(e.to_string()),
            )
            .await
        }
    }
}

#[derive(Deserialize)]
pub struct DeptForm {
    #[serde(default)]
    source_department_id: String,
}

/// The Validate button (R2): asks SkillSync for the department.
pub async fn validate_department(State(c): State<Console>, Form(f): Form<DeptForm>) -> Response {
    let id = f.source_department_id.trim();
    let html = if id.is_empty() {
        r#"<span class="badge failed" id="dept-error">Enter a department id first</span>"#
            .to_string()
    } else {
        match c.inner().ss.department(id).await {
            Ok(Some(d)) => format!(
                r#"<span class="badge ok" id="dept-name">✓ {}</span>"#,
                esc(&d.name)
            ),
            Ok(None) => format!(
                r#"<span class="badge failed" id="dept-error">SkillSync has no department {}</span>"#,
                esc(id)
            ),
            Err(e) => format!(
                r#"<span class="badge failed" id="dept-error">Could not ask SkillSync: {}</span>"#,
                esc(&e.to_string())
            ),
        }
    };
    Html(html).into_response()
}

#[derive(Deserialize)]
pub struct AccountQuery {
    #[serde(default)]
    account_q: String,
}

/// The Account picker: Salesforce Accounts whose name contains the text.
pub async fn account_search(State(c): State<Console>, Query(q): Query<AccountQuery>) -> Response {
    let text = q.account_q.trim();
    if text.is_empty() {
        return Html(String::new()).into_response();
    }
    // The text matches itself only (wildcards escaped), anywhere in the name.
    let lit = soql::like_literal(text);
    let soql = format!(
        "SELECT Id, Name FROM Account WHERE Name LIKE '%{}%' ORDER BY Name LIMIT 20",
        &lit[1..lit.len() - 1]
    );
    let html = match c.inner().sf.query(&soql).await {
        Ok(rows) if rows.is_empty() => {
            format!(
                r#"<div class="picker-results"><div class="muted" style="padding:8px">No Account named like “{}”.</div></div>"#,
                esc(text)
            )
        }
        Ok(rows) => {
            let mut s = String::from(r#"<div class="picker-results">"#);
            for r in rows {
                let id = r.get("Id").and_then(Value::as_str).unwrap_or_default();
                let name = r.get("Name").and_then(Value::as_str).unwrap_or_default();
                s.push_str(&format!(
                    r#"<button type="button" class="account-option" data-id="{id}" onclick="pickAccount(this.dataset.id, this.dataset.name)" data-name="{n}">{n} <span class="muted">{id}</span></button>"#,
                    id = esc(id),
                    n = esc(name)
                ));
            }
            s.push_str("</div>");
            s
        }
        Err(e) => format!(
            r#"<div class="picker-results"><div class="err" style="padding:8px">Salesforce: {}</div></div>"#,
            esc(&e.to_string())
        ),
    };
    Html(html).into_response()
}

pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

pub(crate) fn urlenc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

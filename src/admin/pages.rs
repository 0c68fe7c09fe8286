//! Console pages: Overview, Data Mapping, Learners, Resolve ambiguity, Audit log.

use std::collections::BTreeMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use chrono::{DateTime, Utc};
use minijinja::context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{actions, mapping, page, Authed, Console};
use crate::config::{AccountRule, ManagedBy};
use crate::salesforce::{soql, SalesforceApi};
use crate::skillsync::SkillSyncApi;
use crate::store::LinkState;

fn ts(t: DateTime<Utc>) -> String {
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
    if let Ok(all) = i.queue.dlq_list().await {
        for d in all {
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
        &i.ss,
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

// ---------------------------------------------------------------- Learners

#[derive(Deserialize, Default)]
pub struct SearchQuery {
    q: Option<String>,
}

#[derive(Serialize)]
struct Found {
    learner_id: String,
    how: String,
    contact: Option<String>,
    link: Option<String>,
}

pub async fn learners(
    State(c): State<Console>,
    Extension(who): Extension<Authed>,
    Query(q): Query<SearchQuery>,
) -> Response {
    let i = c.inner();
    let query = q.q.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let mut results: Vec<Found> = Vec::new();
    let mut notes = Vec::new();
    if let Some(text) = query {
        if let Ok(Some(st)) = i.store.learner(text).await {
            results.push(Found {
                learner_id: st.learner_id,
                how: "learner id (synced)".into(),
                contact: st.contact_id,
                link: Some(st.link.as_str().into()),
            });
        } else {
            match i.ss.learner(text).await {
                Ok(Some(l)) => results.push(Found {
                    learner_id: l.id,
                    how: "learner id (SkillSync; never synced)".into(),
                    contact: None,
                    link: None,
                }),
                Ok(None) => {}
                Err(e) => notes.push(format!("SkillSync could not be asked: {e}")),
            }
        }
        // Username or email: the Contacts carrying it, and the learner each is linked to.
        let s = &i.settings.sync;
        let current = mapping::current(i.store.as_ref(), s)
            .await
            .map(|v| v.settings);
        let s = current.as_ref().unwrap_or(s);
        let mut cond = vec![soql::eq("Email", text)];
        if !s.match_field.eq_ignore_ascii_case("Email") {
            cond.push(soql::eq(&s.match_field, text));
        }
        let q = format!(
            "SELECT Id, {lf} FROM Contact WHERE {} LIMIT 50",
            cond.join(" OR "),
            lf = s.link_field
        );
        match i.sf.query(&q).await {
            Ok(rows) => {
                for r in rows {
                    let contact = r.get("Id").and_then(Value::as_str).unwrap_or_default();
                    if let Some(lid) = r.get(&s.link_field).and_then(Value::as_str) {
                        if !results.iter().any(|f| f.learner_id == lid) {
                            let st = i.store.learner(lid).await.ok().flatten();
                            results.push(Found {
                                learner_id: lid.to_string(),
                                how: "username / email (Salesforce Contact)".into(),
                                contact: Some(contact.to_string()),
                                link: st.map(|s| s.link.as_str().to_string()),
                            });
                        }
                    }
                }
            }
            Err(e) => notes.push(format!("Salesforce could not be searched: {e}")),
        }
        if results.len() == 1 && notes.is_empty() {
            return Redirect::to(&format!("/learners/{}", urlenc(&results[0].learner_id)))
                .into_response();
        }
    }
    let recent: Vec<Value> = i
        .store
        .recent_learners(25)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|l| {
            serde_json::json!({"learner_id": l.learner_id, "link": l.link.as_str(),
                "contact_id": l.contact_id, "last_outcome": l.last_outcome, "updated_at": ts(l.updated_at)})
        })
        .collect();
    page(
        &c,
        &who,
        "learners.html",
        "learners",
        context! { q => query, results => results, notes => notes, recent => recent },
    )
}

pub(crate) fn urlenc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[derive(Deserialize, Default)]
pub struct FlashQuery {
    flash: Option<String>,
    error: Option<String>,
}

pub async fn learner(
    State(c): State<Console>,
    Extension(who): Extension<Authed>,
    Path(id): Path<String>,
    Query(fq): Query<FlashQuery>,
) -> Response {
    let i = c.inner();
    let state = i.store.learner(&id).await.ok().flatten();
    let history: Vec<Value> = i
        .store
        .history(&id, 50)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|r| {
            serde_json::json!({"recorded_at": ts(r.recorded_at), "event_id": r.event_id,
                "event_type": r.event_type, "class": r.class.as_str(), "code": r.code, "detail": r.detail})
        })
        .collect();
    let (snapshot, snapshot_error) = match i.ss.learner(&id).await {
        Ok(l) => (l, None),
        Err(e) => (None, Some(e.to_string())),
    };
    let mut contact_name = None;
    let mut account_name = None;
    let mut contact_url = None;
    let (mut enrollments, mut certifications) = (None, None);
    if let Some(cid) = state.as_ref().and_then(|s| s.contact_id.clone()) {
        if let Ok(rec) =
            i.sf.get("Contact", &cid, &["FirstName", "LastName", "AccountId"])
                .await
        {
            let f = |k: &str| rec.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            contact_name = Some(
                format!("{} {}", f("FirstName"), f("LastName"))
                    .trim()
                    .to_string(),
            );
            let acc = f("AccountId");
            if !acc.is_empty() {
                account_name =
                    i.sf.get("Account", &acc, &["Name"])
                        .await
                        .ok()
                        .and_then(|a| {
                            a.get("Name")
                                .and_then(Value::as_str)
                                .map(|n| format!("{n} ({acc})"))
                        });
            }
        }
        if let Some(base) = i.sf.instance_url().await {
            contact_url = Some(format!("{base}/lightning/r/Contact/{cid}/view"));
        }
        if state.as_ref().is_some_and(|s| s.link == LinkState::Linked) {
            for (obj, slot) in [
                ("SkillSync_Enrollment__c", &mut enrollments),
                ("SkillSync_Certification__c", &mut certifications),
            ] {
                let q = format!(
                    "SELECT Id FROM {obj} WHERE {}",
                    soql::eq("Contact__c", &cid)
                );
                *slot = i.sf.query(&q).await.ok().map(|r| r.len());
            }
        }
    }
    let dead: Vec<_> = i
        .queue
        .dlq_list()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|d| d.learner_id.as_deref() == Some(id.as_str()))
        .collect();
    page(
        &c,
        &who,
        "learner.html",
        "learners",
        context! {
            id => id, state => state, history => history, snapshot => snapshot,
            snapshot_error => snapshot_error, contact_name => contact_name,
            account_name => account_name, contact_url => contact_url,
            enrollments => enrollments, certifications => certifications, dead => dead,
            flash => fq.flash, error => fq.error,
        },
    )
}

pub async fn learner_resync(
    State(c): State<Console>,
    Extension(who): Extension<Authed>,
    Path(id): Path<String>,
) -> Response {
    let i = c.inner();
    let to = match actions::resync(&id, &i.ss, i.queue.as_ref(), i.store.as_ref(), &who.user).await
    {
        Ok(ev) => format!(
            "/learners/{}?flash={}",
            urlenc(&id),
            urlenc(&format!(
                "Re-sync queued as event {ev}; it is applied within seconds."
            ))
        ),
        Err(e) => format!("/learners/{}?error={}", urlenc(&id), urlenc(&e.to_string())),
    };
    Redirect::to(&to).into_response()
}

// ---------------------------------------------------------------- Resolve ambiguity

pub async fn resolve(
    State(c): State<Console>,
    Extension(who): Extension<Authed>,
    Path(event_id): Path<String>,
) -> Response {
    resolve_page(&c, &who, &event_id, None).await
}

async fn resolve_page(
    c: &Console,
    who: &Authed,
    event_id: &str,
    error: Option<String>,
) -> Response {
    let i = c.inner();
    let Some(d) = i
        .queue
        .dlq_list()
        .await
        .unwrap_or_default()
        .into_iter()
        .find(|d| d.message.webhook_id == event_id)
    else {
        return i.views.error(
            StatusCode::NOT_FOUND,
            "No such dead letter",
            &format!("No dead letter with id {event_id} (it may have been replayed or purged)."),
        );
    };
    let s = mapping::current(i.store.as_ref(), &i.settings.sync)
        .await
        .map(|v| v.settings)
        .unwrap_or_else(|_| i.settings.sync.clone());
    let learner_json = &d.message.envelope["data"]["learner"];
    let learner_id = d.learner_id.clone().unwrap_or_default();
    let mut username = learner_json["username"].as_str().map(str::to_string);
    let snapshot = if learner_json.is_object() {
        serde_json::from_value::<crate::model::Learner>(learner_json.clone()).ok()
    } else {
        i.ss.learner(&learner_id).await.ok().flatten()
    };
    if username.is_none() {
        username = snapshot.as_ref().map(|l| l.username.clone());
    }
    let kind = match d.reason_kind.as_str() {
        "contact_ambiguous" | "contact_conflict" => "contact",
        "account_not_found" | "account_ambiguous" => "account",
        _ => "other",
    };
    let (mut candidates, mut candidates_error) = (Vec::new(), None);
    if kind == "contact" {
        if let Some(u) = &username {
            match actions::candidates(u, &s, &i.sf).await {
                Ok(cs) => candidates = cs,
                Err(e) => candidates_error = Some(e.to_string()),
            }
        }
    }
    let (account_name, rule) = match s.account_rule {
        AccountRule::Default => (
            None,
            format!("rule A: the default Account {}", s.default_account_id),
        ),
        AccountRule::Department => (
            snapshot.as_ref().and_then(|l| l.department_name.clone()),
            "rule B: the Account named like the learner's department".to_string(),
        ),
        AccountRule::LearnerField => (
            snapshot
                .as_ref()
                .and_then(|l| l.fields.get(&s.account_field).cloned().flatten()),
            format!(
                "rule C: the Account named by learner field {}",
                s.account_field
            ),
        ),
    };
    page(
        c,
        who,
        "resolve.html",
        "dlq",
        context! {
            d => d, kind => kind, learner_id => learner_id, username => username,
            candidates => candidates, candidates_error => candidates_error,
            match_field => s.match_field, account_name => account_name, rule => rule,
            error => error,
        },
    )
}

#[derive(Deserialize)]
pub struct LinkForm {
    #[serde(default)]
    contact_id: String,
}

pub async fn resolve_link(
    State(c): State<Console>,
    Extension(who): Extension<Authed>,
    Path(event_id): Path<String>,
    Form(f): Form<LinkForm>,
) -> Response {
    let i = c.inner();
    if f.contact_id.trim().is_empty() {
        return resolve_page(&c, &who, &event_id, Some("Choose a Contact first.".into())).await;
    }
    let Some(d) = i
        .queue
        .dlq_list()
        .await
        .unwrap_or_default()
        .into_iter()
        .find(|d| d.message.webhook_id == event_id)
    else {
        return i.views.error(
            StatusCode::NOT_FOUND,
            "No such dead letter",
            "It may have been replayed or purged meanwhile.",
        );
    };
    let Some(learner_id) = d.learner_id.clone() else {
        return resolve_page(
            &c,
            &who,
            &event_id,
            Some("This dead letter names no learner.".into()),
        )
        .await;
    };
    let s = mapping::current(i.store.as_ref(), &i.settings.sync)
        .await
        .map(|v| v.settings)
        .unwrap_or_else(|_| i.settings.sync.clone());
    match actions::link(
        &learner_id,
        f.contact_id.trim(),
        &s,
        &i.sf,
        i.store.as_ref(),
        i.queue.as_ref(),
        &who.user,
    )
    .await
    {
        Ok(n) => Redirect::to(&format!(
            "/learners/{}?flash={}",
            urlenc(&learner_id),
            urlenc(&format!(
                "Linked to Contact {}; {n} dead letter(s) replayed.",
                f.contact_id.trim()
            ))
        ))
        .into_response(),
        Err(e) => resolve_page(&c, &who, &event_id, Some(e.to_string())).await,
    }
}

// ---------------------------------------------------------------- Audit

pub async fn audit(State(c): State<Console>, Extension(who): Extension<Authed>) -> Response {
    let entries: Vec<Value> = c
        .inner()
        .store
        .audit(200)
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            serde_json::json!({"at": ts(e.at), "actor": e.actor, "action": e.action,
                "target": e.target, "before": e.before, "after": e.after})
        })
        .collect();
    page(
        &c,
        &who,
        "audit.html",
        "audit",
        context! { entries => entries },
    )
}

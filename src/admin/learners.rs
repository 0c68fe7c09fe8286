//! Console pages: Learners (search, a learner's page, Re-sync now), Resolve ambiguity,
//! Audit log.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use minijinja::context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::pages::{ts, urlenc};
use super::{actions, mapping, page, Authed, Console};
use crate::config::AccountRule;
use crate::salesforce::{soql, SalesforceApi};
use crate::skillsync::SkillSyncApi;
use crate::store::LinkState;

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
        // Learners not linked to any Contact (e.g. failed with contact_ambiguous): the
        // snapshots in their dead letters.
        if let Ok(dead) = i.queue.dlq_list().await {
            for d in dead {
                let l = &d.message.envelope["data"]["learner"];
                let hit = ["username", "email"]
                    .iter()
                    .any(|k| l[*k].as_str().is_some_and(|v| v.eq_ignore_ascii_case(text)));
                if let (true, Some(lid)) = (hit, d.learner_id.clone()) {
                    if !results.iter().any(|f| f.learner_id == lid) {
                        let st = i.store.learner(&lid).await.ok().flatten();
                        results.push(Found {
                            learner_id: lid,
                            how: format!("username / email (dead letter {})", d.message.webhook_id),
                            contact: st.as_ref().and_then(|s| s.contact_id.clone()),
                            link: st.map(|s| s.link.as_str().to_string()),
                        });
                    }
                }
            }
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
    let to = match actions::resync(
        &id,
        i.ss.as_ref(),
        i.queue.as_ref(),
        i.store.as_ref(),
        &who.user,
    )
    .await
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
    let Some(d) = i.queue.dlq_find(event_id).await.ok().flatten() else {
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
    let Some(d) = i.queue.dlq_find(&event_id).await.ok().flatten() else {
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
    let engine = match i.engine().await {
        Ok(e) => e,
        Err(e) => return resolve_page(&c, &who, &event_id, Some(e.to_string())).await,
    };
    match actions::link(
        &learner_id,
        f.contact_id.trim(),
        engine,
        &i.sf,
        i.ss.as_ref(),
        i.queue.as_ref(),
        &who.user,
    )
    .await
    {
        Ok(l) => Redirect::to(&format!(
            "/learners/{}?flash={}",
            urlenc(&learner_id),
            urlenc(&format!(
                "Linked to Contact {} ({}: {}); {} dead letter(s) replayed.",
                f.contact_id.trim(),
                l.outcome.code,
                l.outcome.detail,
                l.replayed
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

//! Console actions that also exist on the command line (`learner resync`,
//! `learner link`) — one implementation for both (README "Admin console").

use chrono::Utc;
use serde_json::{json, Value};

use crate::config::SyncSettings;
use crate::queue::{DlqFilter, Message, Queue};
use crate::salesforce::{soql, Record, SalesforceApi, SfError};
use crate::skillsync::SkillSyncApi;
use crate::store::{AuditEntry, LearnerState, LinkState, Store};

/// Re-sync a learner now: fetch its SkillSync snapshot and queue it as a
/// `learner.updated` event, so it is applied through the normal rules (R1–R12) by the
/// workers, with the mapping in force when it is applied. Returns the event id.
pub async fn resync(
    learner_id: &str,
    ss: &dyn SkillSyncApi,
    queue: &dyn Queue,
    store: &dyn Store,
    actor: &str,
) -> anyhow::Result<String> {
    let learner = ss
        .learner(learner_id)
        .await
        .map_err(|e| anyhow::anyhow!("SkillSync: {e}"))?
        .ok_or_else(|| anyhow::anyhow!("SkillSync has no learner {learner_id}"))?;
    let id = format!("resync_{}", uuid::Uuid::now_v7().simple());
    let now = Utc::now();
    let envelope = json!({
        "id": id,
        "type": "learner.updated",
        "occurred_at": now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "data": { "learner": learner },
    });
    queue
        .publish(&Message {
            webhook_id: id.clone(),
            received_at: now,
            envelope,
        })
        .await
        .map_err(|e| anyhow::anyhow!("queueing the re-sync: {e}"))?;
    store
        .add_audit(&AuditEntry {
            at: now,
            actor: actor.into(),
            action: "learner.resync".into(),
            target: format!("learner {learner_id}"),
            before: None,
            after: Some(format!("queued {id}")),
        })
        .await?;
    Ok(id)
}

/// A Contact a learner could be linked to (Resolve ambiguity page).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Candidate {
    pub id: String,
    pub name: String,
    pub email: String,
    pub match_value: String,
    pub account_id: String,
    pub account_name: String,
    pub last_modified: String,
    /// The learner the Contact is linked to already, if any.
    pub linked_to: Option<String>,
}

fn text(r: &Record, f: &str) -> String {
    match r.get(f) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(v) => v.to_string(),
    }
}

/// The Contacts whose match field equals `username` (R5), with their Accounts.
pub async fn candidates(
    username: &str,
    s: &SyncSettings,
    sf: &dyn SalesforceApi,
) -> Result<Vec<Candidate>, SfError> {
    let mut fields = vec![
        "Id",
        "FirstName",
        "LastName",
        "Email",
        "AccountId",
        "LastModifiedDate",
    ];
    for f in [s.match_field.as_str(), s.link_field.as_str()] {
        if !fields.iter().any(|x| x.eq_ignore_ascii_case(f)) {
            fields.push(f);
        }
    }
    let q = format!(
        "SELECT {} FROM Contact WHERE {}",
        fields.join(", "),
        soql::eq(&s.match_field, username)
    );
    let rows = sf.query(&q).await?;
    let mut out = Vec::new();
    for r in rows {
        let account_id = text(&r, "AccountId");
        let account_name = if account_id.is_empty() {
            String::new()
        } else {
            match sf.get("Account", &account_id, &["Name"]).await {
                Ok(a) => text(&a, "Name"),
                Err(_) => String::new(),
            }
        };
        let link = text(&r, &s.link_field);
        out.push(Candidate {
            id: text(&r, "Id"),
            name: format!("{} {}", text(&r, "FirstName"), text(&r, "LastName"))
                .trim()
                .to_string(),
            email: text(&r, "Email"),
            match_value: text(&r, &s.match_field),
            account_id,
            account_name,
            last_modified: text(&r, "LastModifiedDate"),
            linked_to: (!link.is_empty()).then_some(link),
        });
    }
    Ok(out)
}

/// Link `learner_id` to the chosen Contact, as R5's single match would (R8: the
/// Contact carries the learner id), then replay the learner's dead letters so its
/// events are applied through the normal rules. Returns how many were replayed.
#[allow(clippy::too_many_arguments)]
pub async fn link(
    learner_id: &str,
    contact_id: &str,
    s: &SyncSettings,
    sf: &dyn SalesforceApi,
    store: &dyn Store,
    queue: &dyn Queue,
    actor: &str,
) -> anyhow::Result<u64> {
    let contact = match sf
        .get("Contact", contact_id, &["Id", s.link_field.as_str()])
        .await
    {
        Ok(c) => c,
        Err(SfError::NotFound) => anyhow::bail!("Salesforce has no Contact {contact_id}"),
        Err(e) => anyhow::bail!("Salesforce: {e}"),
    };
    let current = text(&contact, &s.link_field);
    if !current.is_empty() && current != learner_id {
        anyhow::bail!("Contact {contact_id} is already linked to learner {current}");
    }
    let before = store.learner(learner_id).await?;
    if let Some(b) = &before {
        if b.link == LinkState::Linked {
            if let Some(other) = b.contact_id.as_deref().filter(|c| *c != contact_id) {
                anyhow::bail!(
                    "learner {learner_id} is linked to Contact {other}; it can only be linked to one"
                );
            }
        }
    }
    // Another Contact must not carry this learner's link (R8: the link is unique).
    let others = sf
        .query(&format!(
            "SELECT Id FROM Contact WHERE {}",
            soql::eq(&s.link_field, learner_id)
        ))
        .await
        .map_err(|e| anyhow::anyhow!("Salesforce: {e}"))?;
    if let Some(o) = others
        .iter()
        .map(|r| text(r, "Id"))
        .find(|id| id != contact_id)
    {
        anyhow::bail!("learner {learner_id} is already linked to Contact {o}");
    }
    let mut fields = Record::new();
    fields.insert(s.link_field.clone(), json!(learner_id));
    sf.update("Contact", contact_id, &fields)
        .await
        .map_err(|e| anyhow::anyhow!("Salesforce: {e}"))?;
    let now = Utc::now();
    let state = LearnerState {
        learner_id: learner_id.to_string(),
        contact_id: Some(contact_id.to_string()),
        link: LinkState::Linked,
        account_id: before.as_ref().and_then(|b| b.account_id.clone()),
        last_outcome: Some("linked_by_admin".into()),
        last_error: None,
        updated_at: now,
    };
    store.put_learner(&state).await?;
    let replayed = queue
        .dlq_replay(
            &DlqFilter {
                learner: Some(learner_id.to_string()),
                ..Default::default()
            },
            &|_| {},
        )
        .await
        .map_err(|e| anyhow::anyhow!("replaying the learner's dead letters: {e}"))?;
    store
        .add_audit(&AuditEntry {
            at: now,
            actor: actor.into(),
            action: "learner.link".into(),
            target: format!("learner {learner_id}"),
            before: Some(match &before {
                Some(b) => format!(
                    "{} {}",
                    b.link.as_str(),
                    b.contact_id.as_deref().unwrap_or("-")
                ),
                None => "never synced".into(),
            }),
            after: Some(format!(
                "linked {contact_id}; {replayed} dead letters replayed"
            )),
        })
        .await?;
    Ok(replayed)
}

//! Console actions that also exist on the command line (`learner resync`,
//! `learner link`) — one implementation for both (README "Admin console").

use chrono::Utc;
use serde_json::{json, Value};

use crate::config::SyncSettings;
use crate::queue::{DlqFilter, Message, Queue};
use crate::salesforce::{soql, Record, SalesforceApi, SfError};
use crate::skillsync::SkillSyncApi;
use crate::store::{AuditEntry, LearnerState, LinkState, Store};
use crate::sync::{
    Children, Code, Engine, Item, Origin, Outcome, OutcomeClass, SnapshotItem, SyncError,
};

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

/// What [`link`] did: the engine's outcome for the learner's snapshot, and how many of
/// the learner's dead letters were replayed.
#[derive(Clone, Debug)]
pub struct Linked {
    pub outcome: Outcome,
    pub replayed: u64,
}

/// Does this outcome of a snapshot with a chosen Contact mean "linked to it"?
fn links(o: &Outcome) -> bool {
    o.class == OutcomeClass::Applied && matches!(o.code, Code::Linked | Code::Updated)
}

/// Link `learner_id` to the chosen Contact exactly as R5's single match would: the
/// learner's SkillSync snapshot (with its enrollments and certifications) is applied through
/// the one apply path ([`Engine::apply`], `contact_hint` = the chosen Contact), so the Contact
/// gets the mapped fields and the link (R8), its Account (R4, R7) and the learner's records
/// (R11), under the learner's lease, with the outcome in its history. Then the learner's
/// dead letters are replayed so its events are applied through the normal rules, and the
/// action is audited.
///
/// The engine's mapping is the one in force (the caller keeps it current). Refused, with
/// nothing written anywhere, when the Contact is missing or linked to another learner, when
/// the learner is linked to another Contact, and when the rules would not link it (R1 sync
/// off, R3 out of scope, R9 inactive, R4 no Account, …: the engine's planned outcome says why).
pub async fn link(
    learner_id: &str,
    contact_id: &str,
    engine: &Engine,
    sf: &dyn SalesforceApi,
    ss: &dyn SkillSyncApi,
    queue: &dyn Queue,
    actor: &str,
) -> anyhow::Result<Linked> {
    let s = engine.settings();
    let store = engine.store().as_ref();
    let before = check_link(learner_id, contact_id, &s, sf, store).await?;
    let item = Item::Snapshot(snapshot(learner_id, contact_id, ss).await?);
    // What the rules would do, writing nothing (Engine::plan): a link they refuse leaves
    // Salesforce, the store and the dead letters as they are.
    let planned = first(engine.plan(vec![item.clone()]).await)?;
    if !links(&planned) {
        anyhow::bail!(
            "the rules do not link learner {learner_id} to Contact {contact_id} ({} {}): {}; nothing was written",
            planned.class.as_str(),
            planned.code,
            planned.detail
        );
    }
    let outcome = first(engine.apply(vec![item]).await)?;
    if !links(&outcome) {
        anyhow::bail!(
            "learner {learner_id} was not linked to Contact {contact_id} ({} {}): {}",
            outcome.class.as_str(),
            outcome.code,
            outcome.detail
        );
    }
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
            at: Utc::now(),
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
                "{} {contact_id} ({}); {replayed} dead letters replayed",
                outcome.code, outcome.detail
            )),
        })
        .await?;
    Ok(Linked { outcome, replayed })
}

/// The one result of a batch of one; a transient error means nothing was recorded.
fn first(mut r: Vec<Result<Outcome, SyncError>>) -> anyhow::Result<Outcome> {
    r.pop()
        .expect("one result per item")
        .map_err(|e| anyhow::anyhow!("nothing was written, try again: {e}"))
}

/// The checks before a link (R8: one learner per Contact, one Contact per learner).
/// Returns the learner's state before.
async fn check_link(
    learner_id: &str,
    contact_id: &str,
    s: &SyncSettings,
    sf: &dyn SalesforceApi,
    store: &dyn Store,
) -> anyhow::Result<Option<LearnerState>> {
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
    Ok(before)
}

/// The learner's SkillSync snapshot with its enrollments and certifications (as reconcile
/// repairs it), to be applied with the chosen Contact as R5's single match.
async fn snapshot(
    learner_id: &str,
    contact_id: &str,
    ss: &dyn SkillSyncApi,
) -> anyhow::Result<SnapshotItem> {
    let learner = ss
        .learner(learner_id)
        .await
        .map_err(|e| anyhow::anyhow!("SkillSync: {e}"))?
        .ok_or_else(|| anyhow::anyhow!("SkillSync has no learner {learner_id}"))?;
    let (enrollments, certifications) =
        futures::try_join!(ss.enrollments(learner_id), ss.certifications(learner_id))
            .map_err(|e| anyhow::anyhow!("SkillSync: {e}"))?;
    Ok(SnapshotItem {
        learner,
        children: Some(Children {
            enrollments,
            certifications,
        }),
        origin: Origin::Link,
        keep_fields: false,
        contact_hint: Some(contact_id.to_string()),
    })
}

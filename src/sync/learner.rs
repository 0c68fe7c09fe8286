//! Learner-level rules (docs/rules.md R3–R10): scope, Account, matching, link, unlink,
//! relink — for learner events and for learner snapshots.

use serde_json::{json, Value};
use tracing::info;

use crate::config::SyncSettings;
use crate::model::Learner;
use crate::salesforce::{soql, Record, SfError};

use super::engine::{Applied, Engine};
use super::item::SnapshotItem;
use super::outcome::{Code, Permanent, StepError, StepResult, SyncError};
use super::rules::{self, AccountTarget, LearnerPlan, MatchDecision};
use super::state::{LearnerState, LinkState};

/// The Contact to try before matching (R8/R10), and what its absence means.
#[derive(Clone, Debug)]
enum Known {
    /// The store's Contact (linked, or remembered while unlinked): if it was deleted in
    /// Salesforce, match again per R5 (R10).
    Remembered(String),
    /// Chosen by an admin (console "link to this Contact"): it must exist.
    Chosen(String),
}

impl Known {
    fn id(&self) -> &str {
        match self {
            Known::Remembered(c) | Known::Chosen(c) => c,
        }
    }
}

impl Engine {
    /// R3, R9, R10 (+ R4–R8 through [`Engine::sync_learner`]): apply a learner's current
    /// snapshot — from an event (`snap` = None) or from a [`SnapshotItem`].
    pub(super) async fn learner_sync(
        &self,
        s: &SyncSettings,
        learner: &Learner,
        active: bool,
        state: Option<LearnerState>,
        snap: Option<&SnapshotItem>,
    ) -> StepResult<Applied> {
        let in_scope = if active {
            self.scope
                .in_scope(s, learner.department_id.as_deref())
                .await?
        } else {
            true // irrelevant: inactive learners are unlinked wherever they are
        };
        let plan = rules::plan_learner(active, in_scope, state.as_ref());
        match plan {
            LearnerPlan::Skip { code, new_link } => {
                if snap.is_some() {
                    // A snapshot guarantees that no Contact carries an unlinked learner's link.
                    self.clear_links(s, &learner.id, None).await?;
                }
                let learner_state = match (new_link, state) {
                    (Some(link), Some(st)) => Some(LearnerState { link, ..st }),
                    (_, st) => st,
                };
                let why = match code {
                    Code::OutOfScope => format!(
                        "department {} is outside the configured scope (R3)",
                        learner.department_id.as_deref().unwrap_or("(none)")
                    ),
                    Code::InactiveNotSynced => "inactive learner that was never synced".to_string(),
                    _ => "learner is already unlinked (R9)".to_string(),
                };
                Ok(Applied::skipped(code, why, learner_state))
            }
            LearnerPlan::Unlink { contact_id, to } => {
                self.unlink(s, &contact_id).await?;
                if snap.is_some() {
                    self.clear_links(s, &learner.id, None).await?;
                }
                let st = state.unwrap_or_else(|| LearnerState::blank(&learner.id));
                let why = if to == LinkState::Deactivated {
                    "learner deactivated: Contact kept, link removed (R9)"
                } else {
                    "learner left the scope: Contact kept, link removed (R3)"
                };
                Ok(Applied::done(
                    Code::Unlinked,
                    format!("{why}; Contact {contact_id} remembered"),
                    Some(LearnerState {
                        link: to,
                        contact_id: Some(contact_id),
                        ..st
                    }),
                ))
            }
            LearnerPlan::Sync {
                relink,
                resync_children,
            } => {
                let mut known = relink.map(Known::Remembered);
                let mut keep_fields = false;
                if let Some(snap) = snap {
                    if let Some(h) = &snap.contact_hint {
                        self.check_chosen(s, &learner.id, h).await?;
                        known = Some(Known::Chosen(h.clone()));
                    }
                    keep_fields = snap.keep_fields;
                    // Exactly one Contact carries the link: clear it elsewhere first (the
                    // link field is unique, so the chosen Contact could not take it otherwise).
                    if let Some(k) = &known {
                        self.clear_links(s, &learner.id, Some(k.id())).await?;
                    }
                }
                let (code, mut detail, new_state) = self
                    .sync_learner(s, learner, state, known, keep_fields)
                    .await?;
                let contact = new_state
                    .contact_id
                    .clone()
                    .expect("synced learner has a Contact");
                if let Some(children) = snap.and_then(|x| x.children.as_ref()) {
                    let (w, d) = self.set_children(&contact, children).await?;
                    detail.push_str(&format!(
                        "; enrollments/certifications: {w} written, {d} deleted"
                    ));
                } else if resync_children {
                    // R10: the Contact's enrollments and certifications become SkillSync's current ones.
                    let children = super::item::Children {
                        enrollments: self.ss.enrollments(&learner.id).await?,
                        certifications: self.ss.certifications(&learner.id).await?,
                    };
                    let (w, d) = self.set_children(&contact, &children).await?;
                    detail.push_str(&format!(
                        "; re-synced enrollments/certifications from SkillSync: {w} written, {d} deleted (R10)"
                    ));
                }
                Ok(Applied::done(code, detail, Some(new_state)))
            }
        }
    }

    /// R9: clear the link on the Contact (the Contact stays). A Contact deleted meanwhile is fine.
    async fn unlink(&self, s: &SyncSettings, contact_id: &str) -> StepResult<()> {
        let mut r = Record::new();
        r.insert(s.link_field.clone(), Value::Null);
        match self.sf.update("Contact", contact_id, &r).await {
            Ok(()) | Err(SfError::NotFound) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The Contact an admin chose must exist and carry no other learner's link.
    async fn check_chosen(
        &self,
        s: &SyncSettings,
        learner_id: &str,
        contact: &str,
    ) -> StepResult<()> {
        match self.sf.get("Contact", contact, &[&s.link_field]).await {
            Ok(rec) => match rec.get(&s.link_field).and_then(Value::as_str) {
                Some(other) if !other.is_empty() && !other.eq_ignore_ascii_case(learner_id) => {
                    Err(Permanent::new(
                        Code::ContactConflict,
                        format!("the chosen Contact {contact} is linked to learner {other}"),
                    )
                    .into())
                }
                _ => Ok(()),
            },
            Err(SfError::NotFound) => Err(Permanent::new(
                Code::ContactNotFound,
                format!("the chosen Contact {contact} does not exist in Salesforce"),
            )
            .into()),
            Err(e) => Err(e.into()),
        }
    }

    /// Clear the learner's link on every Contact carrying it except `keep`.
    async fn clear_links(
        &self,
        s: &SyncSettings,
        learner_id: &str,
        keep: Option<&str>,
    ) -> StepResult<()> {
        let q = format!(
            "SELECT Id FROM Contact WHERE {}",
            soql::eq(&s.link_field, learner_id)
        );
        for r in self.sf.query(&q).await? {
            let Some(id) = r.get("Id").and_then(Value::as_str) else {
                continue;
            };
            if keep.is_some_and(|k| k.eq_ignore_ascii_case(id)) {
                continue;
            }
            info!(learner_id, contact = id, "clearing a stray link");
            self.unlink(s, id).await?;
        }
        Ok(())
    }

    /// R4–R8, R10: make the learner's Contact exist, linked, in the right Account, with
    /// the mapped fields (only the link and AccountId when `keep_fields`, except on
    /// creation). Returns (code, detail, new state).
    async fn sync_learner(
        &self,
        s: &SyncSettings,
        learner: &Learner,
        state: Option<LearnerState>,
        known: Option<Known>,
        keep_fields: bool,
    ) -> StepResult<(Code, String, LearnerState)> {
        let account_id = self.resolve_account(s, learner).await?;
        let full = rules::contact_fields(s, learner, &account_id);
        let mut fields = if keep_fields {
            let mut r = Record::new();
            r.insert("AccountId".into(), json!(account_id));
            r
        } else {
            full.clone()
        };
        let previous_account = state.as_ref().and_then(|s| s.account_id.clone());
        let linked_to = state
            .as_ref()
            .and_then(|s| s.linked_contact().map(str::to_string));
        let moved = previous_account.as_deref().is_some_and(|a| a != account_id);
        let link_field = s.link_field.clone();
        let new_state = |contact: String| LearnerState {
            learner_id: learner.id.clone(),
            contact_id: Some(contact),
            link: LinkState::Linked,
            account_id: Some(account_id.clone()),
            last_outcome: None,
            last_error: None,
            updated_at: chrono::Utc::now(),
        };

        // R8: a linked learner is found by its link, not re-matched (one call: update by Id).
        if let Some(known) = known {
            let contact = known.id().to_string();
            let was_linked = linked_to
                .as_deref()
                .is_some_and(|c| c.eq_ignore_ascii_case(&contact));
            if !was_linked {
                // R10: the remembered Contact may have been taken by another learner meanwhile.
                match self.sf.get("Contact", &contact, &[&link_field]).await {
                    Ok(rec) => {
                        if let Some(other) = rec.get(&link_field).and_then(Value::as_str) {
                            if !other.is_empty() && !other.eq_ignore_ascii_case(&learner.id) {
                                return Err(Permanent::new(
                                    Code::ContactConflict,
                                    format!("Contact {contact} is linked to learner {other}"),
                                )
                                .into());
                            }
                        }
                    }
                    Err(SfError::NotFound) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            fields.insert(link_field.clone(), json!(learner.id));
            match self.update_contact(&contact, &fields, &account_id).await {
                Ok(()) => {
                    let (code, what) = match (&known, was_linked, moved) {
                        (Known::Chosen(_), false, _) => {
                            (Code::Linked, "linked to the Contact chosen by an admin")
                        }
                        (_, false, _) => (Code::Relinked, "re-linked to remembered Contact (R10)"),
                        (_, true, true) => {
                            (Code::Moved, "Contact updated and moved to its Account (R7)")
                        }
                        (_, true, false) => (Code::Updated, "Contact updated"),
                    };
                    return Ok((code, format!("{what} {contact}"), new_state(contact)));
                }
                Err(StepError::Permanent(p)) if p.code == Code::NotFound => {
                    if let Known::Chosen(_) = known {
                        return Err(Permanent::new(
                            Code::ContactNotFound,
                            format!("the chosen Contact {contact} does not exist in Salesforce"),
                        )
                        .into());
                    }
                    info!(learner_id = %learner.id, contact, "linked Contact was deleted in Salesforce; matching again (R10)");
                    fields.remove(&link_field);
                }
                Err(e) => return Err(e),
            }
        }

        // R5: match on the configured field; the same query finds a Contact already carrying
        // our link (crash between the Salesforce write and the store commit).
        let match_field = &s.match_field;
        let mut select_fields = vec!["Id", link_field.as_str()];
        if match_field != &link_field && match_field != "Id" {
            select_fields.push(match_field.as_str());
        }
        let query = format!(
            "SELECT {} FROM Contact WHERE {} OR {} LIMIT 10",
            select_fields.join(", "),
            soql::eq(match_field, &learner.username),
            soql::eq(&link_field, &learner.id),
        );
        let rows: Vec<rules::ContactRow> = self
            .sf
            .query(&query)
            .await?
            .iter()
            .filter_map(|r| rules::ContactRow::from_record(r, &link_field, match_field))
            .collect();
        match rules::decide_match(&learner.id, &learner.username, &rows)? {
            MatchDecision::Linked(contact) | MatchDecision::Link(contact) => {
                let already = rows.iter().any(|r| {
                    r.id == contact
                        && r.link
                            .as_deref()
                            .is_some_and(|l| l.eq_ignore_ascii_case(&learner.id))
                });
                fields.insert(link_field.clone(), json!(learner.id));
                self.update_contact(&contact, &fields, &account_id).await?;
                let (code, what) = if already {
                    (Code::Updated, "Contact found by its link and updated (R8)")
                } else {
                    (
                        Code::Linked,
                        "linked to the existing Contact matching the username (R5)",
                    )
                };
                Ok((code, format!("{what}: {contact}"), new_state(contact)))
            }
            MatchDecision::Create => {
                // docs/rules.md "Salesforce" crash safety: create through the external-id
                // upsert, so a retry after a crash updates the same Contact.
                let res = self
                    .with_account_retry(&account_id, || async {
                        self.sf
                            .upsert("Contact", &link_field, &learner.id, &full)
                            .await
                    })
                    .await?;
                let (code, what) = if res.created {
                    (Code::Created, "no Contact matched: created Contact (R5)")
                } else {
                    (Code::Updated, "Contact found by its link and updated (R8)")
                };
                Ok((
                    code,
                    format!("{what} {} under Account {account_id}", res.id),
                    new_state(res.id),
                ))
            }
        }
    }

    async fn update_contact(&self, id: &str, fields: &Record, account_id: &str) -> StepResult<()> {
        self.with_account_retry(account_id, || async {
            self.sf.update("Contact", id, fields).await
        })
        .await
    }

    /// A cached Account that was deleted or merged makes the write fail with a reference
    /// error: drop it from the cache and let the item retry (it will look the name up again).
    async fn with_account_retry<T, F, Fut>(&self, account_id: &str, f: F) -> StepResult<T>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<T, SfError>>,
    {
        match f().await {
            Ok(v) => Ok(v),
            Err(e @ SfError::Permanent { .. })
                if matches!(
                    e.code(),
                    "INVALID_CROSS_REFERENCE_KEY"
                        | "ENTITY_IS_DELETED"
                        | "FIELD_INTEGRITY_EXCEPTION"
                ) && self.accounts.has_id(account_id) =>
            {
                self.accounts.invalidate_id(account_id);
                Err(StepError::Transient(SyncError::transient(
                    "salesforce",
                    format!(
                        "cached Account {account_id} was rejected ({}); looking it up again",
                        e.code()
                    ),
                )))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// R4: the destination Account. Never creates one.
    async fn resolve_account(&self, s: &SyncSettings, learner: &Learner) -> StepResult<String> {
        match rules::account_target(s, learner)? {
            AccountTarget::Id(id) => Ok(id),
            AccountTarget::Name(name) => {
                if let Some(id) = self.accounts.get(&name) {
                    return Ok(id);
                }
                let q = format!(
                    "SELECT Id FROM Account WHERE {} LIMIT 2",
                    soql::eq("Name", &name)
                );
                let ids: Vec<String> = self
                    .sf
                    .query(&q)
                    .await?
                    .iter()
                    .filter_map(|r| r.get("Id").and_then(Value::as_str).map(String::from))
                    .collect();
                let id = rules::pick_account(&name, &ids)?;
                self.accounts.put(&name, &id);
                Ok(id)
            }
        }
    }
}

//! The planner (docs/rules.md R1–R12): pure decisions for a batch of items. The executor
//! ([`super::execute`]) loads what is needed with batched reads — stored state, scope
//! answers, resolved Accounts, candidate Contacts — and hands it here; the planner says
//! what to do with each item: update a Contact, create one through the external-id upsert,
//! unlink, relink, upsert or delete children, skip with a reason, or fail with a reason.
//! No I/O: every rule is unit-tested in `plan_tests.rs`.

use std::collections::{HashMap, HashSet};

use serde_json::json;

use crate::config::SyncSettings;
use crate::model::{EntityKind, Envelope, EventType, Learner};
use crate::salesforce::Record;

use super::item::Children;
use super::outcome::{Code, Permanent};
use super::rules::{self, ContactRow, LearnerPlan, MatchDecision};
use super::state::{EntityVersion, LearnerState, LinkState};

/// Why an event is settled before any rule runs (R1, R12).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Early {
    pub code: Code,
    pub detail: String,
}

/// R12 and R1 on one event: duplicate, toggle off, stale. `None`: apply it.
pub fn precheck(
    enabled: bool,
    processed: bool,
    last: Option<&EntityVersion>,
    env: &Envelope,
) -> Option<Early> {
    if processed {
        return Some(Early {
            code: Code::Duplicate,
            detail: "event id already applied".into(),
        });
    }
    if !enabled {
        return Some(Early {
            code: Code::SyncDisabled,
            detail: "Inbound Learner Sync is off (R1)".into(),
        });
    }
    if rules::is_stale(last, env.occurred_at, &env.id) {
        let last = last.expect("stale implies a version");
        return Some(Early {
            code: Code::Stale,
            detail: format!("older than {} at {}", last.event_id, last.occurred_at),
        });
    }
    None
}

/// R12 within a batch: of one learner's events (already in (`occurred_at`, id) order), the
/// ones a later event of the same entity supersedes, and repeated deliveries of one event
/// id. Returns, per position, why the event is settled without being written.
pub fn superseded(events: &[Option<&Envelope>]) -> Vec<Option<Early>> {
    let mut out = vec![None; events.len()];
    let mut seen_ids: HashSet<&str> = HashSet::new();
    let mut latest: HashMap<(EntityKind, &str), usize> = HashMap::new();
    for (i, e) in events.iter().enumerate() {
        let Some(e) = e else { continue };
        if !seen_ids.insert(e.id.as_str()) {
            out[i] = Some(Early {
                code: Code::Duplicate,
                detail: "delivered twice in one batch".into(),
            });
            continue;
        }
        if let Some(key) = e.entity() {
            if let Some(prev) = latest.insert(key, i) {
                out[prev] = Some(Early {
                    code: Code::Stale,
                    detail: format!("superseded by {} in the same batch", e.id),
                });
            }
        }
    }
    out
}

/// What the planner needs to decide one learner's Contact.
pub struct LearnerInput<'a> {
    pub learner: &'a Learner,
    /// After this item (R9/R10: event type, then status).
    pub active: bool,
    /// R3 (only asked when `active`).
    pub in_scope: bool,
    pub state: Option<&'a LearnerState>,
    /// R4: the destination Account, resolved (or why not).
    pub account: Result<String, Permanent>,
    /// Contacts the batch query returned: by Id (remembered / chosen), by link, by match value.
    pub rows: &'a [ContactRow],
    /// The rows include every Contact carrying this learner's link (snapshots): clear strays.
    pub links_loaded: bool,
    /// Console: the admin chose this Contact (R5's single match).
    pub hint: Option<&'a str>,
    /// Reconcile `report`: write only the link and `AccountId`.
    pub keep_fields: bool,
    /// Snapshot children to make equal (None: leave them, but R10 re-syncs on a relink).
    pub children: Option<&'a Children>,
    /// The remembered Contact turned out deleted in Salesforce: match again (R10).
    pub known_gone: bool,
}

/// A Contact write.
#[derive(Clone, Debug, PartialEq)]
pub enum ContactOp {
    /// Update by Id (Collections update); `fields` includes the link.
    Update { id: String, fields: Record },
    /// Create through the upsert by external id (crash safe); `fields` includes the link.
    Create { fields: Record },
    /// R9/R3: clear the link, keep the Contact.
    Unlink { id: String },
}

/// What to do about a learner's children after its Contact is written.
#[derive(Clone, Debug, PartialEq)]
pub enum ChildrenPlan {
    Leave,
    /// R10: make them equal SkillSync's current ones (fetched then).
    FromSkillSync,
    Set(Children),
}

/// The planner's decision for one learner.
#[derive(Clone, Debug, PartialEq)]
pub enum LearnerStep {
    Skip {
        code: Code,
        detail: String,
        state: Option<LearnerState>,
        /// Contacts still carrying the (unlinked) learner's link: cleared.
        stray: Vec<String>,
    },
    Fail(Permanent),
    Write {
        op: ContactOp,
        code: Code,
        detail: String,
        /// The learner's state once the write succeeded (`contact_id` of a create is
        /// filled from its result).
        state: LearnerState,
        stray: Vec<String>,
        children: ChildrenPlan,
        /// The remembered Contact was written by Id: a NOT_FOUND answer means "match again".
        by_known: bool,
    },
}

/// Contacts and usernames already claimed by learners of the same round (two learners of
/// one batch must not both link one Contact or both create one for one username: applied
/// one after the other, the second would meet a `contact_conflict`).
#[derive(Default)]
pub struct Claims {
    contacts: HashMap<String, String>,
    created: HashMap<String, String>,
}

impl Claims {
    fn contact(&mut self, contact: &str, learner: &str) -> Result<(), Permanent> {
        match self.contacts.get(&contact.to_lowercase()) {
            Some(other) if other != learner => Err(Permanent::new(
                Code::ContactConflict,
                format!("Contact {contact} is being linked to learner {other} in the same batch"),
            )),
            _ => {
                self.contacts
                    .insert(contact.to_lowercase(), learner.to_string());
                Ok(())
            }
        }
    }
    fn create(&mut self, username: &str, learner: &str) -> Result<(), Permanent> {
        match self.created.get(&username.to_lowercase()) {
            Some(other) if other != learner => Err(Permanent::new(
                Code::ContactConflict,
                format!(
                    "username {username:?} matches the Contact created for learner {other} in the same batch"
                ),
            )),
            _ => {
                self.created
                    .insert(username.to_lowercase(), learner.to_string());
                Ok(())
            }
        }
    }
}

fn eq_ci(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// R3–R10 for one learner: skip, unlink, or write its Contact.
pub fn plan_learner(s: &SyncSettings, i: &LearnerInput, claims: &mut Claims) -> LearnerStep {
    let l = i.learner;
    let carrying: Vec<&ContactRow> = i
        .rows
        .iter()
        .filter(|r| r.link.as_deref().is_some_and(|x| eq_ci(x, &l.id)))
        .collect();
    let strays = |keep: Option<&str>| -> Vec<String> {
        if !i.links_loaded {
            return Vec::new();
        }
        carrying
            .iter()
            .filter(|r| keep.is_none_or(|k| !eq_ci(k, &r.id)))
            .map(|r| r.id.clone())
            .collect()
    };
    let mut state = i.state.cloned();
    if i.known_gone {
        if let Some(st) = &mut state {
            st.link = match st.link {
                LinkState::Linked => LinkState::Unlinked,
                other => other,
            };
            st.contact_id = None;
        }
    }
    match rules::plan_learner(i.active, i.in_scope, state.as_ref()) {
        LearnerPlan::Skip { code, new_link } => {
            let new_state = match (new_link, state) {
                (Some(link), Some(st)) => Some(LearnerState { link, ..st }),
                (_, st) => st,
            };
            let detail = match code {
                Code::OutOfScope => format!(
                    "department {} is outside the configured scope (R3)",
                    l.department_id.as_deref().unwrap_or("(none)")
                ),
                Code::InactiveNotSynced => "inactive learner that was never synced".to_string(),
                _ => "learner is already unlinked (R9)".to_string(),
            };
            LearnerStep::Skip {
                code,
                detail,
                state: new_state,
                stray: strays(None),
            }
        }
        LearnerPlan::Unlink { contact_id, to } => {
            let st = state.unwrap_or_else(|| LearnerState::blank(&l.id));
            let why = if to == LinkState::Deactivated {
                "learner deactivated: Contact kept, link removed (R9)"
            } else {
                "learner left the scope: Contact kept, link removed (R3)"
            };
            let stray = strays(Some(&contact_id));
            LearnerStep::Write {
                op: ContactOp::Unlink {
                    id: contact_id.clone(),
                },
                code: Code::Unlinked,
                detail: format!("{why}; Contact {contact_id} remembered"),
                state: LearnerState {
                    link: to,
                    contact_id: Some(contact_id),
                    ..st
                },
                stray,
                children: ChildrenPlan::Leave,
                by_known: true,
            }
        }
        LearnerPlan::Sync {
            relink,
            resync_children,
        } => match plan_sync(s, i, state.as_ref(), relink, resync_children, claims) {
            Ok(step) => step,
            Err(p) => LearnerStep::Fail(p),
        },
    }
}

fn plan_sync(
    s: &SyncSettings,
    i: &LearnerInput,
    state: Option<&LearnerState>,
    relink: Option<String>,
    resync_children: bool,
    claims: &mut Claims,
) -> Result<LearnerStep, Permanent> {
    let l = i.learner;
    let account = i.account.clone()?;
    let link_field = &s.link_field;
    let full = {
        let mut f = rules::contact_fields(s, l, &account);
        f.insert(link_field.clone(), json!(l.id));
        f
    };
    let fields = if i.keep_fields {
        let mut r = Record::new();
        r.insert("AccountId".into(), json!(account));
        r.insert(link_field.clone(), json!(l.id));
        r
    } else {
        full.clone()
    };
    let moved = state
        .and_then(|s| s.account_id.as_deref())
        .is_some_and(|a| a != account);
    let linked_to = state.and_then(|s| s.linked_contact());
    let new_state = |contact: Option<String>| LearnerState {
        learner_id: l.id.clone(),
        contact_id: contact,
        link: LinkState::Linked,
        account_id: Some(account.clone()),
        last_outcome: None,
        last_error: None,
        updated_at: chrono::Utc::now(),
    };
    let children = match i.children {
        Some(c) => ChildrenPlan::Set(c.clone()),
        None if resync_children => ChildrenPlan::FromSkillSync,
        None => ChildrenPlan::Leave,
    };
    let carrying_other = |contact: &str| -> Option<String> {
        i.rows
            .iter()
            .find(|r| eq_ci(&r.id, contact))
            .and_then(|r| r.link.clone())
            .filter(|x| !eq_ci(x, &l.id))
    };
    let strays = |keep: &str| -> Vec<String> {
        if !i.links_loaded {
            return Vec::new();
        }
        i.rows
            .iter()
            .filter(|r| r.link.as_deref().is_some_and(|x| eq_ci(x, &l.id)) && !eq_ci(&r.id, keep))
            .map(|r| r.id.clone())
            .collect()
    };

    // Console: the Contact an admin chose is R5's single match; it must exist.
    if let Some(h) = i.hint {
        if !i.rows.iter().any(|r| eq_ci(&r.id, h)) {
            return Err(Permanent::new(
                Code::ContactNotFound,
                format!("the chosen Contact {h} does not exist in Salesforce"),
            ));
        }
        if let Some(other) = carrying_other(h) {
            return Err(Permanent::new(
                Code::ContactConflict,
                format!("the chosen Contact {h} is linked to learner {other}"),
            ));
        }
        claims.contact(h, &l.id)?;
        let was_linked = linked_to.is_some_and(|c| eq_ci(c, h));
        return Ok(LearnerStep::Write {
            op: ContactOp::Update {
                id: h.to_string(),
                fields,
            },
            code: if was_linked {
                Code::Updated
            } else {
                Code::Linked
            },
            detail: format!("linked to the Contact chosen by an admin {h}"),
            state: new_state(Some(h.to_string())),
            stray: strays(h),
            children,
            by_known: false,
        });
    }

    // R8: a linked learner is found by its link, not re-matched; R10: a remembered Contact
    // is tried first (if it was deleted in Salesforce, match again per R5).
    if let Some(known) = relink.filter(|_| !i.known_gone) {
        let was_linked = linked_to.is_some_and(|c| eq_ci(c, &known));
        let exists = was_linked || i.rows.iter().any(|r| eq_ci(&r.id, &known));
        if exists {
            if !was_linked {
                if let Some(other) = carrying_other(&known) {
                    return Err(Permanent::new(
                        Code::ContactConflict,
                        format!("Contact {known} is linked to learner {other}"),
                    ));
                }
            }
            claims.contact(&known, &l.id)?;
            let (code, what) = match (was_linked, moved) {
                (false, _) => (Code::Relinked, "re-linked to remembered Contact (R10)"),
                (true, true) => (Code::Moved, "Contact updated and moved to its Account (R7)"),
                (true, false) => (Code::Updated, "Contact updated"),
            };
            return Ok(LearnerStep::Write {
                op: ContactOp::Update {
                    id: known.clone(),
                    fields,
                },
                code,
                detail: format!("{what} {known}"),
                state: new_state(Some(known.clone())),
                stray: strays(&known),
                children,
                by_known: true,
            });
        }
    }

    // R5: match on the configured field; a Contact already carrying our link (a crash
    // between the Salesforce write and the store commit) is found by the link (R8).
    let mine: Vec<ContactRow> = i
        .rows
        .iter()
        .filter(|r| {
            r.link.as_deref().is_some_and(|x| eq_ci(x, &l.id))
                || r.match_value
                    .as_deref()
                    .is_some_and(|v| v.to_lowercase() == l.username.to_lowercase())
        })
        .cloned()
        .collect();
    match rules::decide_match(&l.id, &l.username, &mine)? {
        MatchDecision::Linked(c) | MatchDecision::Link(c) => {
            claims.contact(&c, &l.id)?;
            let already = mine
                .iter()
                .any(|r| r.id == c && r.link.as_deref().is_some_and(|x| eq_ci(x, &l.id)));
            let (code, what) = if already {
                (Code::Updated, "Contact found by its link and updated (R8)")
            } else {
                (
                    Code::Linked,
                    "linked to the existing Contact matching the username (R5)",
                )
            };
            Ok(LearnerStep::Write {
                op: ContactOp::Update {
                    id: c.clone(),
                    fields,
                },
                code,
                detail: format!("{what}: {c}"),
                state: new_state(Some(c.clone())),
                stray: strays(&c),
                children,
                by_known: false,
            })
        }
        MatchDecision::Create => {
            claims.create(&l.username, &l.id)?;
            Ok(LearnerStep::Write {
                op: ContactOp::Create { fields: full },
                code: Code::Created,
                detail: format!("no Contact matched: created Contact (R5) under Account {account}"),
                state: new_state(None),
                stray: Vec::new(),
                children,
                by_known: false,
            })
        }
    }
}

/// An enrollment or certification write (R11).
#[derive(Clone, Debug, PartialEq)]
pub enum ChildOp {
    Upsert {
        object: &'static str,
        ext_field: &'static str,
        ext_id: String,
        record: Record,
    },
    Delete {
        object: &'static str,
        ext_field: &'static str,
        ext_id: String,
    },
}

/// R11: an enrollment or certification event of a learner in `state` (after its snapshot
/// sync, if it needed one).
pub fn plan_child(env: &Envelope, state: Option<&LearnerState>) -> Result<ChildOp, (Code, String)> {
    let contact = match state {
        Some(st) if st.link == LinkState::Linked && st.contact_id.is_some() => {
            st.contact_id.clone().unwrap()
        }
        Some(st) => {
            return Err((
                Code::LearnerNotLinked,
                format!(
                    "learner is {} (R11: only linked learners' records sync)",
                    st.link.as_str()
                ),
            ))
        }
        None => return Err((Code::LearnerNotLinked, "learner is not synced".into())),
    };
    let (object, ext_field, ext_id, record) = match (&env.data.enrollment, &env.data.certification)
    {
        (Some(e), _) if env.event_type.entity() == EntityKind::Enrollment => (
            rules::ENROLLMENT_OBJECT,
            rules::ENROLLMENT_EXT_ID,
            e.id.clone(),
            rules::enrollment_fields(e, &contact),
        ),
        (_, Some(c)) => (
            rules::CERTIFICATION_OBJECT,
            rules::CERTIFICATION_EXT_ID,
            c.id.clone(),
            rules::certification_fields(c, &contact),
        ),
        _ => return Err((Code::BadEvent, "event without its record".into())),
    };
    if env.event_type == EventType::EnrollmentDeleted {
        return Ok(ChildOp::Delete {
            object,
            ext_field,
            ext_id,
        });
    }
    Ok(ChildOp::Upsert {
        object,
        ext_field,
        ext_id,
        record,
    })
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;

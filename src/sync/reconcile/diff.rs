//! The pure differ: what one learner's Contact, link and child records should be (from
//! SkillSync's snapshot and the rules R3–R11) against what Salesforce and the store hold.
//! No I/O: [`super::load`] gathers a [`LearnerView`] with batched reads.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{json, Value};

use crate::config::SyncSettings;
use crate::model::{Certification, Enrollment, Learner, LearnerStatus};
use crate::salesforce::Record;
use crate::store::{LearnerState, LinkState};
use crate::sync::rules::{self, Permanent};

use super::{show, Drift, DriftKind};

/// A Contact as reconcile reads it (the synced fields, the link and the Account).
#[derive(Clone, Debug, PartialEq)]
pub struct ContactView {
    pub id: String,
    pub record: Record,
}

impl ContactView {
    pub fn field(&self, name: &str) -> &Value {
        self.record
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .unwrap_or(&Value::Null)
    }
    pub fn link(&self, link_field: &str) -> Option<&str> {
        self.field(link_field).as_str().filter(|s| !s.is_empty())
    }
}

/// A `SkillSync_Enrollment__c` / `SkillSync_Certification__c` record of a Contact.
#[derive(Clone, Debug, PartialEq)]
pub struct ChildView {
    pub object: &'static str,
    pub id: String,
    /// The SkillSync id (external id field); records without one are not ours.
    pub ext_id: String,
    pub record: Record,
}

/// What the store's remembered Contact turned out to be in Salesforce.
#[derive(Clone, Debug, PartialEq)]
pub enum Remembered {
    /// The store remembers no Contact.
    None,
    Alive(ContactView),
    /// The store remembers this Contact id; Salesforce no longer has it.
    Deleted(String),
}

/// SkillSync's current enrollments and certifications of a learner.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ExpectedChildren {
    pub enrollments: Vec<Enrollment>,
    pub certifications: Vec<Certification>,
}

/// Everything the differ needs about one learner.
#[derive(Clone, Debug)]
pub struct LearnerView {
    pub learner_id: String,
    /// SkillSync's snapshot; `None` when SkillSync no longer has the learner.
    pub snapshot: Option<Learner>,
    /// R3 answer for the snapshot's department.
    pub in_scope: bool,
    pub state: Option<LearnerState>,
    /// Contacts whose link field carries this learner id.
    pub carriers: Vec<ContactView>,
    pub remembered: Remembered,
    /// R5 candidates by the match field (read only when no Contact carries the link and none
    /// is remembered).
    pub matches: Vec<ContactView>,
    /// R4: the Account the Contact belongs under (`None` when not needed).
    pub account: Option<Result<String, Permanent>>,
    /// SkillSync's children (`None` when not read: the learner should not be linked).
    pub children: Option<ExpectedChildren>,
    /// Child records of the Contact that carries (or should carry) the link.
    pub sf_children: Vec<ChildView>,
}

/// Why the differ could not say everything about a learner (the repair will fail the same way).
#[derive(Clone, Debug, PartialEq)]
pub struct Problem {
    pub learner_id: String,
    pub code: String,
    pub detail: String,
}

/// The differ's answer for one learner.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LearnerDiff {
    pub drifts: Vec<Drift>,
    pub problem: Option<Problem>,
    /// The learner should be linked (active, in scope, in SkillSync): a repair passes its
    /// children along.
    pub should_link: bool,
}

/// Why a learner must not be linked, or `None` when it must (R1 is the caller's business).
pub fn unlink_reason(snapshot: Option<&Learner>, in_scope: bool) -> Option<&'static str> {
    match snapshot {
        None => Some("no longer exists in SkillSync"),
        Some(l) if l.status != LearnerStatus::Active => Some("is inactive (R9)"),
        Some(_) if !in_scope => Some("is out of scope (R3)"),
        Some(_) => None,
    }
}

/// Compare one learner. `s` is the sync mapping in force.
pub fn diff(s: &SyncSettings, v: &LearnerView) -> LearnerDiff {
    let id = v.learner_id.as_str();
    let link = s.link_field.as_str();
    let mut out = LearnerDiff::default();
    let carrier_ids: Vec<&str> = v.carriers.iter().map(|c| c.id.as_str()).collect();

    if let Some(why) = unlink_reason(v.snapshot.as_ref(), v.in_scope) {
        // R9 / R3: the Contact stays, the link must go.
        for c in &v.carriers {
            out.drifts.push(
                Drift::new(
                    id,
                    DriftKind::StaleLink,
                    format!("learner {why} but Contact {} carries its link", c.id),
                )
                .contact(&c.id),
            );
        }
        return out;
    }
    out.should_link = true;
    let learner = v.snapshot.as_ref().expect("checked by unlink_reason");
    let store_contact = v.state.as_ref().and_then(|st| st.contact_id.as_deref());

    // The Contact that carries the link after a repair: the remembered one if it still
    // exists, else the only carrier (docs/rules.md R8/R10).
    let target: Option<&ContactView> = match &v.remembered {
        Remembered::Alive(c) => Some(c),
        _ => match v.carriers.as_slice() {
            [one] => Some(one),
            _ => None,
        },
    };

    // Link drifts.
    if let Remembered::Deleted(cid) = &v.remembered {
        out.drifts.push(
            Drift::new(
                id,
                DriftKind::ContactDeleted,
                format!(
                    "Contact {cid} the store remembers was deleted in Salesforce{}",
                    match carrier_ids.as_slice() {
                        [] => format!("; {}", r5_outcome(learner, &v.matches, link)),
                        ids => format!("; the link is now on {}", ids.join(", ")),
                    }
                ),
            )
            .contact(cid),
        );
    }
    match (&v.remembered, carrier_ids.as_slice()) {
        (Remembered::Alive(c), []) => {
            let detail = match v.state.as_ref().map(|st| st.link) {
                Some(LinkState::Linked) | None => {
                    format!("link field {link} cleared on Contact {}", c.id)
                }
                Some(other) => format!(
                    "Contact {} is not linked (store: {}) but the learner is active and in scope (R10)",
                    c.id,
                    other.as_str()
                ),
            };
            out.drifts
                .push(Drift::new(id, DriftKind::LinkMissing, detail).contact(&c.id))
        }
        (Remembered::Alive(c), carriers) if carriers != [c.id.as_str()] => {
            let others: Vec<&str> = carriers.iter().copied().filter(|x| *x != c.id).collect();
            out.drifts.push(
                Drift::new(
                    id,
                    DriftKind::LinkWrong,
                    format!(
                        "link on Contact {} but the store remembers Contact {}{}",
                        others.join(", "),
                        c.id,
                        if carriers.contains(&c.id.as_str()) {
                            " (which carries it too)"
                        } else {
                            ""
                        }
                    ),
                )
                .contact(&c.id),
            )
        }
        (Remembered::None, []) => out.drifts.push(Drift::new(
            id,
            DriftKind::MissingContact,
            format!(
                "no Contact carries the learner; {}",
                r5_outcome(learner, &v.matches, link)
            ),
        )),
        (Remembered::None | Remembered::Deleted(_), carriers) if carriers.len() > 1 => {
            out.drifts.push(Drift::new(
                id,
                DriftKind::LinkWrong,
                format!(
                    "{} Contacts carry the learner's link: {}",
                    carriers.len(),
                    carriers.join(", ")
                ),
            ))
        }
        (Remembered::None, [one]) => {
            let what = match v.state.as_ref().map(|st| st.link) {
                None => "the store has never synced the learner".to_string(),
                Some(l) => format!(
                    "the store has the learner {}{}",
                    l.as_str(),
                    store_contact
                        .map(|c| format!(" with Contact {c}"))
                        .unwrap_or_default()
                ),
            };
            out.drifts.push(
                Drift::new(
                    id,
                    DriftKind::LinkWrong,
                    format!("Contact {one} carries the link but {what}"),
                )
                .contact(one),
            );
        }
        _ => {}
    }
    // The store remembers the Contact but not as linked (e.g. a late write re-linked it).
    if let (Remembered::Alive(c), Some(st)) = (&v.remembered, v.state.as_ref()) {
        if st.link != LinkState::Linked && carrier_ids == [c.id.as_str()] {
            out.drifts.push(
                Drift::new(
                    id,
                    DriftKind::LinkWrong,
                    format!(
                        "Contact {} carries the link but the store has the learner {}",
                        c.id,
                        st.link.as_str()
                    ),
                )
                .contact(&c.id),
            );
        }
    }

    let Some(target) = target else {
        return out;
    };
    // R4/R7/R8: the synced fields and the Account.
    let account = match &v.account {
        Some(Ok(a)) => Some(a.clone()),
        Some(Err(p)) => {
            out.problem = Some(Problem {
                learner_id: id.to_string(),
                code: p.code.to_string(),
                detail: p.detail.clone(),
            });
            None
        }
        None => None,
    };
    let expected = rules::contact_fields(s, learner, account.as_deref().unwrap_or(""));
    for (field, want) in &expected {
        if field == "AccountId" {
            continue;
        }
        let have = target.field(field);
        if !same(have, want, is_email(s, field)) {
            let mut d = Drift::new(
                id,
                DriftKind::FieldDrift,
                format!("{field} {} → {}", show(have), show(want)),
            )
            .contact(&target.id);
            d.field = Some(field.clone());
            d.salesforce = Some(have.clone());
            d.expected = Some(want.clone());
            out.drifts.push(d);
        }
    }
    if let Some(account) = account {
        let have = target.field("AccountId");
        if !same(have, &json!(account), false) {
            let mut d = Drift::new(
                id,
                DriftKind::WrongAccount,
                format!(
                    "Contact {} is under Account {} instead of {account} (R4/R7)",
                    target.id,
                    have.as_str().unwrap_or("(none)")
                ),
            )
            .contact(&target.id);
            d.field = Some("AccountId".into());
            d.salesforce = Some(have.clone());
            d.expected = Some(json!(account));
            out.drifts.push(d);
        }
    }

    // R11: the Contact's child records equal SkillSync's enrollments and certifications.
    if let Some(children) = &v.children {
        let expected_children: Vec<(&'static str, &str, &str, Record)> = children
            .enrollments
            .iter()
            .map(|e| {
                (
                    rules::ENROLLMENT_OBJECT,
                    e.id.as_str(),
                    e.course_name.as_str(),
                    rules::enrollment_fields(e, &target.id),
                )
            })
            .chain(children.certifications.iter().map(|c| {
                (
                    rules::CERTIFICATION_OBJECT,
                    c.id.as_str(),
                    c.name.as_str(),
                    rules::certification_fields(c, &target.id),
                )
            }))
            .collect();
        let have: BTreeMap<(&str, &str), &ChildView> = v
            .sf_children
            .iter()
            .map(|c| ((c.object, c.ext_id.as_str()), c))
            .collect();
        let wanted: BTreeSet<(&str, &str)> = expected_children
            .iter()
            .map(|(o, ext, _, _)| (*o, *ext))
            .collect();
        for (object, ext, name, fields) in &expected_children {
            match have.get(&(*object, *ext)) {
                None => out.drifts.push(
                    Drift::new(
                        id,
                        DriftKind::MissingChild,
                        format!("{object} {ext} ({name}) is not on Contact {}", target.id),
                    )
                    .contact(&target.id),
                ),
                Some(rec) => {
                    for (field, want) in fields {
                        let got = rec
                            .record
                            .iter()
                            .find(|(k, _)| k.eq_ignore_ascii_case(field))
                            .map(|(_, v)| v)
                            .unwrap_or(&Value::Null);
                        if !same(got, want, false) {
                            let mut d = Drift::new(
                                id,
                                DriftKind::FieldDrift,
                                format!("{object} {ext} {field} {} → {}", show(got), show(want)),
                            )
                            .contact(&target.id);
                            d.field = Some(format!("{object} {ext} {field}"));
                            d.salesforce = Some(got.clone());
                            d.expected = Some(want.clone());
                            out.drifts.push(d);
                        }
                    }
                }
            }
        }
        for c in &v.sf_children {
            if !wanted.contains(&(c.object, c.ext_id.as_str())) {
                out.drifts.push(
                    Drift::new(
                        id,
                        DriftKind::ExtraChild,
                        format!(
                            "{} {} ({}) on Contact {} is no longer in SkillSync",
                            c.object, c.ext_id, c.id, target.id
                        ),
                    )
                    .contact(&target.id),
                );
            }
        }
    }
    out
}

/// What R5 would do for a learner no Contact carries.
fn r5_outcome(learner: &Learner, matches: &[ContactView], link_field: &str) -> String {
    match matches {
        [] => "a Contact will be created (R5)".into(),
        [one] => match one.link(link_field) {
            Some(other) => format!(
                "Contact {} matches the username but carries learner {other}'s link (contact_conflict)",
                one.id
            ),
            None => format!("Contact {} matches the username and will be linked (R5)", one.id),
        },
        many => format!(
            "{} Contacts match username {:?} (contact_ambiguous): {}",
            many.len(),
            learner.username,
            many.iter().map(|c| c.id.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn is_email(s: &SyncSettings, field: &str) -> bool {
    field.eq_ignore_ascii_case("Email") || field.eq_ignore_ascii_case(&s.match_field)
}

/// Salesforce answers datetimes as `2026-11-24T10:00:00.000+0000`; we send RFC 3339.
fn as_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .or_else(|| DateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f%z").ok())
        .map(|t| t.with_timezone(&Utc))
        .or_else(|| {
            NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f")
                .ok()
                .map(|t| t.and_utc())
        })
}

/// Equality as Salesforce stores values: empty string is null, numbers by value, datetimes
/// by instant (millisecond precision), emails case-insensitively, text trimmed.
pub fn same(have: &Value, want: &Value, case_insensitive: bool) -> bool {
    let norm = |v: &Value| -> Value {
        match v {
            Value::String(s) if s.trim().is_empty() => Value::Null,
            other => other.clone(),
        }
    };
    match (norm(have), norm(want)) {
        (Value::Null, Value::Null) => true,
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::String(a), Value::Number(b)) | (Value::Number(b), Value::String(a)) => {
            a.trim().parse::<f64>().ok() == b.as_f64()
        }
        (Value::String(a), Value::String(b)) => {
            let (a, b) = (a.trim(), b.trim());
            if a == b || (case_insensitive && a.to_lowercase() == b.to_lowercase()) {
                return true;
            }
            match (as_time(a), as_time(b)) {
                (Some(x), Some(y)) => x.timestamp_millis() == y.timestamp_millis(),
                _ => false,
            }
        }
        (a, b) => a == b,
    }
}

#[cfg(test)]
#[path = "diff_tests.rs"]
mod tests;

//! Pure decisions of the rules engine (docs/rules.md). No I/O here: every function takes what
//! the engine read from the store / Salesforce / SkillSync and says what to do, so each
//! rule has fast unit tests.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

pub use super::outcome::{Code, Permanent};
use super::state::{EntityVersion, LearnerState, LinkState};
use crate::config::{AccountRule, SyncSettings};
use crate::model::{Certification, Enrollment, EventType, Learner, LearnerStatus};
use crate::salesforce::Record;

use super::LearnerAttr;

/// R12: is an event at (`occurred_at`, `event_id`) not newer than the last applied one?
pub fn is_stale(last: Option<&EntityVersion>, occurred_at: DateTime<Utc>, event_id: &str) -> bool {
    match last {
        None => false,
        // Compared at microsecond precision, the precision the store keeps: an event
        // must not look newer than itself because of dropped nanoseconds.
        Some(v) => {
            (occurred_at.timestamp_micros(), event_id)
                <= (v.occurred_at.timestamp_micros(), v.event_id.as_str())
        }
    }
}

/// R9/R10: is the learner active after this event?
pub fn is_active(event: EventType, learner: &Learner) -> bool {
    match event {
        EventType::LearnerDeactivated => false,
        EventType::LearnerReactivated => true,
        _ => learner.status == LearnerStatus::Active,
    }
}

/// What to do with a learner event (R1 is checked before, R12 too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LearnerPlan {
    /// Sync fields/account/link. `relink` is the remembered Contact to try first (R10, R3 back in scope).
    Sync {
        relink: Option<String>,
        resync_children: bool,
    },
    /// Remove the link from the Contact, remember it (R9 / R3 out of scope).
    Unlink { contact_id: String, to: LinkState },
    /// Nothing to write; record why.
    Skip {
        code: Code,
        new_link: Option<LinkState>,
    },
}

/// R3, R9, R10: decide a learner event from the learner's activity, scope and stored link.
pub fn plan_learner(active: bool, in_scope: bool, state: Option<&LearnerState>) -> LearnerPlan {
    let link = state.map(|s| s.link);
    let contact = state.and_then(|s| s.contact_id.clone());
    if !active {
        // R9: the Contact stays, the link goes; remember the Contact.
        return match (link, contact) {
            (Some(LinkState::Linked), Some(c)) => LearnerPlan::Unlink {
                contact_id: c,
                to: LinkState::Deactivated,
            },
            (Some(_), _) => LearnerPlan::Skip {
                code: Code::AlreadyUnlinked,
                new_link: Some(LinkState::Deactivated),
            },
            (None, _) => LearnerPlan::Skip {
                code: Code::InactiveNotSynced,
                new_link: None,
            },
        };
    }
    if !in_scope {
        // R3: a linked learner that leaves the scope is unlinked as in R9.
        return match (link, contact) {
            (Some(LinkState::Linked), Some(c)) => LearnerPlan::Unlink {
                contact_id: c,
                to: LinkState::OutOfScope,
            },
            (Some(LinkState::Deactivated), _) | (Some(LinkState::OutOfScope), _) => {
                LearnerPlan::Skip {
                    code: Code::OutOfScope,
                    new_link: Some(LinkState::OutOfScope),
                }
            }
            _ => LearnerPlan::Skip {
                code: Code::OutOfScope,
                new_link: None,
            },
        };
    }
    match (link, contact) {
        (Some(LinkState::Linked), Some(c)) => LearnerPlan::Sync {
            relink: Some(c),
            resync_children: false,
        },
        // R10 reactivation, or R3 back in scope: relink the remembered Contact and
        // re-sync enrollments and certifications.
        (Some(LinkState::Deactivated | LinkState::OutOfScope), c) => LearnerPlan::Sync {
            relink: c,
            resync_children: true,
        },
        _ => LearnerPlan::Sync {
            relink: None,
            resync_children: false,
        },
    }
}

/// R4: the Account name to look up, or the fixed Account id (rule A).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccountTarget {
    Id(String),
    Name(String),
}

pub fn account_target(s: &SyncSettings, learner: &Learner) -> Result<AccountTarget, Permanent> {
    let non_empty = |v: Option<&str>| v.map(str::trim).filter(|v| !v.is_empty()).map(String::from);
    match s.account_rule {
        AccountRule::Default => Ok(AccountTarget::Id(s.default_account_id.clone())),
        AccountRule::Department => non_empty(learner.department_name.as_deref())
            .map(AccountTarget::Name)
            .ok_or_else(|| {
                Permanent::new(
                    Code::AccountNotFound,
                    "learner has no department_name to match an Account Name (rule B)",
                )
            }),
        AccountRule::LearnerField => non_empty(
            learner
                .fields
                .get(&s.account_field)
                .and_then(|v| v.as_deref()),
        )
        .map(AccountTarget::Name)
        .ok_or_else(|| {
            Permanent::new(
                Code::AccountNotFound,
                format!(
                    "learner field {:?} is empty: no Account Name to match (rule C)",
                    s.account_field
                ),
            )
        }),
    }
}

/// R4: exactly one Account must match; zero or several is a permanent failure. Accounts are
/// never created.
pub fn pick_account(name: &str, ids: &[String]) -> Result<String, Permanent> {
    match ids {
        [one] => Ok(one.clone()),
        [] => Err(Permanent::new(
            Code::AccountNotFound,
            format!("no Account named {name:?} (Accounts are never created)"),
        )),
        many => Err(Permanent::new(
            Code::AccountAmbiguous,
            format!(
                "{} Accounts are named {name:?}: {}",
                many.len(),
                many.join(", ")
            ),
        )),
    }
}

/// A Contact as the matching query returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContactRow {
    pub id: String,
    pub link: Option<String>,
    pub match_value: Option<String>,
}

impl ContactRow {
    pub fn from_record(r: &Record, link_field: &str, match_field: &str) -> Option<Self> {
        let s = |f: &str| {
            r.get(f)
                .and_then(Value::as_str)
                .map(str::to_string)
                .filter(|v| !v.is_empty())
        };
        Some(ContactRow {
            id: s("Id")?,
            link: s(link_field),
            match_value: s(match_field),
        })
    }
}

/// R5/R8: outcome of matching a learner against Contacts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MatchDecision {
    /// A Contact already carries this learner's link (R8: found by link, e.g. after a crash).
    Linked(String),
    /// Exactly one Contact matches: link to it and sync it.
    Link(String),
    /// None matches: create a Contact (through the external-id upsert, docs/rules.md "Salesforce" crash safety).
    Create,
}

/// R5 on the rows of `SELECT … WHERE <match> = username OR <link> = learner_id`.
pub fn decide_match(
    learner_id: &str,
    username: &str,
    rows: &[ContactRow],
) -> Result<MatchDecision, Permanent> {
    if let Some(own) = rows.iter().find(|r| {
        r.link
            .as_deref()
            .is_some_and(|l| l.eq_ignore_ascii_case(learner_id))
    }) {
        return Ok(MatchDecision::Linked(own.id.clone()));
    }
    // SOQL string equality is case-insensitive; compare the same way.
    let matches: Vec<&ContactRow> = rows
        .iter()
        .filter(|r| {
            r.match_value
                .as_deref()
                .is_some_and(|v| v.to_lowercase() == username.to_lowercase())
        })
        .collect();
    match matches.as_slice() {
        [] => Ok(MatchDecision::Create),
        [one] => match one.link.as_deref() {
            Some(other) => Err(Permanent::new(
                Code::ContactConflict,
                format!(
                    "Contact {} matches username {username:?} but is linked to learner {other}",
                    one.id
                ),
            )),
            None => Ok(MatchDecision::Link(one.id.clone())),
        },
        many => Err(Permanent::new(
            Code::ContactAmbiguous,
            format!(
                "{} Contacts match username {username:?}: {}",
                many.len(),
                many.iter()
                    .map(|r| r.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
    }
}

/// R8: the Contact fields written on every sync (mapping + match field + AccountId).
/// `LastName` is required by Salesforce: when the learner has none, the username is used.
pub fn contact_fields(s: &SyncSettings, learner: &Learner, account_id: &str) -> Record {
    let mut r = Record::new();
    for (field, attr) in &s.field_map {
        if let Some(attr) = LearnerAttr::parse(attr) {
            let v = attr.value(learner).map(str::trim).filter(|v| !v.is_empty());
            r.insert(field.clone(), v.map_or(Value::Null, |v| json!(v)));
        }
    }
    // The match field always carries the username so the Contact keeps matching (R5/R8).
    r.insert(s.match_field.clone(), json!(learner.username));
    if r.get("LastName").is_none_or(Value::is_null) {
        r.insert("LastName".into(), json!(learner.username));
    }
    r.insert("AccountId".into(), json!(account_id));
    r
}

pub fn sf_datetime(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub const ENROLLMENT_OBJECT: &str = "SkillSync_Enrollment__c";
pub const ENROLLMENT_EXT_ID: &str = "SkillSync_Enrollment_Id__c";
pub const CERTIFICATION_OBJECT: &str = "SkillSync_Certification__c";
pub const CERTIFICATION_EXT_ID: &str = "SkillSync_Certification_Id__c";

/// R11: `SkillSync_Enrollment__c` fields (without the external id, which is in the URL).
pub fn enrollment_fields(e: &Enrollment, contact_id: &str) -> Record {
    let mut r = Record::new();
    r.insert("Contact__c".into(), json!(contact_id));
    r.insert("Course_Id__c".into(), json!(e.course_id));
    r.insert("Course_Name__c".into(), json!(e.course_name));
    r.insert("Status__c".into(), json!(e.status.as_str()));
    r.insert("Enrolled_At__c".into(), json!(sf_datetime(e.enrolled_at)));
    r.insert(
        "Completed_At__c".into(),
        e.completed_at
            .map_or(Value::Null, |t| json!(sf_datetime(t))),
    );
    r.insert("Score__c".into(), e.score.map_or(Value::Null, |s| json!(s)));
    r
}

/// R11: `SkillSync_Certification__c` fields (without the external id).
pub fn certification_fields(c: &Certification, contact_id: &str) -> Record {
    let mut r = Record::new();
    r.insert("Contact__c".into(), json!(contact_id));
    r.insert("Name__c".into(), json!(c.name));
    r.insert("Issued_At__c".into(), json!(sf_datetime(c.issued_at)));
    r.insert(
        "Expires_At__c".into(),
        c.expires_at.map_or(Value::Null, |t| json!(sf_datetime(t))),
    );
    r.insert("Status__c".into(), json!(c.status.as_str()));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LearnerStatus;
    use std::collections::BTreeMap;

    fn learner() -> Learner {
        Learner {
            id: "L1".into(),
            username: "Ada@Example.com".into(),
            email: Some("ada.personal@example.org".into()),
            first_name: Some("Ada".into()),
            last_name: Some("Lovelace".into()),
            department_id: Some("42".into()),
            department_name: Some("Engineering".into()),
            status: LearnerStatus::Active,
            fields: BTreeMap::from([("company".to_string(), Some("Acme".to_string()))]),
            updated_at: Utc::now(),
        }
    }

    fn state(link: LinkState, contact: Option<&str>) -> LearnerState {
        LearnerState {
            learner_id: "L1".into(),
            contact_id: contact.map(String::from),
            link,
            account_id: None,
            last_outcome: None,
            last_error: None,
            updated_at: Utc::now(),
        }
    }

    fn row(id: &str, link: Option<&str>, m: Option<&str>) -> ContactRow {
        ContactRow {
            id: id.into(),
            link: link.map(String::from),
            match_value: m.map(String::from),
        }
    }

    #[test]
    fn r12_stale_and_order_by_time_then_id() {
        let t = Utc::now();
        let v = EntityVersion {
            occurred_at: t,
            event_id: "evt_5".into(),
        };
        assert!(!is_stale(None, t, "evt_1"));
        assert!(is_stale(Some(&v), t, "evt_5"), "same event is not newer");
        assert!(is_stale(Some(&v), t, "evt_4"), "same time, smaller id");
        assert!(!is_stale(Some(&v), t, "evt_6"), "same time, larger id");
        assert!(is_stale(
            Some(&v),
            t - chrono::Duration::milliseconds(1),
            "evt_9"
        ));
        assert!(!is_stale(
            Some(&v),
            t + chrono::Duration::milliseconds(1),
            "evt_0"
        ));
    }

    #[test]
    fn r9_r10_activity_follows_event_type_then_status() {
        let mut l = learner();
        assert!(is_active(EventType::LearnerUpdated, &l));
        assert!(!is_active(EventType::LearnerDeactivated, &l));
        l.status = LearnerStatus::Inactive;
        assert!(
            !is_active(EventType::LearnerUpdated, &l),
            "status: inactive deactivates"
        );
        assert!(is_active(EventType::LearnerReactivated, &l));
    }

    #[test]
    fn r9_deactivation_unlinks_and_remembers() {
        let s = state(LinkState::Linked, Some("003A"));
        assert_eq!(
            plan_learner(false, true, Some(&s)),
            LearnerPlan::Unlink {
                contact_id: "003A".into(),
                to: LinkState::Deactivated
            }
        );
        // Never synced: nothing to unlink.
        assert!(matches!(
            plan_learner(false, true, None),
            LearnerPlan::Skip {
                code: Code::InactiveNotSynced,
                ..
            }
        ));
        // Deactivated twice: skip.
        let d = state(LinkState::Deactivated, Some("003A"));
        assert!(matches!(
            plan_learner(false, true, Some(&d)),
            LearnerPlan::Skip {
                code: Code::AlreadyUnlinked,
                ..
            }
        ));
    }

    #[test]
    fn r10_reactivation_relinks_remembered_contact_and_resyncs_children() {
        let d = state(LinkState::Deactivated, Some("003A"));
        assert_eq!(
            plan_learner(true, true, Some(&d)),
            LearnerPlan::Sync {
                relink: Some("003A".into()),
                resync_children: true
            }
        );
    }

    #[test]
    fn r3_scope_moves_unlink_and_relink() {
        let linked = state(LinkState::Linked, Some("003A"));
        assert_eq!(
            plan_learner(true, false, Some(&linked)),
            LearnerPlan::Unlink {
                contact_id: "003A".into(),
                to: LinkState::OutOfScope
            }
        );
        assert!(matches!(
            plan_learner(true, false, None),
            LearnerPlan::Skip {
                code: Code::OutOfScope,
                new_link: None
            }
        ));
        let out = state(LinkState::OutOfScope, Some("003A"));
        assert_eq!(
            plan_learner(true, true, Some(&out)),
            LearnerPlan::Sync {
                relink: Some("003A".into()),
                resync_children: true
            }
        );
        // First sighting in scope: match per R5.
        assert_eq!(
            plan_learner(true, true, None),
            LearnerPlan::Sync {
                relink: None,
                resync_children: false
            }
        );
    }

    #[test]
    fn r4_account_rules() {
        let mut s = SyncSettings {
            account_rule: AccountRule::Default,
            default_account_id: "001000000000001AAA".into(),
            ..Default::default()
        };
        let l = learner();
        assert_eq!(
            account_target(&s, &l).unwrap(),
            AccountTarget::Id("001000000000001AAA".into())
        );
        s.account_rule = AccountRule::Department;
        assert_eq!(
            account_target(&s, &l).unwrap(),
            AccountTarget::Name("Engineering".into())
        );
        s.account_rule = AccountRule::LearnerField;
        s.account_field = "company".into();
        assert_eq!(
            account_target(&s, &l).unwrap(),
            AccountTarget::Name("Acme".into())
        );
        s.account_field = "missing".into();
        assert_eq!(
            account_target(&s, &l).unwrap_err().code,
            "account_not_found"
        );
        let mut no_dept = learner();
        no_dept.department_name = None;
        s.account_rule = AccountRule::Department;
        assert_eq!(
            account_target(&s, &no_dept).unwrap_err().code,
            "account_not_found"
        );
    }

    #[test]
    fn r4_zero_or_many_accounts_fail_permanently() {
        assert_eq!(pick_account("X", &["001A".into()]).unwrap(), "001A");
        assert_eq!(
            pick_account("X", &[]).unwrap_err().code,
            "account_not_found"
        );
        assert_eq!(
            pick_account("X", &["001A".into(), "001B".into()])
                .unwrap_err()
                .code,
            "account_ambiguous"
        );
    }

    #[test]
    fn r5_matching_outcomes() {
        let u = "ada@example.com";
        assert_eq!(decide_match("L1", u, &[]).unwrap(), MatchDecision::Create);
        assert_eq!(
            decide_match("L1", u, &[row("003A", None, Some("ADA@example.com"))]).unwrap(),
            MatchDecision::Link("003A".into()),
            "case-insensitive as SOQL"
        );
        assert_eq!(
            decide_match(
                "L1",
                u,
                &[row("003A", None, Some(u)), row("003B", None, Some(u))]
            )
            .unwrap_err()
            .code,
            "contact_ambiguous"
        );
        assert_eq!(
            decide_match("L1", u, &[row("003A", Some("L2"), Some(u))])
                .unwrap_err()
                .code,
            "contact_conflict"
        );
        // R8: found by link first, even if others match the username.
        assert_eq!(
            decide_match(
                "L1",
                u,
                &[
                    row("003A", None, Some(u)),
                    row("003B", Some("L1"), Some("old@x"))
                ]
            )
            .unwrap(),
            MatchDecision::Linked("003B".into())
        );
    }

    #[test]
    fn r8_fields_carry_username_in_match_field() {
        let s = SyncSettings::default();
        let r = contact_fields(&s, &learner(), "001A");
        assert_eq!(
            r["Email"],
            json!("Ada@Example.com"),
            "Email takes the username"
        );
        assert_eq!(r["FirstName"], json!("Ada"));
        assert_eq!(r["LastName"], json!("Lovelace"));
        assert_eq!(r["AccountId"], json!("001A"));
        let custom = SyncSettings {
            match_field: "Username__c".into(),
            ..Default::default()
        };
        let r = contact_fields(&custom, &learner(), "001A");
        assert_eq!(r["Username__c"], json!("Ada@Example.com"));
        assert_eq!(r["Email"], json!("ada.personal@example.org"));
        let mut nameless = learner();
        nameless.last_name = None;
        assert_eq!(
            contact_fields(&s, &nameless, "001A")["LastName"],
            json!("Ada@Example.com")
        );
    }
}

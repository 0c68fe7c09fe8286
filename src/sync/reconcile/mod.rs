//! Reconcile (docs/rules.md R1–R12 applied to what is already in Salesforce): compute, for
//! each learner, the state Salesforce should hold from SkillSync's current snapshots and the
//! rules, compare it with Salesforce and the store, report every difference by kind, and
//! repair through the one apply path the events use.
//!
//! - [`diff`]: the pure differ (no I/O) — expected state vs Salesforce records vs store state.
//! - [`load`]: batched reads (SOQL `IN`, relationship-free queries on the link field).
//! - [`pass`]: one pass (full or incremental), dry run or repair, lease, metrics.
//! - [`continuous`]: the incremental reconciler `work`/`run` run in the background.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub mod continuous;
pub mod diff;
pub mod load;
pub mod pass;
pub mod wiring;

pub use pass::{PassKind, Reconciler, Report, Selection};

/// The kinds of drift, named as `syncback reconcile` prints them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftKind {
    /// The learner should have a Contact and none carries its link, none is remembered.
    MissingContact,
    /// The remembered Contact exists but its link field was cleared.
    LinkMissing,
    /// The link is on another Contact than the remembered one, or several Contacts carry it,
    /// or the store does not know which Contact carries it.
    LinkWrong,
    /// An inactive, out-of-scope or vanished learner is still linked.
    StaleLink,
    /// A synced Contact field (or a field of a child record) differs.
    FieldDrift,
    /// The Contact is not under the Account R4 names (R7).
    WrongAccount,
    /// An enrollment or certification SkillSync has is not on the Contact.
    MissingChild,
    /// A child record of the Contact for an enrollment or certification SkillSync no longer has.
    ExtraChild,
    /// The Contact the store remembers was deleted in Salesforce.
    ContactDeleted,
}

impl DriftKind {
    pub const ALL: [DriftKind; 9] = [
        DriftKind::MissingContact,
        DriftKind::LinkMissing,
        DriftKind::LinkWrong,
        DriftKind::StaleLink,
        DriftKind::FieldDrift,
        DriftKind::WrongAccount,
        DriftKind::MissingChild,
        DriftKind::ExtraChild,
        DriftKind::ContactDeleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DriftKind::MissingContact => "missing_contact",
            DriftKind::LinkMissing => "link_missing",
            DriftKind::LinkWrong => "link_wrong",
            DriftKind::StaleLink => "stale_link",
            DriftKind::FieldDrift => "field_drift",
            DriftKind::WrongAccount => "wrong_account",
            DriftKind::MissingChild => "missing_child",
            DriftKind::ExtraChild => "extra_child",
            DriftKind::ContactDeleted => "contact_deleted",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

impl fmt::Display for DriftKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One difference between what Salesforce should hold and what it (or the store) holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    pub learner_id: String,
    pub kind: DriftKind,
    /// One human line, e.g. `LastName "Smith" → "Smyth"`.
    pub detail: String,
    /// The Contact concerned, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact_id: Option<String>,
    /// `field_drift` / `wrong_account`: the field (`LastName`, `AccountId`,
    /// `SkillSync_Enrollment__c E1 Status__c`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What Salesforce holds (`field_drift`, `wrong_account`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub salesforce: Option<Value>,
    /// What SkillSync and the rules say it should hold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected: Option<Value>,
    /// The drift stays as reported (`reconcile.on_field_drift = "report"`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub report_only: bool,
}

impl Drift {
    pub fn new(learner_id: &str, kind: DriftKind, detail: impl Into<String>) -> Self {
        Drift {
            learner_id: learner_id.to_string(),
            kind,
            detail: detail.into(),
            contact_id: None,
            field: None,
            salesforce: None,
            expected: None,
            report_only: false,
        }
    }

    pub fn contact(mut self, id: &str) -> Self {
        self.contact_id = Some(id.to_string());
        self
    }

    /// `kind field "sf" → "expected"` — what the outcome of a repair records, so
    /// `learner status` shows `reconciled: field_drift LastName "Smyth" → "Smith"`.
    pub fn line(&self) -> String {
        format!("{} {}", self.kind, self.detail)
    }
}

impl fmt::Display for Drift {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<12} {:<16} {}",
            self.learner_id, self.kind, self.detail
        )
    }
}

/// A value for a report line: strings quoted, null as `null`.
pub fn show(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

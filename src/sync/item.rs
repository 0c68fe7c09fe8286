//! What the one apply path takes (docs/rules.md "Flow"): live webhook events, and learner
//! snapshots ("make Salesforce hold what SkillSync says about this learner now") from
//! backfill, reconcile repairs and the console's "Re-sync now" / "link to this Contact".

use serde::Serialize;

use crate::model::{Certification, Enrollment, Envelope, Learner};

/// One unit of work for [`super::Engine::apply`].
#[derive(Clone, Debug)]
pub enum Item {
    /// A webhook event (live workers).
    Event(Envelope),
    /// "Make Salesforce hold what SkillSync says about this learner now":
    /// backfill, reconcile repairs, console "Re-sync now" / "link to this Contact".
    Snapshot(SnapshotItem),
}

impl Item {
    /// The learner the item is about (`None`: an event without its data).
    pub fn learner_id(&self) -> Option<&str> {
        match self {
            Item::Event(e) => e.learner_id(),
            Item::Snapshot(s) => Some(s.learner.id.as_str()),
        }
    }
}

impl From<Envelope> for Item {
    fn from(e: Envelope) -> Self {
        Item::Event(e)
    }
}

impl From<SnapshotItem> for Item {
    fn from(s: SnapshotItem) -> Self {
        Item::Snapshot(s)
    }
}

#[derive(Clone, Debug)]
pub struct SnapshotItem {
    /// SkillSync's current learner snapshot.
    pub learner: Learner,
    /// Some: make the Contact's enrollments/certifications equal these (upsert what is
    /// listed, delete that Contact's `SkillSync_Enrollment__c` / `_Certification__c` records
    /// not listed). None: leave children alone (except on a relink, where R10 re-syncs them
    /// from SkillSync).
    pub children: Option<Children>,
    /// Recorded in the outcome history (event type `snapshot.<origin>`).
    pub origin: Origin,
    /// true: do not overwrite the mapped fields (reconcile's `on_field_drift = "report"`);
    /// the link field, AccountId (R7) and children are still written.
    pub keep_fields: bool,
    /// The admin resolved `contact_ambiguous` by choosing this Contact: treated as R5's
    /// single match (fails `contact_conflict` if it carries another learner's link,
    /// `contact_not_found` if it does not exist).
    pub contact_hint: Option<String>,
}

impl SnapshotItem {
    /// A plain snapshot: fields written, children left alone, no hint.
    pub fn new(learner: Learner, origin: Origin) -> Self {
        SnapshotItem {
            learner,
            children: None,
            origin,
            keep_fields: false,
            contact_hint: None,
        }
    }
}

/// A learner's enrollments and certifications as SkillSync has them now.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Children {
    pub enrollments: Vec<Enrollment>,
    pub certifications: Vec<Certification>,
}

/// Who asked for a snapshot to be applied (recorded in the history).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "origin", rename_all = "snake_case")]
pub enum Origin {
    Backfill,
    Reconcile { detail: String },
    Resync,
    Link,
}

impl Origin {
    pub fn as_str(&self) -> &'static str {
        match self {
            Origin::Backfill => "backfill",
            Origin::Reconcile { .. } => "reconcile",
            Origin::Resync => "resync",
            Origin::Link => "link",
        }
    }

    /// The event type recorded in the history for a snapshot of this origin.
    pub fn event_type(&self) -> String {
        format!("snapshot.{}", self.as_str())
    }

    /// Human-readable origin for the outcome detail.
    pub fn describe(&self) -> String {
        match self {
            Origin::Reconcile { detail } if !detail.is_empty() => {
                format!("reconciled: {detail}")
            }
            other => other.as_str().to_string(),
        }
    }
}

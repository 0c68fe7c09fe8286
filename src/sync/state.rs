//! What the engine remembers per learner and per entity (docs/rules.md R8–R12). Owned by
//! the sync domain; the store persists these types.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Whether a learner is currently linked to a Contact (R8/R9).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// `Contact.SkillSync_User_Id__c` carries the learner id.
    Linked,
    /// Link removed on deactivation (R9); `contact_id` remembers the Contact.
    Deactivated,
    /// Link removed because the learner left the scope (R3); `contact_id` remembers it.
    OutOfScope,
    /// Never linked (e.g. seen only out of scope, or its first sync failed).
    Unlinked,
}

impl LinkState {
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Linked => "linked",
            LinkState::Deactivated => "deactivated",
            LinkState::OutOfScope => "out_of_scope",
            LinkState::Unlinked => "unlinked",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [
            LinkState::Linked,
            LinkState::Deactivated,
            LinkState::OutOfScope,
            LinkState::Unlinked,
        ]
        .into_iter()
        .find(|l| l.as_str() == s)
    }
}

/// What the store knows of one learner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LearnerState {
    pub learner_id: String,
    /// The linked Contact, or the remembered one while unlinked (R9).
    pub contact_id: Option<String>,
    pub link: LinkState,
    /// The Account the Contact was last put in (R7).
    pub account_id: Option<String>,
    pub last_outcome: Option<String>,
    pub last_error: Option<String>,
    pub updated_at: DateTime<Utc>,
}

/// Last applied event of an entity (R12): ordered by (occurred_at, event_id).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntityVersion {
    pub occurred_at: DateTime<Utc>,
    pub event_id: String,
}

impl LearnerState {
    /// A learner the store has never seen.
    pub fn blank(learner_id: &str) -> Self {
        LearnerState {
            learner_id: learner_id.to_string(),
            contact_id: None,
            link: LinkState::Unlinked,
            account_id: None,
            last_outcome: None,
            last_error: None,
            updated_at: Utc::now(),
        }
    }

    /// The Contact carrying the learner's link, when linked.
    pub fn linked_contact(&self) -> Option<&str> {
        match self.link {
            LinkState::Linked => self.contact_id.as_deref(),
            _ => None,
        }
    }
}

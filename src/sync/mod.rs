//! The rules engine (docs/rules.md, R1–R12) and the one apply path ([`Engine::apply`]).

use crate::model::Learner;

/// A learner attribute a Contact field can be mapped to (R8 mapping).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LearnerAttr {
    FirstName,
    LastName,
    Email,
    Username,
    Field(String),
}

impl LearnerAttr {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "first_name" => LearnerAttr::FirstName,
            "last_name" => LearnerAttr::LastName,
            "email" => LearnerAttr::Email,
            "username" => LearnerAttr::Username,
            other => LearnerAttr::Field(other.strip_prefix("fields.")?.to_string()),
        })
    }

    pub fn value<'a>(&self, l: &'a Learner) -> Option<&'a str> {
        match self {
            LearnerAttr::FirstName => l.first_name.as_deref(),
            LearnerAttr::LastName => l.last_name.as_deref(),
            LearnerAttr::Email => l.email.as_deref(),
            LearnerAttr::Username => Some(l.username.as_str()),
            LearnerAttr::Field(k) => l.fields.get(k).and_then(|v| v.as_deref()),
        }
    }
}

pub mod backfill;
mod children;
mod contacts;
pub mod engine;
mod execute;
pub mod item;
pub mod outcome;
pub mod plan;
pub mod reconcile;
pub mod rules;
pub mod settings;
pub mod state;
mod write;

pub use engine::{Engine, ScopePort};
pub use item::{Children, Item, Origin, SnapshotItem};
pub use outcome::{Code, Outcome, OutcomeClass, Permanent, SyncError};
pub use settings::{SettingsHandle, SettingsWatch};
pub use state::{EntityVersion, LearnerState, LinkState};

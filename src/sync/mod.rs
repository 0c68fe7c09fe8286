//! The rules engine (docs/rules.md, R1–R12).

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
pub mod engine;
pub mod reconcile;
pub mod rules;
pub mod settings;

pub use engine::{Engine, Outcome, ScopePort, SyncError};
pub use settings::{SettingsHandle, SettingsWatch};

//! What applying an item produced (docs/rules.md R1–R13): the outcome class, the outcome
//! code (an enum: the machine-readable reason recorded in the history, used as the DLQ
//! reason kind and as a metrics label), and the transient error that means "nothing was
//! recorded, apply this item again".

use serde::{Deserialize, Serialize};

use crate::salesforce::SfError;
use crate::skillsync::SsError;
use crate::store::StoreError;

/// Final outcome class of one item.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeClass {
    Applied,
    Skipped,
    Failed,
}

impl OutcomeClass {
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeClass::Applied => "applied",
            OutcomeClass::Skipped => "skipped",
            OutcomeClass::Failed => "failed",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "applied" => Some(Self::Applied),
            "skipped" => Some(Self::Skipped),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }
}

macro_rules! codes {
    ($($(#[$doc:meta])* $variant:ident = $s:literal,)*) => {
        /// Every outcome code the engine records (docs/rules.md). The string form is what the
        /// store, the DLQ headers (`x-failure-kind`) and the metrics carry.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code {
            $($(#[$doc])* $variant,)*
        }

        impl Code {
            pub const ALL: &'static [Code] = &[$(Code::$variant,)*];
            pub fn as_str(self) -> &'static str {
                match self { $(Code::$variant => $s,)* }
            }
            pub fn parse(s: &str) -> Option<Code> {
                match s { $($s => Some(Code::$variant),)* _ => None }
            }
        }
    };
}

codes! {
    // Applied.
    /// R5: no Contact matched; one was created (through the external-id upsert).
    Created = "created",
    /// R5: linked to the one existing Contact matching the username.
    Linked = "linked",
    /// R8: the linked Contact was updated.
    Updated = "updated",
    /// R7: the Contact was updated and moved to another Account.
    Moved = "moved",
    /// R10 / R3: re-linked to the remembered Contact.
    Relinked = "relinked",
    /// R9 / R3: the link was removed, the Contact kept and remembered.
    Unlinked = "unlinked",
    /// R11: an enrollment or certification was written.
    Upserted = "upserted",
    /// R11: `enrollment.deleted` removed the record.
    Deleted = "deleted",
    // Skipped.
    /// R12: the event id was already applied.
    Duplicate = "duplicate",
    /// R12: an event of the same entity at least as new was already applied.
    Stale = "stale",
    /// R3: the learner's department is outside the scope.
    OutOfScope = "out_of_scope",
    /// R1: Inbound Learner Sync is off.
    SyncDisabled = "sync_disabled",
    /// R9: the learner was already unlinked.
    AlreadyUnlinked = "already_unlinked",
    /// R9: an inactive learner that was never synced.
    InactiveNotSynced = "inactive_not_synced",
    /// R11: SkillSync does not know the learner.
    LearnerUnknown = "learner_unknown",
    /// R11: only linked learners' enrollments and certifications sync.
    LearnerNotLinked = "learner_not_linked",
    // Failed (permanent: recorded, then the dead-letter queue).
    /// R4: no Account has the name.
    AccountNotFound = "account_not_found",
    /// R4: several Accounts have the name.
    AccountAmbiguous = "account_ambiguous",
    /// R5: several Contacts match the username.
    ContactAmbiguous = "contact_ambiguous",
    /// R5: the matching (or remembered, or chosen) Contact carries another learner's link.
    ContactConflict = "contact_conflict",
    /// The Contact chosen by an admin does not exist.
    ContactNotFound = "contact_not_found",
    /// A record that must exist does not.
    NotFound = "not_found",
    /// Salesforce refused a record (validation rule, required field, …).
    SalesforceRejected = "salesforce_rejected",
    /// SkillSync refused a request for good.
    SkillsyncError = "skillsync_error",
    /// The event is not usable.
    BadEvent = "bad_event",
}

impl Code {
    /// The class an outcome with this code has.
    pub fn class(self) -> OutcomeClass {
        use Code::*;
        match self {
            Created | Linked | Updated | Moved | Relinked | Unlinked | Upserted | Deleted => {
                OutcomeClass::Applied
            }
            Duplicate | Stale | OutOfScope | SyncDisabled | AlreadyUnlinked | InactiveNotSynced
            | LearnerUnknown | LearnerNotLinked => OutcomeClass::Skipped,
            AccountNotFound | AccountAmbiguous | ContactAmbiguous | ContactConflict
            | ContactNotFound | NotFound | SalesforceRejected | SkillsyncError | BadEvent => {
                OutcomeClass::Failed
            }
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Code {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for Code {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl Serialize for Code {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Code::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown code {s:?}")))
    }
}

/// The result of applying one item; recorded in the store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outcome {
    pub class: OutcomeClass,
    pub code: Code,
    pub detail: String,
    pub learner_id: String,
}

/// Why an item could not be applied and will not succeed by retrying as is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Permanent {
    pub code: Code,
    pub detail: String,
}

impl Permanent {
    pub fn new(code: Code, detail: impl Into<String>) -> Self {
        Self {
            code,
            detail: detail.into(),
        }
    }
}

/// A failure worth retrying (R13): nothing was recorded, the item must come again.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SyncError {
    #[error("transient {kind} failure: {message}")]
    Transient { kind: &'static str, message: String },
    /// The event body is not a usable envelope (schema drift): permanent.
    #[error("unusable event: {0}")]
    BadEvent(String),
}

impl SyncError {
    pub fn is_transient(&self) -> bool {
        matches!(self, SyncError::Transient { .. })
    }
    pub fn kind(&self) -> &'static str {
        match self {
            SyncError::Transient { kind, .. } => kind,
            SyncError::BadEvent(_) => "bad_event",
        }
    }
    pub fn transient(kind: &'static str, message: impl Into<String>) -> Self {
        SyncError::Transient {
            kind,
            message: message.into(),
        }
    }
}

impl From<StoreError> for SyncError {
    fn from(e: StoreError) -> Self {
        match e {
            // A value the store refuses (NUL, too long): permanent, never "store down".
            StoreError::Data(_) => SyncError::BadEvent(e.to_string()),
            _ => SyncError::transient("store", e.to_string()),
        }
    }
}

/// A step either fails for good (recorded, then DLQ) or transiently (retry).
#[derive(Debug, Clone)]
pub enum StepError {
    Permanent(Permanent),
    Transient(SyncError),
}

impl From<Permanent> for StepError {
    fn from(p: Permanent) -> Self {
        StepError::Permanent(p)
    }
}

impl From<SyncError> for StepError {
    fn from(e: SyncError) -> Self {
        StepError::Transient(e)
    }
}

impl From<SfError> for StepError {
    fn from(e: SfError) -> Self {
        match e {
            SfError::Transient { .. } => {
                StepError::Transient(SyncError::transient("salesforce", e.to_string()))
            }
            SfError::MultipleMatches { .. } => {
                StepError::Permanent(Permanent::new(Code::ContactAmbiguous, e.to_string()))
            }
            SfError::NotFound => {
                StepError::Permanent(Permanent::new(Code::NotFound, e.to_string()))
            }
            SfError::Permanent { .. } => {
                StepError::Permanent(Permanent::new(Code::SalesforceRejected, e.to_string()))
            }
        }
    }
}

impl From<SsError> for StepError {
    fn from(e: SsError) -> Self {
        if e.is_transient() {
            StepError::Transient(SyncError::transient("skillsync", e.to_string()))
        } else {
            StepError::Permanent(Permanent::new(Code::SkillsyncError, e.to_string()))
        }
    }
}

impl From<StoreError> for StepError {
    fn from(e: StoreError) -> Self {
        StepError::Transient(e.into())
    }
}

pub type StepResult<T> = Result<T, StepError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_have_a_class() {
        for c in Code::ALL {
            assert_eq!(Code::parse(c.as_str()), Some(*c));
            let _ = c.class();
        }
        assert_eq!(Code::AccountNotFound.class(), OutcomeClass::Failed);
        assert_eq!(Code::Stale.class(), OutcomeClass::Skipped);
        assert_eq!(Code::Relinked.class(), OutcomeClass::Applied);
        assert!(Code::Created == "created");
    }
}

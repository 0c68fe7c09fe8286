//! `[reconcile]` (README "Reconcile").

use serde::{Deserialize, Serialize};

/// What reconcile does with a mapped Contact field edited in Salesforce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFieldDrift {
    /// SkillSync wins: the field is written back.
    Repair,
    /// The Salesforce edit stays; the drift is only reported.
    Report,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReconcileSettings {
    /// Seconds between incremental passes in `work`/`run` (0 = off).
    pub interval_secs: u64,
    /// Learners whose last Salesforce write ended in a timeout are re-verified within this.
    pub uncertain_after_secs: u64,
    pub on_field_drift: OnFieldDrift,
}

impl Default for ReconcileSettings {
    fn default() -> Self {
        Self {
            interval_secs: 3600,
            uncertain_after_secs: 120,
            on_field_drift: OnFieldDrift::Repair,
        }
    }
}

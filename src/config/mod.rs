//! Typed configuration (README "Configuration").
//!
//! One TOML file (`--config`, default `syncback.toml`), every key overridable from the
//! environment as `SYNCBACK_SECTION__KEY` (e.g. `SYNCBACK_WORKER__CONCURRENCY=16`).
//! Every section has defaults so each subcommand only needs the sections it uses;
//! [`Settings::validate_for`] checks what a given role needs. Secrets are wrapped in
//! [`Secret`], whose `Debug`/`Display` never print the value.

mod admin;
mod check;
mod load;
mod reconcile;
mod sections;
#[cfg(test)]
mod tests;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use admin::{AdminSettings, AdminUser, ManagedBy};
pub use check::{is_api_name, is_sf_id, KNOWN_EXAMPLE_SECRETS};
pub use load::did_you_mean;
pub use reconcile::*;
pub use sections::*;

/// A string that must never reach a log line.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The secret value; call only where it is sent on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("\"\"")
        } else {
            f.write_str("\"[redacted]\"")
        }
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub webhooks: WebhookSettings,
    pub queue: QueueSettings,
    pub store: StoreSettings,
    pub salesforce: SalesforceSettings,
    pub skillsync: SkillSyncSettings,
    pub sync: SyncSettings,
    pub worker: WorkerSettings,
    pub log: LogSettings,
    pub admin: AdminSettings,
    pub reconcile: ReconcileSettings,
}

/// Which process role a configuration is checked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Receive,
    Work,
    Run,
    Dlq,
    Backfill,
    Status,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or the environment could not be read into the settings: one line per
    /// problem, each naming its place (`file:line` or the variable) and key.
    #[error("configuration could not be read:\n  - {}", .0.join("\n  - "))]
    Read(Vec<String>),
    #[error("configuration is invalid:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

//! Typed configuration (README "Configuration").
//!
//! One TOML file (`--config`, default `syncback.toml`), every key overridable from the
//! environment as `SYNCBACK_SECTION__KEY` (e.g. `SYNCBACK_WORKER__CONCURRENCY=16`).
//! Every section has defaults so each subcommand only needs the sections it uses;
//! [`Settings::validate_for`] checks what a given role needs. Secrets are wrapped in
//! [`Secret`], whose `Debug`/`Display` never print the value.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

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
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: String,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// `whsec_<base64>` secrets; any one of them verifies (rotation).
    pub secrets: Vec<Secret>,
    pub tolerance_secs: u64,
    pub max_body_bytes: usize,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            secrets: Vec::new(),
            tolerance_secs: 300,
            max_body_bytes: 1024 * 1024,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueBackend {
    Rabbitmq,
    Memory,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSettings {
    pub backend: QueueBackend,
    pub url: Secret,
    /// Prefix of every exchange and queue name (`{prefix}.events`, `{prefix}.dlq`, ...).
    pub prefix: String,
    /// Delays of the delayed-retry queues, in seconds, one queue per step (R13).
    pub retry_delays_secs: Vec<u64>,
    /// `x-delivery-limit` of the main quorum queue (a safety net under `worker.max_attempts`).
    pub delivery_limit: u32,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            backend: QueueBackend::Rabbitmq,
            url: Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            prefix: "syncback".into(),
            retry_delays_secs: vec![1, 5, 30, 120, 600],
            delivery_limit: 20,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// `sqlite://path.db` (embedded default) or `postgres://…`.
    pub url: Secret,
    pub max_connections: u32,
    /// How long processed event ids are kept for duplicate detection (R12).
    pub processed_retention_days: u32,
    /// How long per-event outcome history (`learner status`) is kept.
    pub history_retention_days: u32,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            url: Secret::new("sqlite://syncback.db"),
            max_connections: 10,
            processed_retention_days: 30,
            history_retention_days: 90,
        }
    }
}

/// How the Salesforce client gets its OAuth 2.0 token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SalesforceAuth {
    /// Client credentials flow: `client_id` + `client_secret`.
    ClientCredentials,
    /// JWT bearer flow: an RS256 assertion signed with `private_key_path`, for `username`.
    JwtBearer,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SalesforceSettings {
    pub login_url: String,
    pub auth: SalesforceAuth,
    pub client_id: String,
    pub client_secret: Secret,
    /// JWT bearer: the Salesforce username the token is for (`sub`).
    pub username: String,
    /// JWT bearer: PEM file of the connected app's RSA private key.
    pub private_key_path: String,
    pub api_version: String,
    /// Per-call timeout.
    pub timeout_secs: u64,
    /// Above this fraction of `Sforce-Limit-Info` api-usage, calls are slowed down.
    pub api_usage_threshold: f64,
    /// How long Account-name lookups are cached (R4).
    pub account_cache_ttl_secs: u64,
}

impl Default for SalesforceSettings {
    fn default() -> Self {
        Self {
            login_url: "https://login.salesforce.com".into(),
            auth: SalesforceAuth::ClientCredentials,
            client_id: String::new(),
            client_secret: Secret::default(),
            username: String::new(),
            private_key_path: String::new(),
            api_version: "61.0".into(),
            timeout_secs: 30,
            api_usage_threshold: 0.9,
            account_cache_ttl_secs: 300,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SkillSyncSettings {
    pub base_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub timeout_secs: u64,
    /// TTL of the cached department tree (R3).
    pub department_cache_ttl_secs: u64,
}

impl Default for SkillSyncSettings {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            client_id: String::new(),
            client_secret: Secret::default(),
            timeout_secs: 30,
            department_cache_ttl_secs: 300,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    DepartmentOnly,
    WithSubdepartments,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountRule {
    /// A: one configured Account for all Contacts.
    Default,
    /// B: the Account named like the learner's department.
    Department,
    /// C: the Account named like `learner.fields[account_field]`.
    LearnerField,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyncSettings {
    /// R1 Inbound Learner Sync toggle.
    pub enabled: bool,
    /// R2 Source Department ID (validated against SkillSync).
    pub source_department_id: String,
    /// R3.
    pub scope: Scope,
    /// R5 the Contact field compared with the learner's username.
    pub match_field: String,
    /// R4.
    pub account_rule: AccountRule,
    pub default_account_id: String,
    pub account_field: String,
    /// R8 the Contact field carrying the learner id (External ID, unique).
    pub link_field: String,
    /// R8 extra mapping: Contact field -> learner attribute (`first_name`, `last_name`,
    /// `email`, `username`, or `fields.<key>`). Defaults to FirstName/LastName/Email.
    pub field_map: std::collections::BTreeMap<String, String>,
    /// Where this mapping lives: `file` (this section) or `console` (the store).
    pub managed_by: ManagedBy,
}

impl Default for SyncSettings {
    fn default() -> Self {
        let mut field_map = std::collections::BTreeMap::new();
        field_map.insert("FirstName".to_string(), "first_name".to_string());
        field_map.insert("LastName".to_string(), "last_name".to_string());
        field_map.insert("Email".to_string(), "email".to_string());
        Self {
            enabled: false,
            source_department_id: String::new(),
            scope: Scope::WithSubdepartments,
            match_field: "Email".into(),
            account_rule: AccountRule::Department,
            default_account_id: String::new(),
            account_field: String::new(),
            link_field: "SkillSync_User_Id__c".into(),
            field_map,
            managed_by: ManagedBy::File,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Concurrent tasks per `syncback work` process.
    pub concurrency: usize,
    /// Attempts before an event goes to the dead-letter queue (R13).
    pub max_attempts: u32,
    /// In-process retries of a transient failure before a delayed requeue (R13).
    pub inprocess_retries: u32,
    /// Seconds to finish in-flight events after SIGTERM.
    pub shutdown_grace_secs: u64,
    /// Seconds a per-learner lease lives if its holder dies.
    pub lease_ttl_secs: u64,
    /// Where `syncback work` serves `/healthz`, `/readyz` and `/metrics` (empty = not
    /// served; `run` uses `server.listen`). Separate from `server.listen` so several
    /// workers and a receiver can share a host.
    pub listen: String,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        Self {
            concurrency: 8,
            max_attempts: 8,
            inprocess_retries: 3,
            shutdown_grace_secs: 30,
            lease_ttl_secs: 60,
            listen: String::new(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub format: LogFormat,
    /// `tracing_subscriber::EnvFilter` directive; `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

/// Where the mapping in force (the `[sync]` keys) lives (README "Admin console").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ManagedBy {
    /// The TOML `[sync]` section is the truth; the console shows it read-only.
    #[default]
    File,
    /// The store holds the mapping, versioned; `[sync]` only seeds it on first start.
    Console,
}

/// One console login (`[[admin.users]]`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminUser {
    pub name: String,
    /// Argon2id PHC string from `syncback admin hash-password`.
    pub password_hash: Secret,
}

/// The admin console (`[admin]`).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// Where the console listens; empty = console off. Never the webhook port.
    pub listen: String,
    pub users: Vec<AdminUser>,
    /// A session ends after this many seconds without a request.
    pub session_idle_secs: u64,
    /// A session ends this many seconds after login, however active.
    pub session_max_secs: u64,
    /// Failed logins allowed per user name and per client address within `login_window_secs`.
    pub login_max_failures: u32,
    pub login_window_secs: u64,
    /// Always mark the session cookie `Secure` (it is also set when the request arrived
    /// over TLS through a proxy that sends `X-Forwarded-Proto: https`).
    pub secure_cookies: bool,
    /// How often `work`/`run` look for a new mapping version (`sync.managed_by = "console"`).
    pub mapping_poll_secs: u64,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: String::new(),
            users: Vec::new(),
            session_idle_secs: 1800,
            session_max_secs: 12 * 3600,
            login_max_failures: 5,
            login_window_secs: 300,
            secure_cookies: false,
            mapping_poll_secs: 2,
        }
    }
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
    #[error("configuration could not be read: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration is invalid:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

impl Settings {
    /// Load defaults, then the TOML file (if it exists, or is required), then `SYNCBACK_*` env.
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        if required && !path.exists() {
            return Err(ConfigError::Invalid(vec![format!(
                "config file {} does not exist",
                path.display()
            )]));
        }
        Self::figment(path)
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))
    }

    pub fn figment(path: &Path) -> Figment {
        Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::file(path))
            // SYNCBACK_CONFIG names the file (the CLI's --config), it is not a key.
            .merge(
                Env::prefixed("SYNCBACK_")
                    .filter(|k| k != "config")
                    .split("__"),
            )
    }

    /// Parse settings from a TOML string (tests, demo).
    pub fn from_toml(s: &str) -> Result<Self, ConfigError> {
        Figment::from(Serialized::defaults(Settings::default()))
            .merge(Toml::string(s))
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))
    }

    /// Static checks of what `role` needs (no network). Returns every problem at once.
    pub fn validate_for(&self, role: Role) -> Result<(), ConfigError> {
        let mut errs = Vec::new();
        let receives = matches!(role, Role::Receive | Role::Run);
        let works = matches!(role, Role::Work | Role::Run | Role::Backfill);
        if receives {
            if self.server.listen.parse::<SocketAddr>().is_err() {
                errs.push(format!(
                    "server.listen: {:?} is not an address like 127.0.0.1:8080",
                    self.server.listen
                ));
            }
            if self.webhooks.secrets.is_empty() {
                errs.push("webhooks.secrets: at least one whsec_… secret is required".into());
            }
            for (i, s) in self.webhooks.secrets.iter().enumerate() {
                if let Err(e) = crate::webhook::signature::decode_secret(s.expose()) {
                    errs.push(format!("webhooks.secrets[{i}]: {e}"));
                }
            }
            if self.webhooks.max_body_bytes == 0 {
                errs.push("webhooks.max_body_bytes must be > 0".into());
            }
        }
        if receives || works || role == Role::Dlq {
            if self.queue.backend == QueueBackend::Rabbitmq
                && !(self.queue.url.expose().starts_with("amqp://")
                    || self.queue.url.expose().starts_with("amqps://"))
            {
                errs.push("queue.url: must be an amqp:// or amqps:// URL".into());
            }
            if self.queue.prefix.is_empty()
                || !self
                    .queue
                    .prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                errs.push("queue.prefix: letters, digits, '.', '_' or '-' only".into());
            }
            if self.queue.retry_delays_secs.is_empty() {
                errs.push("queue.retry_delays_secs: at least one delay step".into());
            }
        }
        if works || role == Role::Status {
            let u = self.store.url.expose();
            if !(u.starts_with("sqlite:")
                || u.starts_with("postgres://")
                || u.starts_with("postgresql://"))
            {
                errs.push("store.url: must start with sqlite:// or postgres://".into());
            }
        }
        if works {
            if self.salesforce.login_url.is_empty() {
                errs.push("salesforce.login_url is required".into());
            }
            if self.salesforce.client_id.is_empty() {
                errs.push("salesforce.client_id is required".into());
            }
            match self.salesforce.auth {
                SalesforceAuth::ClientCredentials => {
                    if self.salesforce.client_secret.is_empty() {
                        errs.push(
                            "salesforce.client_secret is required (auth = \"client_credentials\")"
                                .into(),
                        );
                    }
                }
                SalesforceAuth::JwtBearer => {
                    if self.salesforce.username.is_empty() {
                        errs.push("salesforce.username is required (auth = \"jwt_bearer\")".into());
                    }
                    if std::fs::metadata(&self.salesforce.private_key_path).is_err() {
                        errs.push(format!(
                            "salesforce.private_key_path: cannot read {:?} (auth = \"jwt_bearer\")",
                            self.salesforce.private_key_path
                        ));
                    }
                }
            }
            if self.skillsync.base_url.is_empty() {
                errs.push("skillsync.base_url is required".into());
            }
            if self.worker.concurrency == 0 {
                errs.push("worker.concurrency must be ≥ 1".into());
            }
            if self.worker.max_attempts == 0 {
                errs.push("worker.max_attempts must be ≥ 1".into());
            }
            let s = &self.sync;
            if s.enabled && s.source_department_id.trim().is_empty() {
                errs.push(
                    "sync.source_department_id is required when sync.enabled = true (R2)".into(),
                );
            }
            if s.match_field.is_empty() || !is_api_name(&s.match_field) {
                errs.push(format!(
                    "sync.match_field: {:?} is not a Salesforce field API name",
                    s.match_field
                ));
            }
            if !is_api_name(&s.link_field) {
                errs.push(format!(
                    "sync.link_field: {:?} is not a Salesforce field API name",
                    s.link_field
                ));
            }
            for (k, v) in &s.field_map {
                if !is_api_name(k) {
                    errs.push(format!(
                        "sync.field_map: {k:?} is not a Salesforce field API name"
                    ));
                }
                if crate::sync::LearnerAttr::parse(v).is_none() {
                    errs.push(format!(
                        "sync.field_map.{k}: {v:?} is not one of first_name, last_name, email, username, fields.<key>"
                    ));
                }
            }
            match s.account_rule {
                AccountRule::Default if s.default_account_id.trim().is_empty() => errs.push(
                    "sync.default_account_id is required with account_rule = \"default\" (R4 A)"
                        .into(),
                ),
                AccountRule::Default if !is_sf_id(&s.default_account_id) => errs.push(format!(
                    "sync.default_account_id: {:?} is not a 15/18-character Salesforce id",
                    s.default_account_id
                )),
                AccountRule::LearnerField if s.account_field.trim().is_empty() => errs.push(
                    "sync.account_field is required with account_rule = \"learner_field\" (R4 C)"
                        .into(),
                ),
                _ => {}
            }
        }
        if receives || works {
            errs.extend(self.admin_problems());
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(errs))
        }
    }
}

impl Settings {
    /// Problems with `[admin]` when the console is on (`admin.listen` not empty).
    pub fn admin_problems(&self) -> Vec<String> {
        let a = &self.admin;
        let mut errs = Vec::new();
        if a.listen.is_empty() {
            return errs;
        }
        match a.listen.parse::<SocketAddr>() {
            Err(_) => errs.push(format!(
                "admin.listen: {:?} is not an address like 127.0.0.1:8090",
                a.listen
            )),
            Ok(addr) => {
                let webhook = self.server.listen.parse::<SocketAddr>().ok();
                if addr.port() != 0 && webhook.is_some_and(|w| w.port() == addr.port()) {
                    errs.push(format!(
                        "admin.listen: {} is the webhook port (server.listen); the console needs its own listener",
                        a.listen
                    ));
                }
            }
        }
        if a.users.is_empty() {
            errs.push("admin.users: at least one [[admin.users]] (name, password_hash) is required when admin.listen is set".into());
        }
        for (i, u) in a.users.iter().enumerate() {
            if u.name.trim().is_empty() {
                errs.push(format!("admin.users[{i}].name is empty"));
            }
            if !u.password_hash.expose().starts_with("$argon2id$") {
                errs.push(format!(
                    "admin.users[{i}].password_hash: not an Argon2id PHC string (make one with `syncback admin hash-password`)"
                ));
            }
        }
        if a.session_idle_secs == 0 || a.session_max_secs == 0 {
            errs.push("admin.session_idle_secs and admin.session_max_secs must be > 0".into());
        }
        errs
    }
}

/// Salesforce API names: letters, digits and underscores, starting with a letter.
pub fn is_api_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub fn is_sf_id(s: &str) -> bool {
    (s.len() == 15 || s.len() == 18) && s.chars().all(|c| c.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_example_parses() {
        let toml = r#"
[server]
listen = "127.0.0.1:8080"
[webhooks]
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
tolerance_secs = 300
max_body_bytes = 1048576
[queue]
backend = "rabbitmq"
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
prefix = "syncback"
[store]
url = "postgres://postgres@127.0.0.1:5432/syncback"
[salesforce]
login_url = "https://login.salesforce.com"
client_id = "abc"
client_secret = "shh"
api_version = "61.0"
[skillsync]
base_url = "https://acme.skillsync.example"
client_id = "x"
client_secret = "y"
[sync]
enabled = true
source_department_id = "42"
scope = "with_subdepartments"
match_field = "Email"
account_rule = "department"
default_account_id = "001000000000001AAA"
account_field = "company"
[worker]
concurrency = 8
max_attempts = 8
"#;
        let s = Settings::from_toml(toml).unwrap();
        assert_eq!(s.sync.scope, Scope::WithSubdepartments);
        assert_eq!(s.sync.account_rule, AccountRule::Department);
        assert_eq!(s.worker.concurrency, 8);
        s.validate_for(Role::Run).unwrap();
        // Secrets never print.
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("shh"));
        assert!(!dbg.contains("MfKQ9r8"));
        assert!(!dbg.contains("guest:guest"));
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn env_overrides_keys() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("syncback.toml", "[worker]\nconcurrency = 2\n")?;
            jail.set_env("SYNCBACK_WORKER__CONCURRENCY", "16");
            jail.set_env("SYNCBACK_SYNC__SCOPE", "department_only");
            jail.set_env("SYNCBACK_QUEUE__BACKEND", "memory");
            let s = Settings::load(Path::new("syncback.toml"), true).unwrap();
            assert_eq!(s.worker.concurrency, 16);
            assert_eq!(s.sync.scope, Scope::DepartmentOnly);
            assert_eq!(s.queue.backend, QueueBackend::Memory);
            Ok(())
        });
    }

    #[test]
    fn unknown_key_is_an_error() {
        let err = Settings::from_toml("[worker]\nconcurency = 3\n").unwrap_err();
        assert!(err.to_string().contains("concurency"), "{err}");
    }

    #[test]
    fn validation_lists_every_problem() {
        let s = Settings::from_toml(
            "[sync]\nenabled = true\naccount_rule = \"default\"\n[server]\nlisten = \"nope\"\n",
        )
        .unwrap();
        let err = s.validate_for(Role::Run).unwrap_err().to_string();
        for needle in [
            "server.listen",
            "webhooks.secrets",
            "salesforce.client_id",
            "skillsync.base_url",
            "source_department_id",
            "default_account_id",
        ] {
            assert!(err.contains(needle), "{needle} missing from {err}");
        }
        // receive needs nothing from Salesforce.
        let recv = Settings::from_toml(
            "[webhooks]\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n",
        )
        .unwrap();
        recv.validate_for(Role::Receive).unwrap();
    }

    #[test]
    fn jwt_bearer_needs_a_username_and_a_readable_key() {
        let mut s = Settings::from_toml(
            r#"
[webhooks]
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
[salesforce]
auth = "jwt_bearer"
client_id = "app"
private_key_path = "/nonexistent/key.pem"
[skillsync]
base_url = "http://ss"
client_id = "c"
client_secret = "s"
[sync]
source_department_id = "42"
"#,
        )
        .unwrap();
        let err = s.validate_for(Role::Work).unwrap_err().to_string();
        assert!(err.contains("salesforce.username is required"), "{err}");
        assert!(err.contains("salesforce.private_key_path"), "{err}");
        assert!(
            !err.contains("client_secret"),
            "no secret needed for jwt_bearer: {err}"
        );
        s.salesforce.username = "u@x".into();
        s.salesforce.private_key_path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/jwt-test-key.pem"
        )
        .into();
        s.validate_for(Role::Work).unwrap();
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure signature
    fn syncback_config_names_the_file_and_is_not_a_key() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "s.toml",
                "[webhooks]\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n",
            )?;
            jail.set_env("SYNCBACK_CONFIG", "s.toml");
            jail.set_env("SYNCBACK_WORKER__CONCURRENCY", "3");
            let s = Settings::load(Path::new("s.toml"), true).map_err(|e| e.to_string())?;
            assert_eq!(s.worker.concurrency, 3);
            assert_eq!(s.webhooks.secrets.len(), 1);
            Ok(())
        });
    }
}

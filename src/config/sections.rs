//! The configuration sections and their defaults (README "Configuration": the key table).

use serde::{Deserialize, Serialize};

use super::Secret;

/// A string key that also takes a number: `SYNCBACK_SYNC__SOURCE_DEPARTMENT_ID=42` reaches
/// serde as the integer 42, `api_version = 61.0` as a float.
pub(crate) fn lenient_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Lenient {
        Text(String),
        Unsigned(u64),
        Signed(i64),
        Float(f64),
    }
    Ok(match Lenient::deserialize(d)? {
        Lenient::Text(s) => s,
        Lenient::Unsigned(n) => n.to_string(),
        Lenient::Signed(n) => n.to_string(),
        Lenient::Float(f) => format!("{f:?}"),
    })
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    pub listen: String,
    /// A client must send its whole request head (request line and headers) within this,
    /// counted from its first byte, or from accept on a new connection.
    pub header_read_timeout_secs: u64,
    /// A client must send its whole body within this, counted from the end of the head.
    pub body_read_timeout_secs: u64,
    /// A kept-alive connection with no request in flight is closed after this.
    pub idle_timeout_secs: u64,
    /// Connections served at once; further ones wait in the kernel's accept backlog.
    pub max_connections: usize,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 30,
            idle_timeout_secs: 60,
            max_connections: 1024,
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
    /// The nodes of a RabbitMQ cluster, tried in order; when set, `url` is not used.
    pub urls: Vec<Secret>,
    /// `x-quorum-initial-group-size` of every queue: replicas on how many nodes.
    /// Unset: 3 when `urls` lists several nodes, else the broker's default.
    pub quorum_initial_group_size: Option<u32>,
    /// Prefix of every exchange and queue name (`{prefix}.events`, `{prefix}.dlq`, ...).
    pub prefix: String,
    /// Delays of the delayed-retry queues, in seconds, one queue per step (R13).
    pub retry_delays_secs: Vec<u64>,
    /// `x-delivery-limit` of the main quorum queue (a safety net under `worker.max_attempts`).
    pub delivery_limit: u32,
}

impl QueueSettings {
    /// The node URLs to try, in order: `urls` when set, else `url`.
    pub fn node_urls(&self) -> Vec<String> {
        if self.urls.is_empty() {
            vec![self.url.expose().to_string()]
        } else {
            self.urls.iter().map(|u| u.expose().to_string()).collect()
        }
    }

    /// Is this a cluster whose every queue must be replicated (quorum)?
    pub fn replicated(&self) -> bool {
        self.urls.len() > 1 || self.quorum_initial_group_size.is_some_and(|n| n > 1)
    }

    /// The `x-quorum-initial-group-size` to declare, if any.
    pub fn group_size(&self) -> Option<u32> {
        self.quorum_initial_group_size
            .or((self.urls.len() > 1).then_some(3))
            .filter(|n| *n > 0)
    }
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            backend: QueueBackend::Rabbitmq,
            url: Secret::new("amqp://guest:guest@127.0.0.1:5672/%2f"),
            urls: Vec::new(),
            quorum_initial_group_size: None,
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
    #[serde(deserialize_with = "lenient_string")]
    pub client_id: String,
    pub client_secret: Secret,
    /// JWT bearer: the Salesforce username the token is for (`sub`).
    pub username: String,
    /// JWT bearer: PEM file of the connected app's RSA private key.
    pub private_key_path: String,
    #[serde(deserialize_with = "lenient_string")]
    pub api_version: String,
    /// Per-call timeout.
    pub timeout_secs: u64,
    /// The largest share of the org's daily API limit syncback may bring its usage to
    /// (budget governor, `salesforce::budget`): bulk work pauses first, live calls slow
    /// down then wait. In (0, 1].
    pub max_api_share: f64,
    /// While paused, how often the usage is re-read (`GET /limits`, one API call).
    pub budget_poll_ms: u64,
    /// Deprecated: replaced by `max_api_share` (accepted, ignored, warned about).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_usage_threshold: Option<f64>,
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
            max_api_share: 0.5,
            budget_poll_ms: 60_000,
            api_usage_threshold: None,
            account_cache_ttl_secs: 300,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SkillSyncSettings {
    pub base_url: String,
    #[serde(deserialize_with = "lenient_string")]
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
    #[serde(deserialize_with = "lenient_string")]
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
    pub managed_by: super::ManagedBy,
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
            managed_by: super::ManagedBy::File,
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
    /// Events applied together when a backlog exists (docs/rules.md "Flow": micro-batches;
    /// one Salesforce Collections call holds at most 200 records).
    pub batch_max: usize,
    /// How long a batch may wait to fill — only when more is already queued.
    pub batch_linger_ms: u64,
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
            batch_max: 200,
            batch_linger_ms: 20,
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

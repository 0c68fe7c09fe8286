//! Static checks of a configuration for a process role (no network).

use std::net::SocketAddr;

use super::{AccountRule, ConfigError, QueueBackend, Role, SalesforceAuth, Settings};

impl Settings {
    /// Things that work but deserve the operator's attention (deprecated keys), printed by
    /// `config check` and logged at start-up.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if let Some(t) = self.salesforce.api_usage_threshold {
            w.push(format!(
                "salesforce.api_usage_threshold = {t} is no longer used: the budget governor slows and pauses calls by salesforce.max_api_share (now {}) — remove the key",
                self.salesforce.max_api_share
            ));
        }
        w
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
            if self.server.max_connections == 0 {
                errs.push("server.max_connections: must be at least 1".into());
            }
            for (key, v) in [
                (
                    "server.header_read_timeout_secs",
                    self.server.header_read_timeout_secs,
                ),
                (
                    "server.body_read_timeout_secs",
                    self.server.body_read_timeout_secs,
                ),
                ("server.idle_timeout_secs", self.server.idle_timeout_secs),
            ] {
                if v == 0 {
                    errs.push(format!("{key}: must be at least 1 second"));
                }
            }
            if self.webhooks.max_body_bytes == 0 {
                errs.push("webhooks.max_body_bytes must be > 0".into());
            }
        }
        if receives || works || role == Role::Dlq {
            if self.queue.backend == QueueBackend::Rabbitmq {
                let amqp = |u: &str| u.starts_with("amqp://") || u.starts_with("amqps://");
                if self.queue.urls.is_empty() && !amqp(self.queue.url.expose()) {
                    errs.push("queue.url: must be an amqp:// or amqps:// URL".into());
                }
                for (i, u) in self.queue.urls.iter().enumerate() {
                    if !amqp(u.expose()) {
                        errs.push(format!(
                            "queue.urls[{i}]: must be an amqp:// or amqps:// URL"
                        ));
                    }
                }
                if self.queue.quorum_initial_group_size == Some(0) {
                    errs.push("queue.quorum_initial_group_size: must be at least 1".into());
                }
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
        if works && self.reconcile.uncertain_after_secs == 0 {
            errs.push(
                "reconcile.uncertain_after_secs must be at least 1 (seconds within which an uncertain write is re-verified)"
                    .into(),
            );
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
            let share = self.salesforce.max_api_share;
            if !(share > 0.0 && share <= 1.0) {
                errs.push(format!(
                    "salesforce.max_api_share: {share} is not a share of the daily API limit (0 < x ≤ 1, e.g. 0.5)"
                ));
            }
            if self.salesforce.budget_poll_ms < 100 {
                errs.push(format!(
                    "salesforce.budget_poll_ms: {} is too short (≥ 100; each poll is one API call)",
                    self.salesforce.budget_poll_ms
                ));
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

/// Salesforce API names: letters, digits and underscores, starting with a letter.
pub fn is_api_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub fn is_sf_id(s: &str) -> bool {
    (s.len() == 15 || s.len() == 18) && s.chars().all(|c| c.is_ascii_alphanumeric())
}

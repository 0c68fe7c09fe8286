//! Static checks of a configuration for a process role (no network).

use std::net::SocketAddr;

use super::{AccountRule, ConfigError, QueueBackend, Role, SalesforceAuth, Settings};

/// Webhook secrets that are published (the vendor's documentation, this repository's
/// examples and demo): anyone can sign events with them.
pub const KNOWN_EXAMPLE_SECRETS: &[&str] = &[
    // The vendor's documentation and `syncback demo`.
    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    // The placeholder of deploy/ (example config, compose, Kubernetes Secret).
    "whsec_PLACEHOLDERreplaceMEbyYOURsecret",
];

/// `key`: a URL with one of `schemes` and a host, or the problem.
fn check_url(key: &str, value: &str, schemes: &[&str]) -> Option<String> {
    match url::Url::parse(value) {
        Err(e) => Some(format!(
            "{key}: {value:?} is not a URL ({e}); expected e.g. {}://host",
            schemes[0]
        )),
        Ok(u) if !schemes.contains(&u.scheme()) => Some(format!(
            "{key}: {value:?} must be a {} URL",
            schemes
                .iter()
                .map(|s| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(" or ")
        )),
        Ok(u) if u.host_str().is_none_or(str::is_empty) => {
            Some(format!("{key}: {value:?} has no host"))
        }
        Ok(_) => None,
    }
}

impl Settings {
    /// Things that work but deserve the operator's attention (deprecated keys), printed by
    /// `config check` and logged at start-up.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        for (i, s) in self.webhooks.secrets.iter().enumerate() {
            if KNOWN_EXAMPLE_SECRETS.contains(&s.expose().trim()) {
                w.push(format!(
                    "WARNING webhooks.secrets[{i}] is a published example secret (deploy/ files, the demo, the vendor's documentation): \
                     anyone can sign events this receiver accepts — generate your own in SkillSync and set it (SYNCBACK_WEBHOOKS__SECRETS)"
                ));
            }
        }
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
                // The value may carry a password: name the key, never print the URL.
                let amqp = |key: String, u: &str| match url::Url::parse(u) {
                    Ok(p) if ["amqp", "amqps"].contains(&p.scheme()) && p.host_str().is_some() => {
                        None
                    }
                    Ok(_) => Some(format!(
                        "{key}: must be an amqp:// or amqps:// URL with a host"
                    )),
                    Err(e) => Some(format!(
                        "{key}: not a URL ({e}); expected amqp://user:password@host:5672/%2f"
                    )),
                };
                if self.queue.urls.is_empty() {
                    errs.extend(amqp("queue.url".into(), self.queue.url.expose()));
                }
                for (i, u) in self.queue.urls.iter().enumerate() {
                    errs.extend(amqp(format!("queue.urls[{i}]"), u.expose()));
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
            if u.starts_with("sqlite:") {
                if u.trim_start_matches("sqlite:")
                    .trim_start_matches("//")
                    .is_empty()
                {
                    errs.push("store.url: names no SQLite file (e.g. sqlite://syncback.db)".into());
                }
            } else if u.starts_with("postgres://") || u.starts_with("postgresql://") {
                match url::Url::parse(u) {
                    Ok(p) if p.host_str().is_some_and(|h| !h.is_empty()) => {}
                    // Never print the value: it may carry a password.
                    _ => {
                        errs.push("store.url: not a valid postgres://user@host:5432/db URL".into())
                    }
                }
            } else {
                errs.push("store.url: must start with sqlite:// or postgres://".into());
            }
        }
        if works {
            if self.salesforce.login_url.is_empty() {
                errs.push("salesforce.login_url is required".into());
            } else {
                errs.extend(check_url(
                    "salesforce.login_url",
                    &self.salesforce.login_url,
                    &["https", "http"],
                ));
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
            } else {
                errs.extend(check_url(
                    "skillsync.base_url",
                    &self.skillsync.base_url,
                    &["https", "http"],
                ));
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

//! The admin console's keys (`[admin]`, `sync.managed_by`; README "Admin console").

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{Secret, Settings};

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

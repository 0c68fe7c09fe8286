//! Console access (README "Admin console"): Argon2id password hashes, server-side
//! sessions with idle and absolute expiry, a CSRF token per session (and a login token
//! bound to a short-lived cookie, plus an `Origin` check), and login rate limiting.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use subtle::ConstantTimeEq;

use crate::config::{AdminSettings, AdminUser};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "syncback_session";
/// Name of the cookie binding the login form's CSRF token.
pub const LOGIN_COOKIE: &str = "syncback_login";

/// Hash a password as an Argon2id PHC string (`syncback admin hash-password`).
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))
}

/// Does `password` match the PHC string `hash`? A malformed hash never matches.
pub fn verify_password(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(h) => Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok(),
        Err(_) => false,
    }
}

/// A random URL-safe token of 32 bytes.
pub fn token() -> String {
    use base64::Engine;
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// Constant-time string equality (tokens).
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[derive(Clone, Debug)]
pub struct Session {
    pub user: String,
    pub csrf: String,
    created: Instant,
    last_seen: Instant,
}

/// Why a login was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum LoginError {
    BadCredentials,
    /// Too many failures for this user name or address; retry after this many seconds.
    RateLimited(u64),
}

pub struct Auth {
    users: Vec<AdminUser>,
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
    idle: Duration,
    max: Duration,
    max_failures: u32,
    window: Duration,
    /// A valid hash to verify against for unknown user names (same timing).
    dummy_hash: String,
}

impl Auth {
    pub fn new(s: &AdminSettings) -> Self {
        Self {
            users: s.users.clone(),
            sessions: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
            idle: Duration::from_secs(s.session_idle_secs.max(1)),
            max: Duration::from_secs(s.session_max_secs.max(1)),
            max_failures: s.login_max_failures.max(1),
            window: Duration::from_secs(s.login_window_secs.max(1)),
            dummy_hash: hash_password("not a password of anyone").unwrap_or_default(),
        }
    }

    /// Check credentials (rate-limited per user name and per client address) and open a
    /// session. Returns the session token.
    pub fn login(
        &self,
        username: &str,
        password: &str,
        client: &str,
    ) -> Result<(String, Session), LoginError> {
        let keys = [format!("user:{username}"), format!("addr:{client}")];
        if let Some(wait) = self.limited(&keys) {
            return Err(LoginError::RateLimited(wait));
        }
        let user = self.users.iter().find(|u| u.name == username);
        let hash = user
            .map(|u| u.password_hash.expose())
            .unwrap_or(&self.dummy_hash);
        let ok = verify_password(hash, password) && user.is_some();
        if !ok {
            let mut f = self.failures.lock().unwrap();
            for k in keys {
                f.entry(k).or_default().push_back(Instant::now());
            }
            return Err(LoginError::BadCredentials);
        }
        {
            let mut f = self.failures.lock().unwrap();
            f.remove(&keys[0]);
        }
        let now = Instant::now();
        let session = Session {
            user: username.to_string(),
            csrf: token(),
            created: now,
            last_seen: now,
        };
        let id = token();
        let mut sessions = self.sessions.lock().unwrap();
        sessions.retain(|_, s| !self.expired(s, now));
        sessions.insert(id.clone(), session.clone());
        Ok((id, session))
    }

    /// Seconds to wait if any key has had too many failures within the window.
    fn limited(&self, keys: &[String]) -> Option<u64> {
        let now = Instant::now();
        let mut f = self.failures.lock().unwrap();
        let mut wait = None;
        for k in keys {
            if let Some(q) = f.get_mut(k) {
                while q
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > self.window)
                {
                    q.pop_front();
                }
                if q.len() >= self.max_failures as usize {
                    let oldest = *q.front().expect("non-empty");
                    let left = self.window.saturating_sub(now.duration_since(oldest));
                    wait = Some(left.as_secs().max(1));
                }
            }
        }
        wait
    }

    fn expired(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last_seen) > self.idle || now.duration_since(s.created) > self.max
    }

    /// The live session for a token (renewing its idle timer), if any.
    pub fn session(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut sessions = self.sessions.lock().unwrap();
        let s = sessions.get_mut(id)?;
        if self.expired(s, now) {
            sessions.remove(id);
            return None;
        }
        s.last_seen = now;
        Some(s.clone())
    }

    pub fn logout(&self, id: &str) {
        self.sessions.lock().unwrap().remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn auth(max_failures: u32) -> Auth {
        Auth::new(&AdminSettings {
            users: vec![AdminUser {
                name: "admin".into(),
                password_hash: Secret::new(hash_password("s3cret").unwrap()),
            }],
            login_max_failures: max_failures,
            ..AdminSettings::default()
        })
    }

    #[test]
    fn hashes_are_argon2id_and_verify() {
        let h = hash_password("pw").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password(&h, "pw"));
        assert!(!verify_password(&h, "PW"));
        assert!(!verify_password("not a hash", "pw"));
    }

    #[test]
    fn login_opens_a_session_and_logout_ends_it() {
        let a = auth(5);
        let (id, s) = a.login("admin", "s3cret", "127.0.0.1").unwrap();
        assert_eq!(s.user, "admin");
        assert_eq!(a.session(&id).unwrap().csrf, s.csrf);
        a.logout(&id);
        assert!(a.session(&id).is_none());
        assert_eq!(
            a.login("nobody", "s3cret", "127.0.0.1").unwrap_err(),
            LoginError::BadCredentials
        );
    }

    #[test]
    fn failed_logins_are_rate_limited() {
        let a = auth(3);
        for _ in 0..3 {
            assert_eq!(
                a.login("admin", "wrong", "10.0.0.1").unwrap_err(),
                LoginError::BadCredentials
            );
        }
        // Even the right password is refused while limited.
        assert!(matches!(
            a.login("admin", "s3cret", "10.0.0.2"),
            Err(LoginError::RateLimited(_))
        ));
    }

    #[test]
    fn sessions_expire_when_idle() {
        let mut a = auth(5);
        a.idle = Duration::from_millis(1);
        let (id, _) = a.login("admin", "s3cret", "x").unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(a.session(&id).is_none());
    }
}

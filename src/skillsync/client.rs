//! SkillSync REST client (docs/rules.md "SkillSync"): OAuth 2.0 client credentials with a cached token,
//! cursor pagination, timeouts, typed transient/permanent errors.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::sync::Mutex;

use super::{SkillSyncApi, SsError};
use crate::config::SkillSyncSettings;
use crate::model::{Certification, Department, Enrollment, Learner, Page};
use crate::telemetry;

#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: String,
    client_id: String,
    client_secret: String,
    token: Mutex<Option<Token>>,
    calls: AtomicU64,
}

#[derive(Clone)]
struct Token {
    value: String,
    expires: Instant,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
struct Items<T> {
    items: Vec<T>,
    #[serde(default)]
    next_cursor: Option<String>,
}

/// Percent-encode one path segment or query value.
fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn transport(e: reqwest::Error) -> SsError {
    SsError::Transient(if e.is_timeout() {
        format!("timeout: {e}")
    } else {
        format!("network: {e}")
    })
}

/// A single resource may come bare (`{"id": …}`) or wrapped in one key
/// (`{"learner": {"id": …}}`, `{"data": {…}}`), as the webhook payloads are: accept both.
fn unwrap_single(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(mut m)
            if !m.contains_key("id") && !m.contains_key("items") && m.len() == 1 =>
        {
            let (_, inner) = m.iter_mut().next().expect("one key");
            if inner.get("id").is_some() {
                inner.take()
            } else {
                serde_json::Value::Object(m)
            }
        }
        other => other,
    }
}

impl Client {
    pub fn new(settings: &SkillSyncSettings) -> Result<Client, SsError> {
        if settings.base_url.is_empty() {
            return Err(SsError::Permanent("skillsync.base_url is not set".into()));
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(settings.timeout_secs.max(1)))
            .connect_timeout(Duration::from_secs(settings.timeout_secs.clamp(1, 10)))
            .build()
            .map_err(|e| SsError::Permanent(format!("http client: {e}")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base: settings.base_url.trim_end_matches('/').to_string(),
                client_id: settings.client_id.clone(),
                client_secret: settings.client_secret.expose().to_string(),
                token: Mutex::new(None),
                calls: AtomicU64::new(0),
            }),
        })
    }

    /// API calls made so far (token requests excluded).
    pub fn calls(&self) -> u64 {
        self.inner.calls.load(Ordering::Relaxed)
    }

    async fn token(&self, fresh: bool) -> Result<String, SsError> {
        let mut guard = self.inner.token.lock().await;
        if !fresh {
            if let Some(t) = guard.as_ref() {
                if t.expires > Instant::now() {
                    return Ok(t.value.clone());
                }
            }
        }
        let resp = self
            .inner
            .http
            .post(format!("{}/oauth2/token", self.inner.base))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", self.inner.client_id.as_str()),
                ("client_secret", self.inner.client_secret.as_str()),
            ])
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        if status.is_server_error() || status.as_u16() == 429 {
            return Err(SsError::Transient(format!(
                "token endpoint answered {status}"
            )));
        }
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(SsError::Unauthorized(format!(
                "token endpoint answered {status}: {}",
                body.chars().take(200).collect::<String>()
            )));
        }
        let t: TokenResponse = resp
            .json()
            .await
            .map_err(|e| SsError::Permanent(format!("unreadable token response: {e}")))?;
        // Refresh a little before the advertised expiry.
        let ttl = t.expires_in.unwrap_or(3600).saturating_sub(30).max(1);
        let token = Token {
            value: t.access_token,
            expires: Instant::now() + Duration::from_secs(ttl),
        };
        *guard = Some(token.clone());
        Ok(token.value)
    }

    /// GET a path under the base URL; `Ok(None)` on 404. A 401 refreshes the token once.
    async fn get<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        path: &str,
    ) -> Result<Option<T>, SsError> {
        let mut fresh = false;
        loop {
            let token = self.token(fresh).await?;
            self.inner.calls.fetch_add(1, Ordering::Relaxed);
            let resp = self
                .inner
                .http
                .get(format!("{}{}", self.inner.base, path))
                .bearer_auth(&token)
                .send()
                .await
                .map_err(transport)?;
            let status = resp.status();
            metrics::counter!(telemetry::SS_CALLS, "endpoint" => endpoint, "status" => status.as_u16().to_string()).increment(1);
            tracing::debug!(endpoint, status = status.as_u16(), "skillsync call");
            match status.as_u16() {
                200..=299 => {
                    let v: serde_json::Value = resp.json().await.map_err(|e| {
                        SsError::Permanent(format!("{endpoint}: unreadable body: {e}"))
                    })?;
                    return serde_json::from_value::<T>(unwrap_single(v))
                        .map(Some)
                        .map_err(|e| {
                            SsError::Permanent(format!("{endpoint}: unexpected body: {e}"))
                        });
                }
                404 => return Ok(None),
                401 if !fresh => fresh = true,
                401 | 403 => {
                    return Err(SsError::Unauthorized(format!(
                        "{endpoint} answered {status}"
                    )))
                }
                429 | 500..=599 => {
                    return Err(SsError::Transient(format!("{endpoint} answered {status}")))
                }
                _ => {
                    let body = resp.text().await.unwrap_or_default();
                    return Err(SsError::Permanent(format!(
                        "{endpoint} answered {status}: {}",
                        body.chars().take(200).collect::<String>()
                    )));
                }
            }
        }
    }

    /// Every page of a cursor-paginated listing.
    async fn all<T: DeserializeOwned>(
        &self,
        endpoint: &'static str,
        path: &str,
    ) -> Result<Vec<T>, SsError> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let sep = if path.contains('?') { '&' } else { '?' };
            let p = match &cursor {
                Some(c) => format!("{path}{sep}cursor={}", enc(c)),
                None => path.to_string(),
            };
            let Some(page) = self.get::<Items<T>>(endpoint, &p).await? else {
                return Ok(out);
            };
            out.extend(page.items);
            match page.next_cursor {
                Some(c) if !c.is_empty() && Some(&c) != cursor.as_ref() => cursor = Some(c),
                _ => return Ok(out),
            }
        }
    }
}

#[async_trait]
impl SkillSyncApi for Client {
    async fn department(&self, id: &str) -> Result<Option<Department>, SsError> {
        self.get(
            "departments/{id}",
            &format!("/api/v1/departments/{}", enc(id)),
        )
        .await
    }

    async fn department_children(&self, id: &str) -> Result<Vec<Department>, SsError> {
        self.all(
            "departments/{id}/children",
            &format!("/api/v1/departments/{}/children", enc(id)),
        )
        .await
    }

    async fn learner(&self, id: &str) -> Result<Option<Learner>, SsError> {
        self.get("learners/{id}", &format!("/api/v1/learners/{}", enc(id)))
            .await
    }

    async fn learners_page(
        &self,
        department_id: &str,
        cursor: Option<&str>,
    ) -> Result<Page<Learner>, SsError> {
        let mut path = format!("/api/v1/learners?department_id={}", enc(department_id));
        if let Some(c) = cursor {
            path.push_str(&format!("&cursor={}", enc(c)));
        }
        Ok(self
            .get::<Page<Learner>>("learners", &path)
            .await?
            .unwrap_or(Page {
                items: Vec::new(),
                next_cursor: None,
            }))
    }

    async fn enrollments(&self, learner_id: &str) -> Result<Vec<Enrollment>, SsError> {
        self.all(
            "learners/{id}/enrollments",
            &format!("/api/v1/learners/{}/enrollments", enc(learner_id)),
        )
        .await
    }

    async fn certifications(&self, learner_id: &str) -> Result<Vec<Certification>, SsError> {
        self.all(
            "learners/{id}/certifications",
            &format!("/api/v1/learners/{}/certifications", enc(learner_id)),
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::unwrap_single;
    use serde_json::json;

    #[test]
    fn single_resources_may_be_wrapped() {
        assert_eq!(
            unwrap_single(json!({"id": "1", "name": "x"})),
            json!({"id": "1", "name": "x"})
        );
        assert_eq!(
            unwrap_single(json!({"learner": {"id": "1"}})),
            json!({"id": "1"})
        );
        assert_eq!(unwrap_single(json!({"data": {"id": 7}})), json!({"id": 7}));
        assert_eq!(unwrap_single(json!({"items": []})), json!({"items": []}));
    }
}

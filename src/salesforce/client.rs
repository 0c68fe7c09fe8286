//! Salesforce REST client (docs/rules.md "Salesforce") over `reqwest`.
//!
//! - OAuth 2.0 client credentials at `{login_url}/services/oauth2/token`; the token and
//!   `instance_url` are cached and refreshed once on `401 INVALID_SESSION_ID`.
//! - Every call has a timeout; connect errors and timeouts are transient errors.
//! - `Sforce-Limit-Info: api-usage=N/M` is read from every answer, exported as the
//!   `syncback_salesforce_api_usage`/`_limit` gauges and fed to the budget governor
//!   ([`super::budget`]), which every call consults first: bulk work (a client made with
//!   [`Client::with_priority`]`(Priority::Bulk)`) pauses, live work slows then waits, so
//!   syncback never takes the org past `salesforce.max_api_share` of its daily limit.
//! - Calls are counted per endpoint: method + path template without record ids or
//!   external id values (`"GET query"`, `"PATCH sobjects/Contact/{id}"`,
//!   `"PATCH sobjects/Contact/SkillSync_User_Id__c"`, `"POST composite/sobjects"`), the
//!   same names the sandbox org uses, for the calls-per-event measurements. Token requests
//!   are counted apart ([`Client::token_requests`]). Tokens and secrets are never logged.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{json, Value};

use super::budget::{Budget, Priority};
use super::{ApiError, Describe, Record, SalesforceApi, SaveResult, SfError, UpsertResult};
use crate::config::{SalesforceAuth, SalesforceSettings};

/// The OAuth 2.0 JWT bearer grant type (RFC 7523).
pub const JWT_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
use crate::telemetry;

/// Records per sObject Collections call (Salesforce's limit).
pub const COLLECTION_LIMIT: usize = 200;

/// Clones share the session, the call counts and the budget governor; each carries its
/// own [`Priority`] (default [`Priority::Live`]).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    priority: Priority,
}

struct Inner {
    http: reqwest::Client,
    login_url: String,
    client_id: String,
    client_secret: String,
    /// JWT bearer flow: the signing key and the user the token is for.
    jwt: Option<(jsonwebtoken::EncodingKey, String)>,
    api_version: String,
    budget: Arc<Budget>,
    session: tokio::sync::Mutex<Option<Session>>,
    calls: Mutex<BTreeMap<String, u64>>,
    token_requests: AtomicU64,
    usage: Mutex<Option<(u64, u64)>>,
}

#[derive(Clone)]
struct Session {
    token: String,
    instance_url: String,
    /// Bumped on each refresh, so concurrent 401s refresh only once.
    generation: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    instance_url: String,
}

fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn transport(e: reqwest::Error) -> SfError {
    SfError::Transient {
        status: None,
        code: if e.is_timeout() { "TIMEOUT" } else { "CONNECT" }.into(),
        message: e.to_string(),
    }
}

/// Parse `api-usage=N/M` out of a `Sforce-Limit-Info` header value.
pub fn parse_limit_info(v: &str) -> Option<(u64, u64)> {
    v.split(',')
        .map(str::trim)
        .find_map(|part| part.strip_prefix("api-usage="))
        .and_then(|u| {
            let (n, m) = u.split_once('/')?;
            Some((n.trim().parse().ok()?, m.trim().parse().ok()?))
        })
}

impl Client {
    pub fn new(settings: &SalesforceSettings) -> Result<Client, SfError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(settings.timeout_secs.max(1)))
            .connect_timeout(Duration::from_secs(settings.timeout_secs.clamp(1, 10)))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| SfError::Permanent {
                status: 0,
                errors: vec![ApiError {
                    message: format!("http client: {e}"),
                    error_code: "CLIENT".into(),
                    fields: vec![],
                }],
            })?;
        let jwt = match settings.auth {
            SalesforceAuth::ClientCredentials => None,
            SalesforceAuth::JwtBearer => {
                let bad = |m: String| SfError::Permanent {
                    status: 0,
                    errors: vec![ApiError {
                        message: m,
                        error_code: "CLIENT".into(),
                        fields: vec![],
                    }],
                };
                let pem = std::fs::read(&settings.private_key_path).map_err(|e| {
                    bad(format!(
                        "salesforce.private_key_path {:?}: {e}",
                        settings.private_key_path
                    ))
                })?;
                let key = jsonwebtoken::EncodingKey::from_rsa_pem(&pem).map_err(|e| {
                    bad(format!(
                        "salesforce.private_key_path {:?} is not an RSA private key in PEM: {e}",
                        settings.private_key_path
                    ))
                })?;
                Some((key, settings.username.clone()))
            }
        };
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                login_url: settings.login_url.trim_end_matches('/').to_string(),
                client_id: settings.client_id.clone(),
                client_secret: settings.client_secret.expose().to_string(),
                jwt,
                api_version: settings.api_version.trim_start_matches('v').to_string(),
                budget: Arc::new(Budget::new(
                    settings.max_api_share,
                    Duration::from_millis(settings.budget_poll_ms),
                )),
                session: tokio::sync::Mutex::new(None),
                calls: Mutex::new(BTreeMap::new()),
                token_requests: AtomicU64::new(0),
                usage: Mutex::new(None),
            }),
            priority: Priority::Live,
        })
    }

    /// A handle on the same session and governor whose calls have priority `p`
    /// (`backfill` and `reconcile` use [`Priority::Bulk`]).
    pub fn with_priority(&self, p: Priority) -> Client {
        Client {
            inner: self.inner.clone(),
            priority: p,
        }
    }

    pub fn priority(&self) -> Priority {
        self.priority
    }

    /// The budget governor (watch its status for progress bars and the console).
    pub fn budget(&self) -> &Arc<Budget> {
        &self.inner.budget
    }

    /// Re-read the org's usage with one cheap call (`GET /limits`), bypassing the governor:
    /// what a paused caller does every `salesforce.budget_poll_ms`.
    pub async fn refresh_usage(&self) -> Result<(u64, u64), SfError> {
        let (_, v) = self.send(Method::GET, "GET limits", "limits", None).await?;
        let daily = &v["DailyApiRequests"];
        if let (Some(max), Some(remaining)) = (daily["Max"].as_u64(), daily["Remaining"].as_u64()) {
            let used = max.saturating_sub(remaining);
            self.observe(used, max);
            return Ok((used, max));
        }
        // No body to read: the `Sforce-Limit-Info` header of the answer (already observed).
        self.api_usage().ok_or_else(|| SfError::Transient {
            status: Some(200),
            code: "UNREADABLE_BODY".into(),
            message: "GET /limits answered without DailyApiRequests or Sforce-Limit-Info".into(),
        })
    }

    /// `SELECT COUNT() FROM …`: the `totalSize` of the answer (one call).
    pub async fn count_query(&self, soql: &str) -> Result<u64, SfError> {
        let (_, v) = self
            .call(
                Method::GET,
                "GET query",
                &format!("query?q={}", enc(soql)),
                None,
            )
            .await?;
        v["totalSize"].as_u64().ok_or_else(|| SfError::Transient {
            status: Some(200),
            code: "UNREADABLE_BODY".into(),
            message: "query answer without totalSize".into(),
        })
    }

    fn observe(&self, used: u64, max: u64) {
        *self.inner.usage.lock().unwrap() = Some((used, max));
        metrics::gauge!(telemetry::SF_API_USAGE).set(used as f64);
        metrics::gauge!(telemetry::SF_API_LIMIT).set(max as f64);
        self.inner.budget.observe(used, max);
    }

    /// REST calls per endpoint template.
    pub fn calls(&self) -> BTreeMap<String, u64> {
        self.inner.calls.lock().unwrap().clone()
    }

    /// REST calls made (token requests are counted apart, see [`Client::token_requests`]).
    pub fn total_calls(&self) -> u64 {
        self.inner.calls.lock().unwrap().values().sum()
    }

    pub fn token_requests(&self) -> u64 {
        self.inner.token_requests.load(Ordering::Relaxed)
    }

    /// The last `Sforce-Limit-Info` api-usage seen: (used, max).
    pub fn api_usage(&self) -> Option<(u64, u64)> {
        *self.inner.usage.lock().unwrap()
    }

    /// The org's instance URL once a session exists (links into Salesforce).
    pub async fn instance_url(&self) -> Option<String> {
        self.inner
            .session
            .lock()
            .await
            .as_ref()
            .map(|s| s.instance_url.clone())
    }

    /// The RS256 assertion of the JWT bearer flow: issued by the connected app
    /// (`client_id`) for `username`, to the login host, valid three minutes.
    fn assertion(
        &self,
        key: &jsonwebtoken::EncodingKey,
        username: &str,
    ) -> Result<String, SfError> {
        let claims = json!({
            "iss": self.inner.client_id,
            "sub": username,
            "aud": self.inner.login_url,
            "exp": chrono::Utc::now().timestamp() + 180,
        });
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
            &claims,
            key,
        )
        .map_err(|e| SfError::Permanent {
            status: 0,
            errors: vec![ApiError {
                message: format!("signing the JWT assertion: {e}"),
                error_code: "CLIENT".into(),
                fields: vec![],
            }],
        })
    }

    /// A session; `stale` = the generation that just got a 401 (refresh unless another
    /// task already did).
    async fn session(&self, stale: Option<u64>) -> Result<Session, SfError> {
        let mut guard = self.inner.session.lock().await;
        if let Some(s) = guard.as_ref() {
            if stale != Some(s.generation) {
                return Ok(s.clone());
            }
        }
        let generation = guard.as_ref().map(|s| s.generation + 1).unwrap_or(1);
        self.inner.token_requests.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(telemetry::SF_CALLS, "endpoint" => "POST oauth2/token").increment(1);
        let form: Vec<(&str, String)> = match &self.inner.jwt {
            None => vec![
                ("grant_type", "client_credentials".into()),
                ("client_id", self.inner.client_id.clone()),
                ("client_secret", self.inner.client_secret.clone()),
            ],
            Some((key, username)) => vec![
                ("grant_type", JWT_GRANT.into()),
                ("assertion", self.assertion(key, username)?),
            ],
        };
        let resp = self
            .inner
            .http
            .post(format!("{}/services/oauth2/token", self.inner.login_url))
            .form(&form)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status().as_u16();
        if !resp.status().is_success() {
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            let code = body["error"].as_str().unwrap_or("OAUTH_ERROR").to_string();
            let message = body["error_description"]
                .as_str()
                .unwrap_or("token request refused")
                .to_string();
            if status >= 500 || status == 429 {
                return Err(SfError::Transient {
                    status: Some(status),
                    code,
                    message,
                });
            }
            return Err(SfError::Permanent {
                status,
                errors: vec![ApiError {
                    message: format!("OAuth: {message}"),
                    error_code: code,
                    fields: vec![],
                }],
            });
        }
        let t: TokenResponse = resp.json().await.map_err(|e| SfError::Transient {
            status: Some(status),
            code: "BAD_TOKEN_RESPONSE".into(),
            message: e.to_string(),
        })?;
        let s = Session {
            token: t.access_token,
            instance_url: t.instance_url.trim_end_matches('/').to_string(),
            generation,
        };
        tracing::debug!(instance_url = %s.instance_url, "salesforce session established");
        *guard = Some(s.clone());
        Ok(s)
    }

    fn count(&self, endpoint: &str) {
        *self
            .inner
            .calls
            .lock()
            .unwrap()
            .entry(endpoint.to_string())
            .or_default() += 1;
    }

    /// One REST call (`path` relative to `/services/data/vXX.X/`), with one token
    /// refresh on 401. Returns (status, body as JSON or Null).
    async fn call(
        &self,
        method: Method,
        endpoint: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), SfError> {
        self.inner
            .budget
            .acquire(self.priority, || async {
                if let Err(e) = self.refresh_usage().await {
                    tracing::warn!(error = %e, "salesforce budget: could not re-read API usage");
                }
            })
            .await;
        self.send(method, endpoint, path, body).await
    }

    /// [`Client::call`] without the governor.
    async fn send(
        &self,
        method: Method,
        endpoint: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Value), SfError> {
        let mut stale = None;
        loop {
            let s = self.session(stale).await?;
            let url = format!(
                "{}/services/data/v{}/{}",
                s.instance_url, self.inner.api_version, path
            );
            let mut req = self
                .inner
                .http
                .request(method.clone(), &url)
                .bearer_auth(&s.token);
            if let Some(b) = body {
                req = req.json(b);
            }
            self.count(endpoint);
            let resp = req.send().await.map_err(transport);
            let resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    metrics::counter!(telemetry::SF_CALLS, "endpoint" => endpoint.to_string(), "status" => "error").increment(1);
                    return Err(e);
                }
            };
            let status = resp.status().as_u16();
            metrics::counter!(telemetry::SF_CALLS, "endpoint" => endpoint.to_string(), "status" => status.to_string()).increment(1);
            if let Some((n, m)) = resp
                .headers()
                .get("sforce-limit-info")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_limit_info)
            {
                self.observe(n, m);
            }
            tracing::debug!(%method, endpoint, status, "salesforce call");
            let text = resp.text().await.map_err(transport)?;
            let json: Value = if text.trim().is_empty() {
                Value::Null
            } else {
                match serde_json::from_str(&text) {
                    Ok(v) => v,
                    Err(_) if status >= 500 => {
                        return Err(SfError::Transient {
                            status: Some(status),
                            code: format!("HTTP_{status}"),
                            message: text.chars().take(200).collect(),
                        })
                    }
                    Err(e) if status < 300 => {
                        return Err(SfError::Transient {
                            status: Some(status),
                            code: "UNREADABLE_BODY".into(),
                            message: e.to_string(),
                        })
                    }
                    Err(_) => Value::String(text.chars().take(500).collect()),
                }
            };
            if status == 401 && stale.is_none() {
                stale = Some(s.generation); // INVALID_SESSION_ID: refresh once, retry once
                continue;
            }
            if (200..300).contains(&status) || status == 300 {
                return Ok((status, json));
            }
            return Err(classify(status, json));
        }
    }

    /// `POST` (create) or `PATCH` (update) `/composite/sobjects`, 200 records per call.
    async fn collection(
        &self,
        method: Method,
        records: &[Record],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>, SfError> {
        let endpoint = format!("{method} composite/sobjects");
        let mut out = Vec::with_capacity(records.len());
        for chunk in records.chunks(COLLECTION_LIMIT) {
            let body = json!({"allOrNone": all_or_none, "records": chunk});
            let (_, v) = self
                .call(method.clone(), &endpoint, "composite/sobjects", Some(&body))
                .await?;
            out.extend(save_results(v)?);
        }
        Ok(out)
    }

    /// Check the org's schema against the configuration (`config check`, docs/rules.md R8, R11).
    ///
    /// Returns human-readable problems; empty means fine. Describes `Contact`,
    /// `SkillSync_Enrollment__c` and `SkillSync_Certification__c`:
    /// - Contact must have the `match_field` (R5) and the `link_field` (R8), and the link
    ///   must be an External ID, unique field;
    /// - the custom objects must have the fields of R11, their ids being External IDs.
    ///
    /// A missing object is a problem, not an error; transport/auth failures are errors.
    pub async fn check_schema(
        &self,
        link_field: &str,
        match_field: &str,
    ) -> Result<Vec<String>, SfError> {
        // (object, fields it must have, the External ID field among them)
        let mut contact = vec![match_field, link_field];
        contact.dedup();
        let wanted: [(&str, Vec<&str>, &str); 3] = [
            ("Contact", contact, link_field),
            (
                "SkillSync_Enrollment__c",
                vec![
                    "SkillSync_Enrollment_Id__c",
                    "Contact__c",
                    "Course_Id__c",
                    "Course_Name__c",
                    "Status__c",
                    "Enrolled_At__c",
                    "Completed_At__c",
                    "Score__c",
                ],
                "SkillSync_Enrollment_Id__c",
            ),
            (
                "SkillSync_Certification__c",
                vec![
                    "SkillSync_Certification_Id__c",
                    "Contact__c",
                    "Name__c",
                    "Issued_At__c",
                    "Expires_At__c",
                    "Status__c",
                ],
                "SkillSync_Certification_Id__c",
            ),
        ];
        let mut problems = Vec::new();
        for (object, fields, ext) in wanted {
            let d = match self.describe(object).await {
                Ok(d) => d,
                Err(SfError::NotFound) => {
                    problems.push(format!(
                        "sObject {object} does not exist (or is not visible to this user)"
                    ));
                    continue;
                }
                Err(e) => return Err(e),
            };
            for f in fields {
                match d.fields.iter().find(|x| x.name.eq_ignore_ascii_case(f)) {
                    None => problems.push(format!("{object}.{f} does not exist")),
                    Some(x) if f == ext && !(x.external_id && x.unique) => problems.push(format!(
                        "{object}.{f} must be an External ID field marked unique"
                    )),
                    Some(_) => {}
                }
            }
        }
        Ok(problems)
    }
}

/// The record ids of a 300 Multiple Choices body (a JSON list of record URLs).
fn multiple_matches(v: &Value) -> SfError {
    let ids = v
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| u.as_str())
                .map(|u| u.rsplit('/').next().unwrap_or(u).to_string())
                .collect()
        })
        .unwrap_or_default();
    SfError::MultipleMatches { ids }
}

fn classify(status: u16, body: Value) -> SfError {
    let errors: Vec<ApiError> = match serde_json::from_value::<Vec<ApiError>>(body.clone()) {
        Ok(e) => e,
        Err(_) => vec![ApiError {
            message: match &body {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
            error_code: format!("HTTP_{status}"),
            fields: vec![],
        }],
    };
    SfError::from_errors(status, errors)
}

fn save_results(v: Value) -> Result<Vec<SaveResult>, SfError> {
    serde_json::from_value(v).map_err(|e| SfError::Transient {
        status: Some(200),
        code: "UNREADABLE_BODY".into(),
        message: e.to_string(),
    })
}

fn with_type(r: &Record, sobject: &str) -> Record {
    let mut r = r.clone();
    r.entry("attributes")
        .or_insert_with(|| json!({"type": sobject}));
    r
}

#[async_trait]
impl SalesforceApi for Client {
    async fn query(&self, soql: &str) -> Result<Vec<Record>, SfError> {
        let mut out = Vec::new();
        let (_, mut page) = self
            .call(
                Method::GET,
                "GET query",
                &format!("query?q={}", enc(soql)),
                None,
            )
            .await?;
        loop {
            if let Some(recs) = page["records"].as_array() {
                out.extend(recs.iter().filter_map(|r| r.as_object().cloned()));
            }
            let next = page["nextRecordsUrl"].as_str().map(String::from);
            match next {
                Some(url) if page["done"] != json!(true) => {
                    // "/services/data/v61.0/query/01g…-2000" → "query/01g…-2000"
                    let rel = url
                        .split_once(&format!("v{}/", self.inner.api_version))
                        .map(|(_, r)| r.to_string())
                        .unwrap_or(url);
                    page = self.call(Method::GET, "GET query", &rel, None).await?.1;
                }
                _ => return Ok(out),
            }
        }
    }

    async fn create(&self, sobject: &str, fields: &Record) -> Result<String, SfError> {
        let (_, v) = self
            .call(
                Method::POST,
                &format!("POST sobjects/{sobject}"),
                &format!("sobjects/{}", enc(sobject)),
                Some(&Value::Object(fields.clone())),
            )
            .await?;
        v["id"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| SfError::Transient {
                status: Some(201),
                code: "UNREADABLE_BODY".into(),
                message: v.to_string(),
            })
    }

    async fn get(&self, sobject: &str, id: &str, fields: &[&str]) -> Result<Record, SfError> {
        let mut path = format!("sobjects/{}/{}", enc(sobject), enc(id));
        if !fields.is_empty() {
            path.push_str(&format!("?fields={}", enc(&fields.join(","))));
        }
        let (_, v) = self
            .call(
                Method::GET,
                &format!("GET sobjects/{sobject}/{{id}}"),
                &path,
                None,
            )
            .await?;
        v.as_object().cloned().ok_or(SfError::NotFound)
    }

    async fn update(&self, sobject: &str, id: &str, fields: &Record) -> Result<(), SfError> {
        self.call(
            Method::PATCH,
            &format!("PATCH sobjects/{sobject}/{{id}}"),
            &format!("sobjects/{}/{}", enc(sobject), enc(id)),
            Some(&Value::Object(fields.clone())),
        )
        .await
        .map(|_| ())
    }

    async fn delete(&self, sobject: &str, id: &str) -> Result<(), SfError> {
        self.call(
            Method::DELETE,
            &format!("DELETE sobjects/{sobject}/{{id}}"),
            &format!("sobjects/{}/{}", enc(sobject), enc(id)),
            None,
        )
        .await
        .map(|_| ())
    }

    async fn upsert(
        &self,
        sobject: &str,
        ext_field: &str,
        ext_id: &str,
        fields: &Record,
    ) -> Result<UpsertResult, SfError> {
        let (status, v) = self
            .call(
                Method::PATCH,
                &format!("PATCH sobjects/{sobject}/{ext_field}"),
                &format!(
                    "sobjects/{}/{}/{}",
                    enc(sobject),
                    enc(ext_field),
                    enc(ext_id)
                ),
                Some(&Value::Object(fields.clone())),
            )
            .await?;
        if status == 300 {
            return Err(multiple_matches(&v));
        }
        // 201 created / 200 updated, both with `{id, success, errors, created}`. Older API
        // versions answer an update with 204 and no body: the caller needs the id (it is
        // the Contact the learner is linked to), so read it by the external id — one more
        // call, only on such orgs.
        let id = match v["id"].as_str() {
            Some(id) if !id.is_empty() => id.to_string(),
            _ => {
                let (_, r) = self
                    .call(
                        Method::GET,
                        &format!("GET sobjects/{sobject}/{ext_field}"),
                        &format!(
                            "sobjects/{}/{}/{}?fields=Id",
                            enc(sobject),
                            enc(ext_field),
                            enc(ext_id)
                        ),
                        None,
                    )
                    .await?;
                r["Id"]
                    .as_str()
                    .map(String::from)
                    .ok_or(SfError::NotFound)?
            }
        };
        Ok(UpsertResult {
            id,
            created: status == 201,
        })
    }

    async fn delete_by_external_id(
        &self,
        sobject: &str,
        ext_field: &str,
        ext_id: &str,
    ) -> Result<(), SfError> {
        let (status, v) = self
            .call(
                Method::DELETE,
                &format!("DELETE sobjects/{sobject}/{ext_field}"),
                &format!(
                    "sobjects/{}/{}/{}",
                    enc(sobject),
                    enc(ext_field),
                    enc(ext_id)
                ),
                None,
            )
            .await?;
        if status == 300 {
            return Err(multiple_matches(&v));
        }
        Ok(())
    }

    async fn create_many(
        &self,
        records: &[Record],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>, SfError> {
        self.collection(Method::POST, records, all_or_none).await
    }

    async fn update_many(
        &self,
        records: &[Record],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>, SfError> {
        self.collection(Method::PATCH, records, all_or_none).await
    }

    async fn upsert_many(
        &self,
        sobject: &str,
        ext_field: &str,
        records: &[Record],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>, SfError> {
        let mut out = Vec::with_capacity(records.len());
        for chunk in records.chunks(COLLECTION_LIMIT) {
            let typed: Vec<Record> = chunk.iter().map(|r| with_type(r, sobject)).collect();
            let body = json!({"allOrNone": all_or_none, "records": typed});
            let (_, v) = self
                .call(
                    Method::PATCH,
                    &format!("PATCH composite/sobjects/{sobject}/{ext_field}"),
                    &format!("composite/sobjects/{}/{}", enc(sobject), enc(ext_field)),
                    Some(&body),
                )
                .await?;
            out.extend(save_results(v)?);
        }
        Ok(out)
    }

    async fn delete_many(
        &self,
        ids: &[String],
        all_or_none: bool,
    ) -> Result<Vec<SaveResult>, SfError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(COLLECTION_LIMIT) {
            let path = format!(
                "composite/sobjects?ids={}&allOrNone={all_or_none}",
                enc(&chunk.join(","))
            );
            let (_, v) = self
                .call(Method::DELETE, "DELETE composite/sobjects", &path, None)
                .await?;
            out.extend(save_results(v)?);
        }
        Ok(out)
    }

    async fn describe(&self, sobject: &str) -> Result<Describe, SfError> {
        let (_, v) = self
            .call(
                Method::GET,
                &format!("GET sobjects/{sobject}/describe"),
                &format!("sobjects/{}/describe", enc(sobject)),
                None,
            )
            .await?;
        serde_json::from_value(v).map_err(|e| SfError::Transient {
            status: Some(200),
            code: "UNREADABLE_BODY".into(),
            message: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_info_is_parsed() {
        assert_eq!(parse_limit_info("api-usage=25/15000"), Some((25, 15000)));
        assert_eq!(
            parse_limit_info("per-app-api-usage=1/10(appName=x), api-usage=7/100"),
            Some((7, 100))
        );
        assert_eq!(parse_limit_info("nonsense"), None);
    }

    #[test]
    fn error_bodies_are_classified() {
        let e = classify(
            400,
            json!([{"message": "m", "errorCode": "REQUIRED_FIELD_MISSING", "fields": ["LastName"]}]),
        );
        assert!(!e.is_transient() && e.code() == "REQUIRED_FIELD_MISSING");
        assert!(classify(
            403,
            json!([{"message": "m", "errorCode": "REQUEST_LIMIT_EXCEEDED"}])
        )
        .is_transient());
        assert!(classify(
            400,
            json!([{"message": "m", "errorCode": "UNABLE_TO_LOCK_ROW"}])
        )
        .is_transient());
        assert!(classify(502, Value::String("Bad gateway".into())).is_transient());
        assert!(matches!(
            classify(404, json!([{"message": "m", "errorCode": "NOT_FOUND"}])),
            SfError::NotFound
        ));
    }
}

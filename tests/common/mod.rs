//! Shared end-to-end fixtures: the sandboxes ("the world"), settings, and `spawn_app`
//! (receiver + in-process worker on real RabbitMQ and PostgreSQL).
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use syncback::config::Settings;
use syncback::queue::Queue;
use syncback::salesforce::Record;
use syncback::sandbox::salesforce::Org;
use syncback::sandbox::skillsync::Lms;
use syncback::store::Store;
use syncback::webhook::signature::decode_secret;
use syncback::worker::Worker;

pub const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

pub fn any_addr() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

pub struct World {
    pub org: Org,
    pub lms: Lms,
    pub sf_url: String,
    pub ss_url: String,
    pub accounts: HashMap<String, String>,
}

/// Departments: 42 Engineering (source) → 43 Sales, 44 Research (no Account); 99 Outside.
pub async fn world() -> World {
    let org = Org::new();
    let lms = Lms::new();
    let mut accounts = HashMap::new();
    for name in ["Engineering", "Sales", "Prospects", "Twin", "Twin"] {
        let mut r = Record::new();
        r.insert("Name".into(), json!(name));
        accounts.insert(name.to_string(), org.insert("Account", r).unwrap());
    }
    lms.add_department("42", "Engineering", None);
    lms.add_department("43", "Sales", Some("42"));
    lms.add_department("44", "Research", Some("42"));
    lms.add_department("45", "Twin", Some("42"));
    lms.add_department("99", "Outside", None);
    let (sf, _) = org.serve(any_addr()).await.unwrap();
    let (ss, _) = lms.serve(any_addr()).await.unwrap();
    World {
        org,
        lms,
        sf_url: format!("http://{sf}"),
        ss_url: format!("http://{ss}"),
        accounts,
    }
}

pub fn settings(
    w: &World,
    queue_backend: &str,
    amqp: &str,
    prefix: &str,
    store_url: &str,
) -> Settings {
    Settings::from_toml(&format!(
        r#"
[server]
listen = "127.0.0.1:0"
[webhooks]
secrets = ["{SECRET}"]
[queue]
backend = "{queue_backend}"
url = "{amqp}"
prefix = "{prefix}"
retry_delays_secs = [1, 2]
[store]
url = "{store_url}"
[salesforce]
login_url = "{sf}"
client_id = "sandbox-client"
client_secret = "sandbox-secret"
budget_poll_ms = 200
[skillsync]
base_url = "{ss}"
client_id = "sandbox-client"
client_secret = "sandbox-secret"
[sync]
enabled = true
source_department_id = "42"
scope = "with_subdepartments"
match_field = "Email"
account_rule = "department"
[worker]
concurrency = 8
max_attempts = 5
"#,
        sf = w.sf_url,
        ss = w.ss_url
    ))
    .unwrap()
}

pub fn learner_json(
    id: &str,
    user: &str,
    last: &str,
    dept: (&str, &str),
    status: &str,
    at: DateTime<Utc>,
) -> Value {
    json!({"id": id, "username": user, "email": user, "first_name": "F", "last_name": last,
        "department_id": dept.0, "department_name": dept.1, "status": status, "fields": {},
        "updated_at": at.to_rfc3339()})
}

pub fn envelope(id: &str, ty: &str, at: DateTime<Utc>, data: Value) -> Value {
    json!({"id": id, "type": ty, "occurred_at": at.to_rfc3339(), "data": data})
}

/// A running receiver + in-process worker on real RabbitMQ and PostgreSQL.
pub struct App {
    pub settings: Settings,
    pub url: String,
    pub store: Arc<dyn Store>,
    pub queue: Arc<dyn Queue>,
    pub stop: tokio::sync::watch::Sender<bool>,
    pub http: reqwest::Client,
}

pub async fn spawn_app(w: &World, test: &str) -> Option<App> {
    let amqp = syncback::testing::rabbitmq()?;
    let db = syncback::testing::fresh_postgres_db().await?;
    let s = settings(
        w,
        "rabbitmq",
        &amqp,
        &syncback::testing::unique_prefix(test),
        &db,
    );
    let store = syncback::store::open(&db, 5).await.unwrap();
    let queue = syncback::queue::connect(&s.queue).await.unwrap();
    let engine = syncback::worker::engine_from_settings(&s, store.clone())
        .await
        .unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let worker = Arc::new(Worker::new(engine, queue.clone(), s.worker.clone()));
    tokio::spawn(worker.run(rx.clone()));
    let state = syncback::http::AppState::new(&s, queue.clone(), Some(store.clone())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut rx2 = rx.clone();
    tokio::spawn(syncback::http::serve(
        listener,
        syncback::http::router(state),
        async move {
            let _ = rx2.wait_for(|v| *v).await;
        },
    ));
    Some(App {
        settings: s.clone(),
        url: format!("http://{addr}/webhooks/skillsync"),
        store,
        queue,
        stop,
        http: reqwest::Client::new(),
    })
}

impl App {
    pub async fn post(&self, env: &Value) -> u16 {
        let id = env["id"].as_str().unwrap();
        let body = serde_json::to_vec(env).unwrap();
        let ts = Utc::now().timestamp();
        let sig = decode_secret(SECRET).unwrap().sign(id, ts, &body);
        self.http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", sig)
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// Post and wait for the event's outcome; returns (class, code).
    pub async fn apply(&self, env: &Value, learner: &str) -> (String, String) {
        let id = env["id"].as_str().unwrap();
        let before = self.count(learner, id).await;
        assert_eq!(self.post(env).await, 202);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let h = self.store.history(learner, 100).await.unwrap();
            let mine: Vec<_> = h.iter().filter(|r| r.event_id == id).collect();
            if mine.len() > before {
                return (mine[0].class.as_str().to_string(), mine[0].code.clone());
            }
            assert!(Instant::now() < deadline, "event {id} not settled");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn count(&self, learner: &str, id: &str) -> usize {
        let h = self.store.history(learner, 100).await.unwrap();
        h.iter().filter(|r| r.event_id == id).count()
    }
}

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        drop_queues(&self.settings);
    }
}

/// Delete a test's RabbitMQ queues (from a plain thread: usable in `Drop`).
pub fn drop_queues(s: &Settings) {
    let q = s.queue.clone();
    let _ = std::thread::spawn(move || {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(syncback::testing::delete_rabbit_topology(&q))
    })
    .join();
}

/// Write `s` as a TOML file for child `syncback` processes.
pub fn write_config(dir: &std::path::Path, s: &Settings) -> std::path::PathBuf {
    let cfg = dir.join("syncback.toml");
    std::fs::write(&cfg, toml_of(s)).unwrap();
    cfg
}

/// Start `syncback <args…>` as a child process (killed on drop).
pub fn syncback_child(cfg: &std::path::Path, args: &[&str]) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_syncback"))
        .arg("--config")
        .arg(cfg)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Wait until `cond` holds (polling), or fail with `what`.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn contacts_with(org: &Org, field: &str, value: &str) -> Vec<Record> {
    org.records("Contact")
        .into_iter()
        .filter(|c| {
            c.get(field)
                .and_then(Value::as_str)
                .is_some_and(|v| v.eq_ignore_ascii_case(value))
        })
        .collect()
}

pub fn add_contact(org: &Org, email: &str, account: &str) -> String {
    let mut r = Record::new();
    r.insert("LastName".into(), json!("Existing"));
    r.insert("Email".into(), json!(email));
    r.insert("AccountId".into(), json!(account));
    org.insert("Contact", r).unwrap()
}

pub fn unsafe_kill(pid: i32) {
    std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
}

pub fn toml_of(s: &Settings) -> String {
    // Settings serialise with redacted secrets only through Debug; Serialize keeps values.
    let v = serde_json::to_value(s).unwrap();
    let mut out = String::new();
    for (section, table) in v.as_object().unwrap() {
        out.push_str(&format!("[{section}]\n"));
        for (k, val) in table.as_object().unwrap() {
            if val.is_null() || val.is_object() {
                continue;
            }
            out.push_str(&format!("{k} = {val}\n"));
        }
    }
    out
}

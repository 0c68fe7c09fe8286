//! Starting while the broker or the store is down (README "Operations"): `run` starts,
//! answers 503 and reports not-ready, retries with backoff, and begins work as soon as
//! both appear; `--wait-timeout` bounds the wait for scripts.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// A port with nothing listening yet; `open` starts forwarding it to `target`.
struct LateProxy {
    port: u16,
    target: String,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl LateProxy {
    fn new(target: &str) -> Self {
        LateProxy {
            port: free_port(),
            target: target.to_string(),
        }
    }

    async fn open(&self) -> tokio::task::JoinHandle<()> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        let target = self.target.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        })
    }
}

async fn readyz(base: &str) -> Option<(u16, Value)> {
    let r = reqwest::get(format!("{base}/readyz")).await.ok()?;
    let st = r.status().as_u16();
    Some((st, r.json().await.unwrap_or(Value::Null)))
}

#[tokio::test]
async fn run_starts_while_broker_and_store_are_down_and_begins_when_they_appear() {
    let Some(_) = syncback::testing::rabbitmq() else {
        return;
    };
    let Some(db) = syncback::testing::fresh_postgres_db().await else {
        return;
    };
    let w = world().await;
    let broker = LateProxy::new("127.0.0.1:5672");
    let store = LateProxy::new("127.0.0.1:5432");
    let db_late = db.replacen("127.0.0.1:5432", &format!("127.0.0.1:{}", store.port), 1);
    assert_ne!(db_late, db, "the test database is on 127.0.0.1:5432");
    let mut s = settings(
        &w,
        "rabbitmq",
        &format!("amqp://guest:guest@127.0.0.1:{}/%2f", broker.port),
        &syncback::testing::unique_prefix("startup"),
        &db_late,
    );
    let port = free_port();
    s.server.listen = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &s);
    let _child = syncback_child(&cfg, &["run"]);
    let base = format!("http://127.0.0.1:{port}");

    // Up, but not ready: the store is still "connecting", the broker unreachable.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (st, body) = loop {
        if let Some(r) = readyz(&base).await {
            break r;
        }
        assert!(Instant::now() < deadline, "the receiver never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(st, 503, "{body}");
    assert_eq!(body["status"], "not_ready");
    assert_eq!(body["store"], "connecting", "{body}");
    assert_ne!(body["broker"], "ok", "{body}");
    let app = AppClient::new(&base);
    let ev = learner_created("evt_start1", "7001", "late@acme.example");
    assert_eq!(
        app.post(&ev).await,
        503,
        "nothing is accepted before the broker is there"
    );

    // The dependencies appear: ready without a restart, and the event is applied.
    let _b = broker.open().await;
    let _s = store.open().await;
    let started = Instant::now();
    eventually(30, "ready once broker and store are up", || {
        let base = base.clone();
        async move { readyz(&base).await.is_some_and(|(st, _)| st == 200) }
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(app.post(&ev).await, 202);
    eventually(20, "the event is applied", || {
        let org = w.org.clone();
        async move { !contacts_with(&org, "Email", "late@acme.example").is_empty() }
    })
    .await;
    let mut direct = s.clone();
    direct.queue.url = syncback::config::Secret::new(syncback::testing::RABBITMQ_URL);
    drop_queues(&direct);
}

#[tokio::test]
async fn wait_timeout_gives_up_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("syncback.toml");
    let broker = free_port();
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\n[webhooks]\nsecrets = [\"{SECRET}\"]\n[queue]\nurl = \"amqp://guest:secretpw@127.0.0.1:{broker}/%2f\"\n",
            free_port(),
        ),
    )
    .unwrap();
    let started = Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_syncback"))
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "receive",
            "--wait-timeout",
            "2",
        ])
        .output()
        .await
        .unwrap();
    let took = started.elapsed();
    let stderr =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(stderr.contains("--wait-timeout"), "{stderr}");
    assert!(stderr.contains("queue.url"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "connection refused at 127.0.0.1:{broker} (queue.url)"
        )),
        "the address and the key: {stderr}"
    );
    assert!(
        stderr.matches("waiting for it").count() >= 2,
        "one line per attempt: {stderr}"
    );
    assert!(
        !stderr.contains("secretpw"),
        "the password leaked: {stderr}"
    );
}

/// A "broker" that accepts TCP and hangs up at once: syncback reports it with the key, and
/// the AMQP client's own ERROR lines do not reach the log.
#[tokio::test]
async fn a_broker_that_hangs_up_is_reported_once_per_attempt_without_client_noise() {
    let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = fake.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in fake.incoming() {
            drop(c);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("syncback.toml");
    std::fs::write(
        &cfg,
        format!(
            "[server]\nlisten = \"127.0.0.1:{}\"\n[webhooks]\nsecrets = [\"{SECRET}\"]\n[queue]\nurl = \"amqp://guest:guest@127.0.0.1:{port}/%2f\"\n[log]\nformat = \"text\"\n",
            free_port(),
        ),
    )
    .unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_syncback"))
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "receive",
            "--wait-timeout",
            "2",
        ])
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("broker unavailable (queue.url); waiting for it"),
        "{stderr}"
    );
    assert!(!stderr.contains("lapin"), "no AMQP-client lines: {stderr}");
}

/// A webhook sender for a receiver started as a child process.
struct AppClient {
    url: String,
    http: reqwest::Client,
}

impl AppClient {
    fn new(base: &str) -> Self {
        AppClient {
            url: format!("{base}/webhooks/skillsync"),
            http: reqwest::Client::new(),
        }
    }

    async fn post(&self, env: &Value) -> u16 {
        let id = env["id"].as_str().unwrap();
        let body = serde_json::to_vec(env).unwrap();
        let ts = chrono::Utc::now().timestamp();
        let sig = syncback::webhook::signature::decode_secret(SECRET)
            .unwrap()
            .sign(id, ts, &body);
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
}

fn learner_created(id: &str, learner: &str, email: &str) -> Value {
    let t = chrono::Utc::now();
    envelope(
        id,
        "learner.created",
        t,
        serde_json::json!({"learner": learner_json(learner, email, "Late", ("43", "Sales"), "active", t)}),
    )
}

//! The webhook receiver (docs/rules.md "Webhook contract") end to end: signed POSTs over loopback, real
//! RabbitMQ with publisher confirms, every status code, and an independent signer.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use syncback::config::Settings;
use syncback::queue::{Queue, QueueError};
use syncback::webhook::signature::decode_secret;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OLD_SECRET: &str = "whsec_dGhpcyBpcyB0aGUgb2xkIHNlY3JldCBrZXkh";

fn settings(backend: &str, url: &str, prefix: &str) -> Settings {
    Settings::from_toml(&format!(
        r#"
[webhooks]
secrets = ["{SECRET}", "{OLD_SECRET}"]
max_body_bytes = 65536
[queue]
backend = "{backend}"
url = "{url}"
prefix = "{prefix}"
"#
    ))
    .unwrap()
}

struct Receiver {
    url: String,
    http: reqwest::Client,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn spawn_receiver(s: &Settings, queue: Arc<dyn Queue>) -> Receiver {
    let state = syncback::http::AppState::new(s, queue, None).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(syncback::http::serve(
        listener,
        syncback::http::router(state),
        async move {
            let _ = rx.await;
        },
    ));
    Receiver {
        url: format!("http://{addr}"),
        http: reqwest::Client::new(),
        stop: Some(tx),
    }
}

fn learner_event(id: &str) -> Value {
    json!({"id": id, "type": "learner.updated", "occurred_at": "2026-11-24T10:00:00.123Z",
        "data": {"learner": {"id": "1001", "username": "ada@acme.example", "email": "ada@acme.example",
            "first_name": "Ada", "last_name": "Lovelace", "department_id": "43", "department_name": "Sales",
            "status": "active", "fields": {}, "updated_at": "2026-11-24T10:00:00Z"}}})
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Receiver {
    async fn post_raw(&self, headers: &[(&str, String)], body: Vec<u8>) -> (u16, Value) {
        let mut req = self
            .http
            .post(format!("{}/webhooks/skillsync", self.url))
            .header("content-type", "application/json")
            .body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    /// Sign with `secret` (our signer) and post.
    async fn post_signed(&self, secret: &str, id: &str, ts: i64, body: &[u8]) -> (u16, Value) {
        let sig = decode_secret(secret).unwrap().sign(id, ts, body);
        self.post_raw(
            &[
                ("webhook-id", id.to_string()),
                ("webhook-timestamp", ts.to_string()),
                ("webhook-signature", sig),
            ],
            body.to_vec(),
        )
        .await
    }

    async fn post_event(&self, ev: &Value) -> (u16, Value) {
        let body = serde_json::to_vec(ev).unwrap();
        self.post_signed(SECRET, ev["id"].as_str().unwrap(), now(), &body)
            .await
    }
}

/// Read `n` messages back from the queue (acking them).
async fn drain(queue: &Arc<dyn Queue>, n: usize) -> Vec<syncback::queue::Message> {
    let mut sub = queue.subscribe(200).await.unwrap();
    let mut out = Vec::new();
    while out.len() < n {
        let d = tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .expect("message expected on the queue")
            .unwrap()
            .unwrap();
        out.push(d.message().clone());
        d.ack().await.unwrap();
    }
    sub.cancel().await.unwrap();
    out
}

async fn rabbit(test: &str) -> Option<(Settings, Arc<dyn Queue>)> {
    let url = syncback::testing::rabbitmq()?;
    let s = settings("rabbitmq", &url, &syncback::testing::unique_prefix(test));
    let q = syncback::queue::connect(&s.queue).await.unwrap();
    Some((s, q))
}

#[tokio::test]
async fn accepted_webhook_is_on_rabbitmq_with_id_and_receipt_time() {
    let Some((s, queue)) = rabbit("accepted").await else {
        return;
    };
    let r = spawn_receiver(&s, queue.clone()).await;
    let ev = learner_event("evt_accept_1");
    let before = chrono::Utc::now();
    let (status, body) = r.post_event(&ev).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["id"], "evt_accept_1");
    let got = drain(&queue, 1).await;
    assert_eq!(got[0].webhook_id, "evt_accept_1");
    assert_eq!(got[0].envelope, ev, "the envelope travels unchanged");
    assert!(got[0].received_at >= before - chrono::Duration::seconds(1));
    // A redelivered webhook-id is accepted again (the worker applies it at most once).
    assert_eq!(r.post_event(&ev).await.0, 202);
    assert_eq!(drain(&queue, 1).await.len(), 1);
    syncback::testing::delete_rabbit_topology(&s.queue).await;
}

#[tokio::test]
async fn independent_standardwebhooks_signer_is_accepted() {
    let Some((s, queue)) = rabbit("pysigner").await else {
        return;
    };
    let r = spawn_receiver(&s, queue.clone()).await;
    if !syncback::testing::python_module("standardwebhooks", "standardwebhooks") {
        return;
    }
    // Both configured secrets (rotation), and one unknown secret.
    let ts = now();
    let reqs: Vec<Value> = [
        SECRET,
        OLD_SECRET,
        "whsec_c29tZW9uZSBlbHNlJ3Mgc2VjcmV0IGtleQ==",
    ]
    .iter()
    .enumerate()
    .map(|(i, secret)| {
        let ev = learner_event(&format!("evt_py_{i}"));
        json!({"secret": secret, "id": ev["id"], "timestamp": ts, "body": ev.to_string()})
    })
    .collect();
    let out = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/py/sign_webhook.py"
        ))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(Value::Array(reqs.clone()).to_string().as_bytes())?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sigs: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    for (i, (req, sig)) in reqs.iter().zip(&sigs).enumerate() {
        let body = req["body"].as_str().unwrap().as_bytes().to_vec();
        let id = req["id"].as_str().unwrap().to_string();
        // Our signer agrees byte for byte with theirs.
        assert_eq!(
            &decode_secret(req["secret"].as_str().unwrap())
                .unwrap()
                .sign(&id, ts, &body),
            sig
        );
        // Several signatures in one header: any valid one passes.
        let header = format!("v1,AAAA {sig} v2,ignored");
        let (status, resp) = r
            .post_raw(
                &[
                    ("webhook-id", id),
                    ("webhook-timestamp", ts.to_string()),
                    ("webhook-signature", header),
                ],
                body,
            )
            .await;
        let expected = if i < 2 { 202 } else { 401 };
        assert_eq!(status, expected, "request {i}: {resp}");
    }
    assert_eq!(drain(&queue, 2).await.len(), 2);
    syncback::testing::delete_rabbit_topology(&s.queue).await;
}

#[tokio::test]
async fn every_rejection_has_its_status_and_a_json_reason() {
    let mem = Arc::new(syncback::queue::memory::MemoryQueue::new());
    let s = settings("memory", "amqp://unused", "t");
    let r = spawn_receiver(&s, mem.clone()).await;
    let ev = learner_event("evt_r1");
    let body = serde_json::to_vec(&ev).unwrap();

    // 401: missing headers, bad signature, stale and future timestamps, unknown secret.
    let (st, b) = r.post_raw(&[], body.clone()).await;
    assert_eq!((st, b["error"].as_str()), (401, Some("missing_signature")));
    let (st, b) = r
        .post_raw(
            &[
                ("webhook-id", "evt_r1".into()),
                ("webhook-timestamp", now().to_string()),
                ("webhook-signature", "v1,Zm9vYmFy".into()),
            ],
            body.clone(),
        )
        .await;
    assert_eq!((st, b["error"].as_str()), (401, Some("bad_signature")));
    for skew in [-301, 301] {
        let (st, b) = r.post_signed(SECRET, "evt_r1", now() + skew, &body).await;
        assert_eq!(
            (st, b["error"].as_str()),
            (401, Some("stale_timestamp")),
            "{b}"
        );
    }
    let (st, _) = r
        .post_signed(
            "whsec_c29tZW9uZSBlbHNlJ3Mgc2VjcmV0IGtleQ==",
            "evt_r1",
            now(),
            &body,
        )
        .await;
    assert_eq!(st, 401);
    // The signature covers the id: the same body under another id fails.
    let sig = decode_secret(SECRET).unwrap().sign("evt_r1", now(), &body);
    let (st, _) = r
        .post_raw(
            &[
                ("webhook-id", "evt_other".into()),
                ("webhook-timestamp", now().to_string()),
                ("webhook-signature", sig),
            ],
            body.clone(),
        )
        .await;
    assert_eq!(st, 401);

    // 400: not JSON, or not an object.
    let (st, b) = r.post_signed(SECRET, "evt_r2", now(), b"{not json").await;
    assert_eq!((st, b["error"].as_str()), (400, Some("not_json")), "{b}");
    let (st, _) = r.post_signed(SECRET, "evt_r2", now(), b"[1,2]").await;
    assert_eq!(st, 400);

    // 413: over max_body_bytes.
    let big = vec![b' '; 70_000];
    let (st, b) = r.post_signed(SECRET, "evt_r3", now(), &big).await;
    assert_eq!((st, b["error"].as_str()), (413, Some("too_large")));

    // 422: schema violations are listed with their JSON pointer.
    let mut bad = learner_event("evt_r4");
    bad["data"]["learner"]["status"] = json!("asleep");
    bad["data"]["learner"]
        .as_object_mut()
        .unwrap()
        .remove("username");
    let (st, b) = r.post_event(&bad).await;
    assert_eq!((st, b["error"].as_str()), (422, Some("schema")), "{b}");
    let paths: Vec<&str> = b["violations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["path"].as_str().unwrap())
        .collect();
    assert!(paths.contains(&"/data/learner/status"), "{paths:?}");
    assert!(paths.contains(&"/data/learner"), "{paths:?}");
    // 422: the envelope id must be the signed webhook-id.
    let (st, b) = r
        .post_signed(
            SECRET,
            "evt_mismatch",
            now(),
            &serde_json::to_vec(&learner_event("evt_r5")).unwrap(),
        )
        .await;
    assert_eq!(
        (st, b["violations"][0]["path"].as_str()),
        (422, Some("/id"))
    );

    // Svix-based senders use svix-* header names for the same scheme.
    let svix_body = serde_json::to_vec(&learner_event("evt_svix")).unwrap();
    let sig = decode_secret(SECRET)
        .unwrap()
        .sign("evt_svix", now(), &svix_body);
    let (st, b) = r
        .post_raw(
            &[
                ("svix-id", "evt_svix".into()),
                ("svix-timestamp", now().to_string()),
                ("svix-signature", sig),
            ],
            svix_body,
        )
        .await;
    assert_eq!(st, 202, "{b}");
    assert_eq!(mem.depths().await.unwrap().main, 1);
    let mut sub = mem.subscribe(1).await.unwrap();
    sub.next().await.unwrap().unwrap().ack().await.unwrap();

    // Nothing above reached the queue.
    assert_eq!(mem.depths().await.unwrap().main, 0);

    // 503: broker unavailable — never 2xx for an event that is not queued.
    mem.set_unavailable(true);
    let (st, b) = r.post_event(&ev).await;
    assert_eq!((st, b["error"].as_str()), (503, Some("broker_unavailable")));
    mem.set_unavailable(false);
    assert_eq!(r.post_event(&ev).await.0, 202);
    assert_eq!(mem.depths().await.unwrap().main, 1);

    // Health endpoints.
    let h = reqwest::get(format!("{}/healthz", r.url)).await.unwrap();
    assert_eq!(h.status(), 200);
    let ready = reqwest::get(format!("{}/readyz", r.url)).await.unwrap();
    assert_eq!(ready.status(), 200);
    mem.set_unavailable(true);
    let ready = reqwest::get(format!("{}/readyz", r.url)).await.unwrap();
    assert_eq!(ready.status(), 503);
    let metrics = reqwest::get(format!("{}/metrics", r.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("syncback_webhooks_rejected_total"),
        "{metrics}"
    );
}

/// A TCP proxy in front of RabbitMQ that the test can cut, to take "the broker" down
/// without stopping the shared server.
struct CuttableProxy {
    addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<bool>,
}

async fn proxy_to_rabbitmq() -> CuttableProxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (cut, cut_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            let mut cut_rx = cut_rx.clone();
            if *cut_rx.borrow() {
                continue; // refuse: drop the connection at once
            }
            tokio::spawn(async move {
                let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5672").await
                else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cut_rx.wait_for(|c| *c) => {}
                }
            });
        }
    });
    CuttableProxy { addr, cut }
}

#[tokio::test]
async fn broker_down_answers_503_and_recovers() {
    let Some(_) = syncback::testing::rabbitmq() else {
        return;
    };
    let proxy = proxy_to_rabbitmq().await;
    let s = settings(
        "rabbitmq",
        &format!("amqp://guest:guest@{}/%2f", proxy.addr),
        &syncback::testing::unique_prefix("down"),
    );
    let queue = syncback::queue::connect(&s.queue).await.unwrap();
    let r = spawn_receiver(&s, queue.clone()).await;
    assert_eq!(r.post_event(&learner_event("evt_d1")).await.0, 202);

    proxy.cut.send(true).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (st, b) = r.post_event(&learner_event("evt_d2")).await;
    assert_eq!(st, 503, "{b}");
    assert!(matches!(
        queue.ping().await,
        Err(QueueError::Unavailable(_))
    ));

    proxy.cut.send(false).unwrap();
    assert_eq!(
        r.post_event(&learner_event("evt_d3")).await.0,
        202,
        "reconnects"
    );
    let ids: Vec<String> = drain(&queue, 2)
        .await
        .into_iter()
        .map(|m| m.webhook_id)
        .collect();
    assert_eq!(ids, ["evt_d1", "evt_d3"]);
    let mut direct = s.clone();
    direct.queue.url = syncback::config::Secret::new(syncback::testing::RABBITMQ_URL);
    syncback::testing::delete_rabbit_topology(&direct.queue).await;
}

#[tokio::test]
async fn a_flood_of_1000_concurrent_posts_loses_none() {
    let Some((s, queue)) = rabbit("flood").await else {
        return;
    };
    let r = Arc::new(spawn_receiver(&s, queue.clone()).await);
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            r.post_event(&learner_event(&format!("evt_flood_{i:04}")))
                .await
                .0
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        if t.await.unwrap() == 202 {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 1000);
    assert_eq!(queue.depths().await.unwrap().main, 1000);
    let mut ids: Vec<String> = drain(&queue, 1000)
        .await
        .into_iter()
        .map(|m| m.webhook_id)
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(
        ids.len(),
        1000,
        "every accepted webhook is on the queue exactly once"
    );
    syncback::testing::delete_rabbit_topology(&s.queue).await;
}

/// The receiver publishes straight to `{prefix}.events` with `mandatory`: if that queue
/// is gone (deleted by hand), the broker returns the message instead of confirming a
/// message that is nowhere; the receiver declares the topology again and publishes
/// again — the webhook answered 202 is on the queue.
#[tokio::test]
async fn a_deleted_events_queue_is_declared_again_and_nothing_is_lost() {
    let Some((s, queue)) = rabbit("unroutable").await else {
        return;
    };
    let r = spawn_receiver(&s, queue.clone()).await;
    assert_eq!(r.post_event(&learner_event("evt_route_1")).await.0, 202);
    {
        use lapin::options::QueueDeleteOptions;
        let conn = lapin::Connection::connect(
            s.queue.url.expose(),
            lapin::ConnectionProperties::default(),
        )
        .await
        .unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.queue_delete(
            &format!("{}.events", s.queue.prefix),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
        let _ = conn.close(200, "deleted").await;
    }
    let (status, body) = r.post_event(&learner_event("evt_route_2")).await;
    assert_eq!(status, 202, "{body}");
    let got = drain(&queue, 1).await;
    assert_eq!(got[0].webhook_id, "evt_route_2");
    syncback::testing::delete_rabbit_topology(&s.queue).await;
}

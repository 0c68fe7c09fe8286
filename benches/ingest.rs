//! Ingestion benchmark (issue: webhook ingestion): signed webhooks posted over loopback
//! to the real receiver, measured end to end (HTTP + signature + schema + publish with
//! publisher confirm).
//!
//! `cargo bench --bench ingest` — runs, in one go:
//!
//! 1. memory queue, full speed (the baseline: everything but the broker),
//! 2. RabbitMQ with confirms, full speed,
//! 3. RabbitMQ with confirms, paced at 2,000 webhooks/s (latency under a realistic load).
//!
//! Each reports accepted/s and p50/p99 latency. Environment: `INGEST_N` (default 20000),
//! `INGEST_CONCURRENCY` (default 64). The load generator shares the machine with the
//! receiver, so numbers are a lower bound of what a dedicated receiver does.

use std::sync::Arc;
use std::time::{Duration, Instant};

use syncback::config::Settings;
use syncback::queue::Queue;
use syncback::webhook::signature::decode_secret;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

struct Report {
    accepted: usize,
    rejected: usize,
    secs: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn spawn(settings: &Settings, queue: Arc<dyn Queue>) -> String {
    let state = syncback::http::AppState::new(settings, queue, None).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(syncback::http::serve(
        listener,
        syncback::http::router(state),
        std::future::pending(),
    ));
    format!("http://{addr}/webhooks/skillsync")
}

fn body(i: usize) -> (String, Vec<u8>) {
    let id = format!("evt_bench_{i:08}_{}", uuid::Uuid::new_v4().simple());
    let b = serde_json::json!({"id": id, "type": "learner.updated", "occurred_at": "2026-11-24T10:00:00.123Z",
        "data": {"learner": {"id": format!("{}", i % 5000), "username": format!("u{i}@acme.example"),
            "email": format!("u{i}@acme.example"), "first_name": "Ada", "last_name": "Lovelace",
            "department_id": "43", "department_name": "Sales", "status": "active",
            "fields": {"company": "Acme"}, "updated_at": "2026-11-24T10:00:00Z"}}});
    (id, serde_json::to_vec(&b).unwrap())
}

/// Post `n` webhooks with `concurrency` in flight; `rate` (per second) paces them.
async fn run(url: &str, n: usize, concurrency: usize, rate: Option<f64>) -> Report {
    let key = decode_secret(SECRET).unwrap();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    // Pre-build signed requests so the generator measures the receiver, not JSON encoding.
    let ts = chrono::Utc::now().timestamp();
    let reqs: Arc<Vec<(String, String, Vec<u8>)>> = Arc::new(
        (0..n)
            .map(|i| {
                let (id, b) = body(i);
                let sig = key.sign(&id, ts, &b);
                (id, sig, b)
            })
            .collect(),
    );
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (http, reqs, next, url) = (http.clone(), reqs.clone(), next.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut rejected = 0;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= reqs.len() {
                    break;
                }
                if let Some(rate) = rate {
                    let due = start + Duration::from_secs_f64(i as f64 / rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let (id, sig, b) = &reqs[i];
                let t = Instant::now();
                let resp = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header("webhook-id", id)
                    .header("webhook-timestamp", ts.to_string())
                    .header("webhook-signature", sig)
                    .body(b.clone())
                    .send()
                    .await;
                match resp {
                    Ok(r) if r.status() == 202 => lat.push(t.elapsed()),
                    _ => rejected += 1,
                }
            }
            (lat, rejected)
        }));
    }
    let mut lat = Vec::with_capacity(n);
    let mut rejected = 0;
    for t in tasks {
        let (l, r) = t.await.unwrap();
        lat.extend(l);
        rejected += r;
    }
    let secs = start.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(f64::NAN)
    };
    Report {
        accepted: lat.len(),
        rejected,
        secs,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
    }
}

fn print(name: &str, r: &Report) {
    println!(
        "{name:<34} {:>7} accepted {:>4} failed in {:>6.2}s = {:>8.0} webhooks/s   p50 {:>6.2} ms   p99 {:>6.2} ms",
        r.accepted,
        r.rejected,
        r.secs,
        r.accepted as f64 / r.secs,
        r.p50_ms,
        r.p99_ms
    );
}

fn settings(backend: &str, prefix: &str) -> Settings {
    Settings::from_toml(&format!(
        "[webhooks]\nsecrets = [\"{SECRET}\"]\n[queue]\nbackend = \"{backend}\"\nprefix = \"{prefix}\"\n"
    ))
    .unwrap()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` probes harness=false targets with --list
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let n = env_usize("INGEST_N", 20_000);
        let c = env_usize("INGEST_CONCURRENCY", 64);
        println!("ingest benchmark: {n} signed webhooks per run, {c} in flight, loopback");

        let mem = settings("memory", "bench");
        let url = spawn(&mem, Arc::new(syncback::queue::memory::MemoryQueue::new())).await;
        let _warm = run(&url, 1000, c, None).await;
        print("memory queue (baseline)", &run(&url, n, c, None).await);

        let prefix = format!(
            "bench.ingest.{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        );
        let rmq = settings("rabbitmq", &prefix);
        let queue = match syncback::queue::connect(&rmq.queue).await {
            Ok(q) => q,
            Err(e) => {
                println!("RabbitMQ runs skipped: {e}");
                return;
            }
        };
        let url = spawn(&rmq, queue.clone()).await;
        let _warm = run(&url, 1000, c, None).await;
        print(
            "rabbitmq + confirms, full speed",
            &run(&url, n, c, None).await,
        );
        let paced = (n / 2).max(2000);
        print(
            "rabbitmq + confirms, 2,000/s",
            &run(&url, paced, c, Some(2000.0)).await,
        );
        let depth = queue.depths().await.map(|d| d.main).unwrap_or(0);
        println!("messages on {prefix}.events: {depth} (all accepted webhooks, none lost)");
        syncback::testing::delete_rabbit_topology(&rmq.queue).await;
    });
}

//! The apply path under load (issue 10): burst, trickle and backfill against the Salesforce
//! sandbox answering each REST call after a fixed latency (50 ms by default, like a real
//! org), the SkillSync sandbox, the in-memory queue and a SQLite store — one `work`-equivalent
//! worker built from configuration exactly as `syncback work` builds it.
//!
//! - **burst**: `--events` events queued before the worker starts (half `learner.created` for
//!   new learners under rule `department` across 20 departments, then one `enrollment.created`
//!   each). Salesforce calls per event and drain time. Baseline in the same run: the
//!   per-event path (`worker.batch_max = 1`) on `--baseline-events` of the same kind (a
//!   subset, as the full burst one event at a time takes minutes at 50 ms a call); its drain
//!   time for the full burst is extrapolated linearly from its rate, and printed as such.
//! - **trickle**: one signed webhook at a time, posted to the receiver over HTTP, on an idle
//!   queue, the sandbox answering at once: calls per new learner, calls per update of a
//!   linked learner, and webhook → Contact latency (p50, p95).
//! - **backfill**: `--learners` learners synced by `backfill` (bulk priority). Baseline in the
//!   same run: the same learners' `learner.created` one at a time (`batch_max = 1`) on
//!   `--baseline-events` of them, extrapolated.
//!
//! `cargo bench --bench apply -- [burst] [trickle] [backfill] [--events N]
//!  [--baseline-events N] [--learners N] [--latency-ms N] [--trickle N]`
//! (no scenario named = all three).

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Value};
use syncback::config::Settings;
use syncback::model::{Learner, LearnerStatus};
use syncback::queue::memory::MemoryQueue;
use syncback::queue::{Message, Queue};
use syncback::salesforce::Record;
use syncback::sandbox::salesforce::Org;
use syncback::sandbox::skillsync::Lms;
use syncback::store::Store;
use syncback::worker::Worker;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const DEPARTMENTS: usize = 20;

struct Args {
    scenarios: Vec<String>,
    events: usize,
    baseline_events: usize,
    learners: usize,
    latency_ms: u64,
    trickle: usize,
}

fn args() -> Args {
    let mut a = Args {
        scenarios: Vec::new(),
        events: 10_000,
        baseline_events: 1_000,
        learners: 10_000,
        latency_ms: 50,
        trickle: 100,
    };
    let v: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < v.len() {
        let next = || v.get(i + 1).and_then(|s| s.parse().ok());
        match v[i].as_str() {
            "--events" => a.events = next().expect("--events N") as usize,
            "--baseline-events" => {
                a.baseline_events = next().expect("--baseline-events N") as usize
            }
            "--learners" => a.learners = next().expect("--learners N") as usize,
            "--latency-ms" => a.latency_ms = next().expect("--latency-ms N"),
            "--trickle" => a.trickle = next().expect("--trickle N") as usize,
            s @ ("burst" | "trickle" | "backfill") => {
                a.scenarios.push(s.to_string());
                i += 1;
                continue;
            }
            _ => {
                i += 1; // cargo's own `--bench`
                continue;
            }
        }
        i += 2;
    }
    if a.scenarios.is_empty() {
        a.scenarios = vec!["burst".into(), "trickle".into(), "backfill".into()];
    }
    a
}

fn dept(i: usize) -> (String, String) {
    let d = i % DEPARTMENTS;
    (format!("d{d:02}"), format!("Dept {d:02}"))
}

fn learner(tag: &str, i: usize, last: &str) -> Learner {
    let (id, name) = dept(i);
    Learner {
        id: format!("{tag}{i:06}"),
        username: format!("{tag}{i}@bench.example").to_lowercase(),
        email: Some(format!("{tag}{i}@bench.example").to_lowercase()),
        first_name: Some("Bench".into()),
        last_name: Some(last.into()),
        department_id: Some(id),
        department_name: Some(name),
        status: LearnerStatus::Active,
        fields: Default::default(),
        updated_at: Utc::now(),
    }
}

fn envelope(id: &str, ty: &str, data: Value) -> Value {
    json!({"id": id, "type": ty, "occurred_at": Utc::now().to_rfc3339(), "data": data})
}

fn enrollment(l: &Learner) -> Value {
    let now = Utc::now().to_rfc3339();
    json!({"enrollment": {"id": format!("EN-{}", l.id), "learner_id": l.id, "course_id": "C1",
        "course_name": "Company-wide compliance", "status": "enrolled", "enrolled_at": now,
        "completed_at": null, "score": null, "updated_at": now}})
}

/// The sandboxes over loopback HTTP: 20 departments under source department 42, an
/// Account per department (rule `department`), and configuration pointing at them.
struct World {
    org: Org,
    lms: Lms,
    settings: Settings,
    _dir: tempfile::TempDir,
}

async fn world(latency: Duration, batch_max: Option<usize>) -> World {
    let org = Org::new();
    // A daily allowance large enough that the budget governor never engages here.
    org.set_api_limit(100_000_000);
    let lms = Lms::new();
    lms.add_department("42", "Company", None);
    for d in 0..DEPARTMENTS {
        let (id, name) = dept(d);
        lms.add_department(&id, &name, Some("42"));
        let mut a = Record::new();
        a.insert("Name".into(), json!(name));
        org.insert("Account", a).unwrap();
    }
    let any = "127.0.0.1:0".parse().unwrap();
    let (sf, _) = org.serve(any).await.unwrap();
    let (ss, _) = lms.serve(any).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("bench.db").display());
    let mut settings = Settings::from_toml(&format!(
        r#"
[webhooks]
secrets = ["{SECRET}"]
[queue]
backend = "memory"
[store]
url = "{store}"
[salesforce]
login_url = "http://{sf}"
client_id = "sandbox-client"
client_secret = "sandbox-secret"
[skillsync]
base_url = "http://{ss}"
client_id = "sandbox-client"
client_secret = "sandbox-secret"
[sync]
enabled = true
source_department_id = "42"
scope = "with_subdepartments"
account_rule = "department"
"#
    ))
    .unwrap();
    set_batch_max(&mut settings, batch_max);
    org.set_latency(latency);
    World {
        org,
        lms,
        settings,
        _dir: dir,
    }
}

/// `worker.batch_max` (`None`: the default).
fn set_batch_max(settings: &mut Settings, batch_max: Option<usize>) {
    if let Some(n) = batch_max {
        settings.worker.batch_max = n;
    }
}

async fn open_store(s: &Settings) -> Arc<dyn Store> {
    syncback::store::open(s.store.url.expose(), 10)
        .await
        .unwrap()
}

struct Running {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// One `work`-equivalent worker on `queue`, built from configuration.
async fn start_worker(s: &Settings, store: Arc<dyn Store>, queue: Arc<dyn Queue>) -> Running {
    let engine = syncback::worker::engine_from_settings(s, store)
        .await
        .unwrap();
    let worker = Arc::new(Worker::new(engine, queue, s.worker.clone()));
    let (stop, rx) = tokio::sync::watch::channel(false);
    Running {
        stop,
        task: tokio::spawn(worker.run(rx)),
    }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn count(org: &Org, sobject: &str) -> usize {
    org.records(sobject).len()
}

/// Queue `n` events (n/2 new learners, then one enrollment each, tag `tag`) before the
/// worker starts; drain them. Returns (seconds, Salesforce calls).
async fn drain(tag: &str, n: usize, latency: Duration, batch_max: Option<usize>) -> (f64, u64) {
    let w = world(latency, batch_max).await;
    let store = open_store(&w.settings).await;
    let queue: Arc<dyn Queue> = Arc::new(MemoryQueue::new());
    let learners: Vec<Learner> = (0..n / 2).map(|i| learner(tag, i, "Burst")).collect();
    let mut events = Vec::with_capacity(n);
    for l in &learners {
        w.lms.upsert_learner(l.clone());
        events.push(envelope(
            &format!("{tag}-c-{}", l.id),
            "learner.created",
            json!({"learner": l}),
        ));
    }
    for l in &learners {
        events.push(envelope(
            &format!("{tag}-e-{}", l.id),
            "enrollment.created",
            enrollment(l),
        ));
    }
    for e in events {
        queue
            .publish(&Message {
                webhook_id: e["id"].as_str().unwrap().to_string(),
                received_at: Utc::now(),
                envelope: e,
            })
            .await
            .unwrap();
    }
    let calls_before = w.org.total_requests();
    let started = Instant::now();
    let worker = start_worker(&w.settings, store.clone(), queue.clone()).await;
    let want = learners.len();
    let deadline = Instant::now() + Duration::from_secs(3600);
    while count(&w.org, "SkillSync_Enrollment__c") < want || count(&w.org, "Contact") < want {
        assert!(Instant::now() < deadline, "burst did not drain");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Salesforce holds the end state; wait for the last outcomes to be committed.
    let last = learners.last().unwrap();
    while store.history(&last.id, 10).await.unwrap().len() < 2 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let calls = w.org.total_requests() - calls_before;
    worker.stop().await;
    // Every event settled once, applied (not retried, failed or dead-lettered).
    let mut applied = 0;
    for l in &learners {
        applied += store
            .history(&l.id, 10)
            .await
            .unwrap()
            .iter()
            .filter(|r| r.class.as_str() == "applied")
            .count();
    }
    assert_eq!(applied, n / 2 * 2, "every event applied once");
    (secs, calls)
}

async fn burst(a: &Args) {
    let latency = Duration::from_millis(a.latency_ms);
    println!(
        "\n## burst — {} events queued ({} new learners across {DEPARTMENTS} departments, then one enrollment each), Salesforce latency {} ms",
        a.events,
        a.events / 2,
        a.latency_ms
    );
    let base_n = a.baseline_events.min(a.events);
    let (bs, bc) = drain("P", base_n, latency, Some(1)).await;
    let b_rate = base_n as f64 / bs;
    let (s, c) = drain("B", a.events, latency, None).await;
    let rate = a.events as f64 / s;
    let b_full = a.events as f64 / b_rate;
    println!(
        "{:<44} {:>10} {:>12} {:>12} {:>14}",
        "", "events", "SF calls", "calls/event", "drain"
    );
    println!(
        "{:<44} {:>10} {:>12} {:>12.4} {:>11.1} s  ({rate:.0} events/s)",
        "batched (worker.batch_max default)",
        a.events,
        c,
        c as f64 / a.events as f64,
        s
    );
    println!(
        "{:<44} {:>10} {:>12} {:>12.4} {:>11.1} s  ({b_rate:.0} events/s)",
        "baseline: per-event path (batch_max = 1)",
        base_n,
        bc,
        bc as f64 / base_n as f64,
        bs
    );
    if base_n < a.events {
        println!(
            "{:<44} {:>10} {:>12} {:>12} {:>11.1} s  (extrapolated from the rate above)",
            "baseline extrapolated to the full burst", a.events, "", "", b_full
        );
    }
    println!(
        "drain speed-up: {:.1}× (target ≥ 10×); calls per event {:.4} (target ≤ 0.05)",
        b_full / s,
        c as f64 / a.events as f64
    );
}

/// Post one signed webhook to the receiver.
async fn post(http: &reqwest::Client, url: &str, env: &Value) {
    let id = env["id"].as_str().unwrap();
    let body = serde_json::to_vec(env).unwrap();
    let ts = Utc::now().timestamp();
    let sig = syncback::webhook::signature::decode_secret(SECRET)
        .unwrap()
        .sign(id, ts, &body);
    let status = http
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(body)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 202);
}

fn contact_of(org: &Org, learner: &str) -> Option<Record> {
    org.records("Contact")
        .into_iter()
        .find(|c| c.get("SkillSync_User_Id__c").and_then(Value::as_str) == Some(learner))
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn trickle(a: &Args) {
    println!(
        "\n## trickle — {} webhooks, one at a time on an idle queue, receiver → memory queue → worker, Salesforce answering at once",
        a.trickle * 2
    );
    let w = world(Duration::ZERO, None).await;
    let store = open_store(&w.settings).await;
    let queue: Arc<dyn Queue> = Arc::new(MemoryQueue::new());
    let worker = start_worker(&w.settings, store.clone(), queue.clone()).await;
    let state =
        syncback::http::AppState::new(&w.settings, queue.clone(), Some(store.clone())).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/webhooks/skillsync",
        listener.local_addr().unwrap()
    );
    let (stop_http, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(syncback::http::serve(
        listener,
        syncback::http::router(state),
        async move {
            let _ = stop_rx.wait_for(|v| *v).await;
        },
    ));
    let http = reqwest::Client::new();
    // Warm-up: token, department tree, every department's Account in the cache, HTTP
    // connections — the steady state a running worker is in.
    for d in 0..DEPARTMENTS {
        let warm = learner("W", d, "Warm");
        w.lms.upsert_learner(warm.clone());
        post(
            &http,
            &url,
            &envelope(
                &format!("warm-{d}"),
                "learner.created",
                json!({"learner": warm}),
            ),
        )
        .await;
        while store.history(&warm.id, 10).await.unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    let mut results = Vec::new();
    for (kind, ty) in [
        ("new learner", "learner.created"),
        ("update of a linked learner", "learner.updated"),
    ] {
        let mut lat = Vec::new();
        let mut calls = 0;
        for i in 0..a.trickle {
            let last = if ty == "learner.created" {
                "New"
            } else {
                "Updated"
            };
            let l = learner("T", i, last);
            w.lms.upsert_learner(l.clone());
            let id = format!("t-{ty}-{i}");
            let before = w.org.total_requests();
            let t = Instant::now();
            post(&http, &url, &envelope(&id, ty, json!({"learner": l}))).await;
            // Webhook → Contact: the Contact carries the event's data.
            loop {
                if contact_of(&w.org, &l.id)
                    .is_some_and(|c| c.get("LastName").and_then(Value::as_str) == Some(last))
                {
                    break;
                }
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
            while !store
                .history(&l.id, 10)
                .await
                .unwrap()
                .iter()
                .any(|r| r.event_id == id)
            {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            calls += w.org.total_requests() - before;
        }
        let p50 = percentile(&mut lat, 0.5);
        let p95 = percentile(&mut lat, 0.95);
        results.push((kind, calls as f64 / a.trickle as f64, p50, p95));
    }
    println!(
        "{:<30} {:>12} {:>20} {:>20}",
        "", "calls/event", "webhook→Contact p50", "p95"
    );
    for (kind, cpe, p50, p95) in &results {
        println!("{kind:<30} {cpe:>12.2} {p50:>17.1} ms {p95:>17.1} ms");
    }
    println!(
        "targets: ≤ 2 calls per new learner, ≤ 1 per update of a linked learner, p50 < 100 ms"
    );
    let _ = stop_http.send(true);
    worker.stop().await;
}

async fn backfill(a: &Args) {
    let latency = Duration::from_millis(a.latency_ms);
    println!(
        "\n## backfill — {} learners across {DEPARTMENTS} departments, Salesforce latency {} ms",
        a.learners, a.latency_ms
    );
    let w = world(latency, None).await;
    for i in 0..a.learners {
        let l = learner("F", i, "Backfill");
        if i % 10 == 0 {
            // 10 % already have a Contact (linked and moved).
            let mut c = Record::new();
            c.insert("LastName".into(), json!("Existing"));
            c.insert("Email".into(), json!(l.username));
            w.org.insert("Contact", c).unwrap();
        }
        w.lms.upsert_learner(l);
    }
    let store = open_store(&w.settings).await;
    let before = w.org.total_requests();
    let t = Instant::now();
    let summary =
        syncback::sync::backfill::run_from_settings(&w.settings, store.clone(), false, false, None)
            .await
            .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let calls = w.org.total_requests() - before;
    assert_eq!(summary.seen, a.learners as u64, "{summary}");
    assert_eq!(summary.failed(), 0, "{summary}");
    // Baseline: the same kind of learners one event at a time (subset, extrapolated).
    let base_n = a.baseline_events.min(a.learners);
    let (bs, bc) = drain_created(base_n, latency).await;
    println!(
        "{:<44} {:>10} {:>12} {:>14} {:>10}",
        "", "learners", "SF calls", "calls/learner", "time"
    );
    println!(
        "{:<44} {:>10} {:>12} {:>14.4} {:>8.1} s",
        "backfill",
        a.learners,
        calls,
        calls as f64 / a.learners as f64,
        secs
    );
    println!(
        "{:<44} {:>10} {:>12} {:>14.4} {:>8.1} s  (extrapolated: {:.1} s for {})",
        "baseline: learner.created one at a time",
        base_n,
        bc,
        bc as f64 / base_n as f64,
        bs,
        bs * a.learners as f64 / base_n as f64,
        a.learners
    );
    println!("target: no worse than 0.0127 calls per learner");
}

/// `n` `learner.created` through the per-event worker path; (seconds, calls).
async fn drain_created(n: usize, latency: Duration) -> (f64, u64) {
    let w = world(latency, Some(1)).await;
    let store = open_store(&w.settings).await;
    let queue: Arc<dyn Queue> = Arc::new(MemoryQueue::new());
    for i in 0..n {
        let l = learner("Q", i, "PerEvent");
        w.lms.upsert_learner(l.clone());
        let e = envelope(&format!("q-{i}"), "learner.created", json!({"learner": l}));
        queue
            .publish(&Message {
                webhook_id: format!("q-{i}"),
                received_at: Utc::now(),
                envelope: e,
            })
            .await
            .unwrap();
    }
    let before = w.org.total_requests();
    let t = Instant::now();
    let worker = start_worker(&w.settings, store.clone(), queue).await;
    while count(&w.org, "Contact") < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let secs = t.elapsed().as_secs_f64();
    let calls = w.org.total_requests() - before;
    worker.stop().await;
    (secs, calls)
}

#[tokio::main]
async fn main() {
    let a = args();
    println!(
        "syncback apply benchmark — one worker (worker.concurrency default), SQLite, sandboxes over loopback HTTP"
    );
    for s in a.scenarios.clone() {
        match s.as_str() {
            "burst" => burst(&a).await,
            "trickle" => trickle(&a).await,
            "backfill" => backfill(&a).await,
            _ => unreachable!(),
        }
    }
}

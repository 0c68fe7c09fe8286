//! Sync benchmark: Salesforce calls per event for each event type (steady state, warm
//! caches) and events/s through one worker, against the Salesforce and SkillSync sandboxes
//! served over loopback HTTP (real clients, real wire format), SQLite or PostgreSQL store.
//!
//! Baseline in the same run: the same measurements with the Account cache disabled
//! (TTL 0), i.e. what every event costs without the caching.
//!
//! cargo bench --bench sync -- [--events N] [--learners N] [--concurrency N] [--postgres]
//! (`--postgres`: a fresh database per run on the local PostgreSQL instead of SQLite)

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Value};
use syncback::config::{Scope, Settings};
use syncback::model::Envelope;
use syncback::queue::memory::MemoryQueue;
use syncback::queue::{Message, Queue};
use syncback::salesforce::{Client as SfClient, Record};
use syncback::sandbox::salesforce::Org;
use syncback::sandbox::skillsync::Lms;
use syncback::skillsync::scope::ScopeResolver;
use syncback::store::Store;
use syncback::sync::Engine;
use syncback::worker::Worker;

struct Args {
    events: usize,
    learners: usize,
    concurrency: usize,
    postgres: bool,
}

fn args() -> Args {
    let mut a = Args {
        events: 4000,
        learners: 400,
        concurrency: 8,
        postgres: false,
    };
    let v: Vec<String> = std::env::args().collect();
    let mut i = 1;
    while i < v.len() {
        let next = v.get(i + 1).cloned().unwrap_or_default();
        match v[i].as_str() {
            "--events" => a.events = next.parse().expect("--events N"),
            "--learners" => a.learners = next.parse().expect("--learners N"),
            "--concurrency" => a.concurrency = next.parse().expect("--concurrency N"),
            "--postgres" => {
                a.postgres = true;
                i += 1;
                continue;
            }
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    a
}

fn learner(
    i: usize,
    last: &str,
    dept: (&str, &str),
    status: &str,
    at: chrono::DateTime<Utc>,
) -> Value {
    json!({"id": format!("B{i}"), "username": format!("b{i}@bench.example"), "email": format!("b{i}@bench.example"),
        "first_name": "Bench", "last_name": last, "department_id": dept.0, "department_name": dept.1,
        "status": status, "fields": {}, "updated_at": at.to_rfc3339()})
}

fn env(id: String, ty: &str, at: chrono::DateTime<Utc>, data: Value) -> Envelope {
    serde_json::from_value(
        json!({"id": id, "type": ty, "occurred_at": at.to_rfc3339(), "data": data}),
    )
    .unwrap()
}

struct Rig {
    org: Org,
    sf: SfClient,
    engine: Arc<Engine>,
    store: Arc<dyn Store>,
}

async fn rig(cache_ttl: Duration, store_url: &str) -> Rig {
    let org = Org::new();
    for name in ["Engineering", "Sales"] {
        let mut r = Record::new();
        r.insert("Name".into(), json!(name));
        org.insert("Account", r).unwrap();
    }
    let lms = Lms::new();
    lms.add_department("42", "Engineering", None);
    lms.add_department("43", "Sales", Some("42"));
    let any = "127.0.0.1:0".parse().unwrap();
    let (sf_addr, _) = org.serve(any).await.unwrap();
    let (ss_addr, _) = lms.serve(any).await.unwrap();
    let s = Settings::from_toml(&format!(
        r#"
[salesforce]
login_url = "http://{sf_addr}"
client_id = "sandbox-client"
client_secret = "sandbox-secret"
[skillsync]
base_url = "http://{ss_addr}"
client_id = "sandbox-client"
client_secret = "sandbox-secret"
[sync]
enabled = true
source_department_id = "42"
account_rule = "department"
"#
    ))
    .unwrap();
    let store = syncback::store::open(store_url, 10).await.unwrap();
    let sf = SfClient::new(&s.salesforce).unwrap();
    let ss = Arc::new(syncback::skillsync::Client::new(&s.skillsync).unwrap());
    let scope = Arc::new(ScopeResolver::new(
        ss.clone(),
        "42",
        Scope::WithSubdepartments,
        Duration::from_secs(300),
    ));
    let engine = Arc::new(Engine::new(
        syncback::sync::SettingsHandle::fixed(s.sync.clone()),
        Arc::new(sf.clone()),
        ss,
        scope,
        store.clone(),
        cache_ttl,
        Duration::from_secs(60),
    ));
    Rig {
        org,
        sf,
        engine,
        store,
    }
}

/// Apply `events` one by one and return Salesforce calls per event.
async fn calls_per_event(r: &Rig, events: Vec<Envelope>) -> f64 {
    let n = events.len();
    let before = r.sf.total_calls();
    for e in events {
        let o = r
            .engine
            .handle(&e)
            .await
            .expect("no transient errors in the bench");
        assert_ne!(o.class, syncback::store::OutcomeClass::Failed, "{o:?}");
    }
    (r.sf.total_calls() - before) as f64 / n as f64
}

async fn per_type(
    cache_ttl: Duration,
    store_url: &str,
    learners: usize,
) -> Vec<(&'static str, f64)> {
    let r = rig(cache_ttl, store_url).await;
    let t0 = Utc::now() - chrono::Duration::hours(1);
    let at = |k: i64| t0 + chrono::Duration::seconds(k);
    let eng = ("42", "Engineering");
    let sales = ("43", "Sales");
    let mut out = Vec::new();
    // Warm-up (token, department tree, Account cache) on a learner outside the measured set.
    let warm = env(
        "warm".into(),
        "learner.created",
        at(0),
        json!({"learner": learner(999_999, "W", eng, "active", at(0))}),
    );
    r.engine.handle(&warm).await.unwrap();
    // Pre-existing Contacts for half of the learners to measure the "match" path.
    for i in (0..learners).step_by(2) {
        let mut c = Record::new();
        c.insert("LastName".into(), json!("Existing"));
        c.insert("Email".into(), json!(format!("b{i}@bench.example")));
        r.org.insert("Contact", c).unwrap();
    }
    let ev = |k: i64,
              ty: &str,
              data: &dyn Fn(usize) -> Value,
              filter: &dyn Fn(usize) -> bool|
     -> Vec<Envelope> {
        (0..learners)
            .filter(|i| filter(*i))
            .map(|i| env(format!("e{k}_{i}"), ty, at(k), data(i)))
            .collect()
    };
    let all = |_: usize| true;
    out.push((
        "learner.created (no match: create)",
        calls_per_event(
            &r,
            ev(
                1,
                "learner.created",
                &|i| json!({"learner": learner(i, "A", eng, "active", at(1))}),
                &|i| i % 2 == 1,
            ),
        )
        .await,
    ));
    out.push((
        "learner.created (match: link)",
        calls_per_event(
            &r,
            ev(
                1,
                "learner.created",
                &|i| json!({"learner": learner(i, "A", eng, "active", at(1))}),
                &|i| i % 2 == 0,
            ),
        )
        .await,
    ));
    out.push((
        "learner.updated (steady state)",
        calls_per_event(
            &r,
            ev(
                2,
                "learner.updated",
                &|i| json!({"learner": learner(i, "B", eng, "active", at(2))}),
                &all,
            ),
        )
        .await,
    ));
    out.push((
        "learner.updated (move Account)",
        calls_per_event(
            &r,
            ev(
                3,
                "learner.updated",
                &|i| json!({"learner": learner(i, "C", sales, "active", at(3))}),
                &all,
            ),
        )
        .await,
    ));
    let enr = |status: &str, k: i64| {
        let status = status.to_string();
        move |i: usize| {
            json!({"enrollment": {"id": format!("EN{i}"), "learner_id": format!("B{i}"), "course_id": "C1", "course_name": "Basics",
            "status": status, "enrolled_at": at(0).to_rfc3339(), "completed_at": null, "score": null, "updated_at": at(k).to_rfc3339()}})
        }
    };
    out.push((
        "enrollment.created",
        calls_per_event(&r, ev(4, "enrollment.created", &enr("enrolled", 4), &all)).await,
    ));
    out.push((
        "enrollment.completed",
        calls_per_event(
            &r,
            ev(5, "enrollment.completed", &enr("completed", 5), &all),
        )
        .await,
    ));
    out.push(("certification.issued", calls_per_event(&r, ev(6, "certification.issued", &|i| json!({"certification": {"id": format!("CE{i}"), "learner_id": format!("B{i}"), "name": "Cert",
        "issued_at": at(6).to_rfc3339(), "expires_at": null, "status": "active", "updated_at": at(6).to_rfc3339()}}), &all)).await));
    out.push((
        "enrollment.deleted",
        calls_per_event(&r, ev(7, "enrollment.deleted", &enr("cancelled", 7), &all)).await,
    ));
    out.push((
        "learner.deactivated",
        calls_per_event(
            &r,
            ev(
                8,
                "learner.deactivated",
                &|i| json!({"learner": learner(i, "C", sales, "inactive", at(8))}),
                &all,
            ),
        )
        .await,
    ));
    out.push((
        "learner.reactivated (+ re-sync children)",
        calls_per_event(
            &r,
            ev(
                9,
                "learner.reactivated",
                &|i| json!({"learner": learner(i, "C", sales, "active", at(9))}),
                &all,
            ),
        )
        .await,
    ));
    out.push((
        "duplicate / stale (skipped)",
        calls_per_event(
            &r,
            ev(
                9,
                "learner.reactivated",
                &|i| json!({"learner": learner(i, "C", sales, "active", at(9))}),
                &all,
            ),
        )
        .await,
    ));
    out
}

async fn throughput(
    store_url: &str,
    learners: usize,
    events: usize,
    concurrency: usize,
) -> (f64, f64, u64) {
    let r = rig(Duration::from_secs(300), store_url).await;
    let queue = Arc::new(MemoryQueue::new());
    let q: Arc<dyn Queue> = queue.clone();
    let t0 = Utc::now() - chrono::Duration::hours(1);
    // Create the learners first (not timed), then time `events` updates.
    for i in 0..learners {
        let at = t0;
        let e = env(
            format!("c{i}"),
            "learner.created",
            at,
            json!({"learner": learner(i, "A", ("42", "Engineering"), "active", at)}),
        );
        r.engine.handle(&e).await.unwrap();
    }
    for k in 0..events {
        let i = k % learners;
        let at = t0 + chrono::Duration::milliseconds(k as i64 + 1);
        let body = json!({"id": format!("u{k}"), "type": "learner.updated", "occurred_at": at.to_rfc3339(),
            "data": {"learner": learner(i, &format!("L{k}"), ("42", "Engineering"), "active", at)}});
        q.publish(&Message {
            webhook_id: format!("u{k}"),
            received_at: Utc::now(),
            envelope: body,
        })
        .await
        .unwrap();
    }
    let calls_before = r.sf.total_calls();
    let settings = syncback::config::WorkerSettings {
        concurrency,
        ..Default::default()
    };
    let worker = Arc::new(Worker::new(r.engine.clone(), q.clone(), settings));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let task = tokio::spawn(worker.run(rx));
    loop {
        let d = q.depths().await.unwrap();
        if d.main == 0 {
            // Depth 0 = all delivered; wait until every event has an outcome.
            let mut done = 0;
            for i in 0..learners.min(events) {
                done += r.store.history(&format!("B{i}"), 1000).await.unwrap().len();
            }
            if done >= events + learners.min(events) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = tx.send(true);
    let _ = task.await;
    (
        events as f64 / secs,
        secs,
        r.sf.total_calls() - calls_before,
    )
}

#[tokio::main]
async fn main() {
    let a = args();
    let dir = tempfile::tempdir().unwrap();
    let pg = a.postgres;
    let store_url = |name: &str| {
        let sqlite = format!("sqlite://{}", dir.path().join(name).display());
        async move {
            if pg {
                syncback::testing::fresh_postgres_db()
                    .await
                    .expect("PostgreSQL on 127.0.0.1:5432")
            } else {
                sqlite
            }
        }
    };
    println!(
        "syncback sync benchmark — {} learners, store {}",
        a.learners,
        if a.postgres { "PostgreSQL" } else { "SQLite" }
    );
    let cached = per_type(
        Duration::from_secs(300),
        &store_url("a.db").await,
        a.learners,
    )
    .await;
    let uncached = per_type(Duration::ZERO, &store_url("b.db").await, a.learners).await;
    println!("\nSalesforce calls per event (warm token and department tree)");
    println!(
        "{:<44} {:>12} {:>22}",
        "event type", "syncback", "baseline: no Account cache"
    );
    for ((name, c), (_, u)) in cached.iter().zip(&uncached) {
        println!("{name:<44} {c:>12.2} {u:>22.2}");
    }
    for conc in [1, a.concurrency] {
        let (eps, secs, calls) = throughput(
            &store_url(&format!("t{conc}.db")).await,
            a.learners,
            a.events,
            conc,
        )
        .await;
        println!(
            "\nthroughput, one worker, concurrency {conc}: {} learner.updated events in {secs:.2} s = {eps:.0} events/s ({:.2} Salesforce calls/event)",
            a.events,
            calls as f64 / a.events as f64
        );
    }
}

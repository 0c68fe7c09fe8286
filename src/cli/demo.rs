//! `syncback demo` (README "Two commands"): the whole flow in one process with no outside services —
//! in-memory queue, SQLite store, the Salesforce and SkillSync sandboxes served over
//! loopback HTTP (so the real clients and wire formats are used), the real receiver and
//! workers — sending signed sample events that walk through every rule and printing the
//! resulting Contacts and outcomes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::Args;
use serde_json::{json, Value};

use crate::config::{QueueBackend, Settings};
use crate::model::{Learner, LearnerStatus};
use crate::queue::{memory::MemoryQueue, Queue};
use crate::salesforce::Record;
use crate::sandbox::salesforce::Org;
use crate::sandbox::skillsync::Lms;
use crate::store::{EventRecord, Store};
use crate::webhook::signature::decode_secret;
use crate::worker::Worker;

pub const DEMO_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Keep the receiver and sandboxes running after the walkthrough (Ctrl-C to stop).
    #[arg(long)]
    pub keep_running: bool,
    /// Where the receiver listens (port 0 = any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Log level of the demo's own logs.
    #[arg(long, default_value = "warn")]
    pub log_level: String,
    /// SQLite file for the demo's state (default: a temporary directory).
    #[arg(long)]
    pub db: Option<std::path::PathBuf>,
}

/// What the demo produced (also used by tests).
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// Event id → (learner id, event type, outcome class, code, detail), in sending order.
    pub outcomes: Vec<(String, EventRecord)>,
    pub contacts: Vec<Record>,
    pub accounts: BTreeMap<String, String>,
    pub dead_letters: Vec<crate::queue::DeadLetter>,
}

fn learner(
    id: &str,
    user: &str,
    first: &str,
    last: &str,
    dept: (&str, &str),
    status: LearnerStatus,
    at: DateTime<Utc>,
) -> Learner {
    Learner {
        id: id.into(),
        username: user.into(),
        email: Some(user.into()),
        first_name: Some(first.into()),
        last_name: Some(last.into()),
        department_id: Some(dept.0.into()),
        department_name: Some(dept.1.into()),
        status,
        fields: BTreeMap::new(),
        updated_at: at,
    }
}

/// The scripted walkthrough: (label, envelope).
fn script(base: DateTime<Utc>) -> Vec<(&'static str, Value)> {
    let t = |s: i64| base + chrono::Duration::seconds(s);
    let eng = ("42", "Engineering");
    let sales = ("43", "Sales");
    let ada = |s: LearnerStatus, d: (&str, &str), at| {
        learner("L1", "ada@acme.example", "Ada", "Lovelace", d, s, at)
    };
    let env = |id: &str, ty: &str, at: DateTime<Utc>, data: Value| json!({"id": id, "type": ty, "occurred_at": crate::sync::rules::sf_datetime(at), "data": data});
    let enrollment = |id: &str, status: &str, at: DateTime<Utc>| {
        json!({"enrollment": {"id": id, "learner_id": "L1", "course_id": "C-101", "course_name": "Salesforce Basics",
            "status": status, "enrolled_at": "2026-11-01T09:00:00Z",
            "completed_at": if status == "completed" { json!("2026-11-20T09:00:00Z") } else { Value::Null },
            "score": if status == "completed" { json!(92.5) } else { Value::Null }, "updated_at": crate::sync::rules::sf_datetime(at)}})
    };
    vec![
        ("R5 no Contact matches → create under the department's Account (R4 B)",
            env("evt_demo_01", "learner.created", t(1), json!({"learner": ada(LearnerStatus::Active, eng, t(1))}))),
        ("R5 username matches one existing Contact → link it; R7 it moves to Sales",
            env("evt_demo_02", "learner.created", t(2), json!({"learner": learner("L2", "grace@acme.example", "Grace", "Hopper", sales, LearnerStatus::Active, t(2))}))),
        ("R5 username matches two Contacts → contact_ambiguous (dead-lettered, nothing written)",
            env("evt_demo_03", "learner.created", t(3), json!({"learner": learner("L3", "dup@acme.example", "Dup", "Licate", eng, LearnerStatus::Active, t(3))}))),
        ("R3 department outside the source tree → skipped",
            env("evt_demo_04", "learner.created", t(4), json!({"learner": learner("L4", "out@acme.example", "Otto", "Side", ("99", "Outside"), LearnerStatus::Active, t(4))}))),
        ("R4 no Account named like the department → account_not_found (dead-lettered; Accounts are never created)",
            env("evt_demo_05", "learner.created", t(5), json!({"learner": learner("L5", "rita@acme.example", "Rita", "Search", ("44", "Research"), LearnerStatus::Active, t(5))}))),
        ("R11 enrollment of a linked learner → SkillSync_Enrollment__c upserted",
            env("evt_demo_06", "enrollment.created", t(6), enrollment("E1", "enrolled", t(6)))),
        ("R11 certification → SkillSync_Certification__c upserted",
            env("evt_demo_07", "certification.issued", t(7), json!({"certification": {"id": "CERT1", "learner_id": "L1", "name": "Admin Certified", "issued_at": "2026-11-21T00:00:00Z", "expires_at": "2028-11-21T00:00:00Z", "status": "active", "updated_at": crate::sync::rules::sf_datetime(t(7))}}))),
        ("R7 learner moves to Sales → Contact moved to the Sales Account",
            env("evt_demo_08", "learner.updated", t(8), json!({"learner": ada(LearnerStatus::Active, sales, t(8))}))),
        ("R12 the same event delivered again → skipped as duplicate",
            env("evt_demo_08", "learner.updated", t(8), json!({"learner": ada(LearnerStatus::Active, sales, t(8))}))),
        ("R12 an older update arriving late → skipped as stale",
            env("evt_demo_00", "learner.updated", t(0), json!({"learner": ada(LearnerStatus::Active, eng, t(0))}))),
        ("R9 deactivation → Contact stays, link removed",
            env("evt_demo_09", "learner.deactivated", t(9), json!({"learner": ada(LearnerStatus::Inactive, sales, t(9))}))),
        ("R11 enrollment of an unlinked learner → skipped",
            env("evt_demo_10", "enrollment.completed", t(10), enrollment("E1", "completed", t(10)))),
        ("R10 reactivation → re-linked to the same Contact, enrollments re-synced from SkillSync",
            env("evt_demo_11", "learner.reactivated", t(11), json!({"learner": ada(LearnerStatus::Active, sales, t(11))}))),
        ("R11 enrollment.deleted → record deleted",
            env("evt_demo_12", "enrollment.deleted", t(12), enrollment("E1", "cancelled", t(12)))),
    ]
}

/// Seed the sandboxes with the world the script expects.
fn seed(org: &Org, lms: &Lms) -> anyhow::Result<BTreeMap<String, String>> {
    let mut accounts = BTreeMap::new();
    for name in ["Engineering", "Sales", "Prospects"] {
        let mut r = Record::new();
        r.insert("Name".into(), json!(name));
        accounts.insert(
            org.insert("Account", r)
                .map_err(|e| anyhow::anyhow!("{e}"))?,
            name.to_string(),
        );
    }
    let prospects = accounts
        .iter()
        .find(|(_, n)| *n == "Prospects")
        .map(|(id, _)| id.clone())
        .unwrap();
    for (first, last, email) in [
        ("Grace", "Hopper", "grace@acme.example"),
        ("Dup", "One", "dup@acme.example"),
        ("Dup", "Two", "DUP@acme.example"),
    ] {
        let mut r = Record::new();
        r.insert("FirstName".into(), json!(first));
        r.insert("LastName".into(), json!(last));
        r.insert("Email".into(), json!(email));
        r.insert("AccountId".into(), json!(prospects));
        org.insert("Contact", r)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    lms.add_department("42", "Engineering", None);
    lms.add_department("43", "Sales", Some("42"));
    lms.add_department("44", "Research", Some("42"));
    lms.add_department("99", "Outside", None);
    // SkillSync's own view, used for R10 re-sync (enrollments, certifications) and R11 snapshots.
    let now = Utc::now();
    lms.upsert_learner(learner(
        "L1",
        "ada@acme.example",
        "Ada",
        "Lovelace",
        ("43", "Sales"),
        LearnerStatus::Active,
        now,
    ));
    lms.add_enrollment(crate::model::Enrollment {
        id: "E1".into(),
        learner_id: "L1".into(),
        course_id: "C-101".into(),
        course_name: "Salesforce Basics".into(),
        status: crate::model::EnrollmentStatus::Completed,
        enrolled_at: now,
        completed_at: Some(now),
        score: Some(92.5),
        updated_at: now,
    });
    lms.add_enrollment(crate::model::Enrollment {
        id: "E2".into(),
        learner_id: "L1".into(),
        course_id: "C-202".into(),
        course_name: "Advanced Flows".into(),
        status: crate::model::EnrollmentStatus::InProgress,
        enrolled_at: now,
        completed_at: None,
        score: None,
        updated_at: now,
    });
    Ok(accounts)
}

pub fn demo_settings(
    sf_url: &str,
    ss_url: &str,
    store_url: &str,
    listen: &str,
) -> anyhow::Result<Settings> {
    let toml = format!(
        r#"
[server]
listen = "{listen}"
[webhooks]
secrets = ["{DEMO_SECRET}"]
[queue]
backend = "memory"
retry_delays_secs = [1, 2]
[store]
url = "{store_url}"
[salesforce]
login_url = "{sf_url}"
client_id = "{sf_id}"
client_secret = "{sf_secret}"
[skillsync]
base_url = "{ss_url}"
client_id = "{ss_id}"
client_secret = "{ss_secret}"
[sync]
enabled = true
source_department_id = "42"
scope = "with_subdepartments"
match_field = "Email"
account_rule = "department"
[worker]
concurrency = 4
max_attempts = 3
"#,
        sf_id = Org::CLIENT_ID,
        sf_secret = Org::CLIENT_SECRET,
        ss_id = Lms::CLIENT_ID,
        ss_secret = Lms::CLIENT_SECRET,
    );
    Ok(Settings::from_toml(&toml)?)
}

pub async fn run(args: &DemoArgs) -> anyhow::Result<DemoReport> {
    let started = Instant::now();
    let org = Org::new();
    let lms = Lms::new();
    let accounts = seed(&org, &lms)?;
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (sf_addr, _sf) = org
        .serve(any)
        .await
        .context("serving the Salesforce sandbox")?;
    let (ss_addr, _ss) = lms
        .serve(any)
        .await
        .context("serving the SkillSync sandbox")?;
    let tmp = tempfile_dir()?;
    let db = args
        .db
        .clone()
        .unwrap_or_else(|| tmp.join("syncback-demo.db"));
    let store_url = format!("sqlite://{}", db.display());
    let settings = demo_settings(
        &format!("http://{sf_addr}"),
        &format!("http://{ss_addr}"),
        &store_url,
        &args.listen,
    )?;
    assert_eq!(settings.queue.backend, QueueBackend::Memory);
    settings.validate_for(crate::config::Role::Run)?;

    let store: Arc<dyn Store> = crate::store::open(&store_url, 4).await?;
    let queue = Arc::new(MemoryQueue::new());
    let q: Arc<dyn Queue> = queue.clone();
    let engine = crate::worker::engine_from_settings(&settings, store.clone()).await?;
    let worker = Arc::new(Worker::new(engine, q.clone(), settings.worker.clone()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker_task = tokio::spawn(worker.run(stop_rx.clone()));
    let state = crate::http::AppState::new(&settings, q.clone(), Some(store.clone()))?;
    let listener = tokio::net::TcpListener::bind(&settings.server.listen).await?;
    let addr = listener.local_addr()?;
    let mut http_stop = stop_rx.clone();
    let server = tokio::spawn(crate::http::serve(
        listener,
        crate::http::router(state),
        async move {
            let _ = http_stop.wait_for(|v| *v).await;
        },
    ));
    println!("syncback demo: receiver on http://{addr}/webhooks/skillsync, Salesforce sandbox on http://{sf_addr}, SkillSync sandbox on http://{ss_addr}, store {store_url}\n");

    let key = decode_secret(DEMO_SECRET).map_err(|e| anyhow::anyhow!(e))?;
    let http = reqwest::Client::new();
    let url = format!("http://{addr}/webhooks/skillsync");
    let events = script(Utc::now() - chrono::Duration::minutes(5));
    let mut sent: Vec<(String, String)> = Vec::new();
    for (label, env) in &events {
        let id = env["id"].as_str().unwrap().to_string();
        let body = serde_json::to_vec(env)?;
        let ts = Utc::now().timestamp();
        let resp = http
            .post(&url)
            .header("content-type", "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", key.sign(&id, ts, &body))
            .body(body)
            .send()
            .await?;
        println!(
            "→ {:<12} {:<22} HTTP {}  {label}",
            id,
            env["type"].as_str().unwrap(),
            resp.status().as_u16()
        );
        anyhow::ensure!(
            resp.status().as_u16() == 202,
            "receiver answered {}",
            resp.status()
        );
        let learner = learner_of(env);
        // One event at a time so the walkthrough reads in order.
        let seen = wait_for_outcomes(
            &store,
            &learner,
            &id,
            sent.iter().filter(|(i, _)| *i == id).count() + 1,
        )
        .await?;
        anyhow::ensure!(seen, "event {id} was not settled in time");
        sent.push((id, learner));
    }

    let mut outcomes = Vec::new();
    let mut per_learner: BTreeMap<String, Vec<EventRecord>> = BTreeMap::new();
    for (_, l) in &sent {
        if !per_learner.contains_key(l) {
            let mut h = store.history(l, 100).await?;
            h.reverse();
            h.retain(|r| !r.event_id.starts_with("snapshot:"));
            per_learner.insert(l.clone(), h);
        }
    }
    let mut cursor: BTreeMap<String, usize> = BTreeMap::new();
    for (id, l) in &sent {
        let i = cursor.entry(l.clone()).or_default();
        let h = &per_learner[l];
        if let Some(pos) = h.iter().skip(*i).position(|r| &r.event_id == id) {
            outcomes.push((id.clone(), h[*i + pos].clone()));
            *i += pos + 1;
        }
    }
    let contacts = org.records("Contact");
    let dead_letters = q.dlq_list().await?;
    print_report(&outcomes, &contacts, &accounts, &org, &dead_letters);
    println!(
        "\ndemo finished in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    if args.keep_running {
        println!(
            "still running (Ctrl-C to stop): post your own signed events with secret {DEMO_SECRET}"
        );
        let _ = super::commands::shutdown_signal().wait_for(|v| *v).await;
    }
    let _ = stop_tx.send(true);
    let _ = server.await;
    let _ = worker_task.await;
    Ok(DemoReport {
        outcomes,
        contacts,
        accounts,
        dead_letters,
    })
}

fn learner_of(env: &Value) -> String {
    let d = &env["data"];
    d["learner"]["id"]
        .as_str()
        .or(d["enrollment"]["learner_id"].as_str())
        .or(d["certification"]["learner_id"].as_str())
        .unwrap_or_default()
        .to_string()
}

async fn wait_for_outcomes(
    store: &Arc<dyn Store>,
    learner: &str,
    id: &str,
    times: usize,
) -> anyhow::Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let h = store.history(learner, 200).await?;
        if h.iter().filter(|r| r.event_id == id).count() >= times {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(false)
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("syncback-demo-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

fn print_report(
    outcomes: &[(String, EventRecord)],
    contacts: &[Record],
    accounts: &BTreeMap<String, String>,
    org: &Org,
    dead: &[crate::queue::DeadLetter],
) {
    let s = |r: &Record, f: &str| r.get(f).and_then(Value::as_str).unwrap_or("").to_string();
    println!("\nOutcomes");
    println!(
        "{:<12} {:<22} {:<7} {:<8} {:<20} detail",
        "event", "type", "learner", "class", "code"
    );
    for (id, r) in outcomes {
        println!(
            "{:<12} {:<22} {:<7} {:<8} {:<20} {}",
            id,
            r.event_type,
            r.learner_id,
            r.class.as_str(),
            r.code,
            r.detail
        );
    }
    println!("\nSalesforce Contacts");
    println!(
        "{:<20} {:<18} {:<22} {:<12} SkillSync_User_Id__c",
        "Id", "Name", "Email", "Account"
    );
    for c in contacts {
        let acct = accounts
            .get(&s(c, "AccountId"))
            .cloned()
            .unwrap_or_else(|| s(c, "AccountId"));
        println!(
            "{:<20} {:<18} {:<22} {:<12} {}",
            s(c, "Id"),
            format!("{} {}", s(c, "FirstName"), s(c, "LastName")),
            s(c, "Email"),
            acct,
            s(c, "SkillSync_User_Id__c")
        );
    }
    let enrollments = org.records("SkillSync_Enrollment__c");
    println!(
        "\nSkillSync_Enrollment__c: {} records; SkillSync_Certification__c: {} records",
        enrollments.len(),
        org.records("SkillSync_Certification__c").len()
    );
    for e in &enrollments {
        println!(
            "  {} {} {} on {}",
            s(e, "SkillSync_Enrollment_Id__c"),
            s(e, "Course_Name__c"),
            s(e, "Status__c"),
            s(e, "Contact__c")
        );
    }
    println!(
        "\nDead-letter queue ({}): `syncback dlq list` shows these in production",
        dead.len()
    );
    for d in dead {
        println!(
            "  {} {} {}: {}",
            d.message.webhook_id,
            d.learner_id.as_deref().unwrap_or("-"),
            d.reason_kind,
            d.reason_message
        );
    }
}

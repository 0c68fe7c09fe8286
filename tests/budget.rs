//! The Salesforce API budget governor (`salesforce.max_api_share`, README "Salesforce API
//! budget") against the sandbox org over HTTP, its usage counter standing in for the org's
//! rolling 24 h: the client pauses and resumes, `backfill` pauses at the threshold and
//! resumes when usage drops, and live events wait at the ceiling but are applied.

mod common;

use std::time::{Duration, Instant};

use chrono::Utc;
use common::{any_addr, envelope, eventually, learner_json, World};
use syncback::config::{SalesforceSettings, Secret};
use syncback::model::{Learner, LearnerStatus};
use syncback::salesforce::budget::GateState;
use syncback::salesforce::{Client, Priority, SalesforceApi};
use syncback::sandbox::salesforce::Org;

async fn org_client(tweak: impl FnOnce(&mut SalesforceSettings)) -> (Org, Client) {
    let org = Org::new();
    let (addr, _) = org.serve(any_addr()).await.unwrap();
    let mut s = SalesforceSettings {
        login_url: format!("http://{addr}"),
        client_id: Org::CLIENT_ID.into(),
        client_secret: Secret::new(Org::CLIENT_SECRET),
        timeout_secs: 5,
        budget_poll_ms: 100,
        ..Default::default()
    };
    tweak(&mut s);
    (org.clone(), Client::new(&s).unwrap())
}

fn calls_except_limits(org: &Org) -> u64 {
    org.requests_by_endpoint()
        .iter()
        .filter(|(k, _)| k.as_str() != "GET limits")
        .map(|(_, v)| v)
        .sum()
}

fn limits_polls(org: &Org) -> u64 {
    org.requests_by_endpoint()
        .iter()
        .find(|(k, _)| k.as_str() == "GET limits")
        .map(|(_, v)| *v)
        .unwrap_or(0)
}

#[tokio::test]
async fn limits_are_read_and_calls_wait_at_the_ceiling_until_usage_drops() {
    let metrics = syncback::telemetry::metrics_handle();
    let (org, client) = org_client(|_| {}).await;
    org.set_api_limit(1000);
    org.set_api_used(100);
    // GET /limits: DailyApiRequests (the call itself counts, as on Salesforce).
    assert_eq!(client.refresh_usage().await.unwrap(), (101, 1000));
    assert_eq!(client.budget().status().ceiling(), Some(500));

    org.set_api_used(499);
    client.query("SELECT Id FROM Account").await.unwrap(); // learns 500/1000
    let st = client.budget().status();
    assert_eq!(st.live.state, GateState::Paused, "{st:?}");
    assert_eq!(st.bulk.state, GateState::Paused);
    assert!(st.explain(Priority::Live).unwrap().contains("500/1,000"));

    let before = calls_except_limits(&org);
    let live = {
        let c = client.clone();
        tokio::spawn(async move { c.query("SELECT Id FROM Account").await })
    };
    let bulk = {
        let c = client.with_priority(Priority::Bulk);
        tokio::spawn(async move { c.query("SELECT Id FROM Account").await })
    };
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!live.is_finished() && !bulk.is_finished(), "both wait");
    assert_eq!(
        calls_except_limits(&org),
        before,
        "nothing but the usage polls while paused"
    );
    let polls = limits_polls(&org);
    assert!(
        (3..=8).contains(&polls),
        "one GET /limits per budget_poll_ms (100 ms), shared by the waiters: {polls}"
    );

    // The window frees a little: live resumes (below the ceiling), bulk waits for 85 %.
    org.set_api_used(440); // 88 % of the ceiling
    tokio::time::timeout(Duration::from_secs(2), live)
        .await
        .expect("live resumes below the ceiling")
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!bulk.is_finished(), "bulk resumes only below 85 %");
    org.set_api_used(100);
    tokio::time::timeout(Duration::from_secs(2), bulk)
        .await
        .expect("bulk resumes")
        .unwrap()
        .unwrap();
    let st = client.budget().status();
    assert_eq!(
        (st.live.state, st.bulk.state),
        (GateState::Open, GateState::Open)
    );

    let text = metrics.render();
    for needle in [
        "syncback_salesforce_budget_paused{priority=\"bulk\"} 0",
        "syncback_salesforce_budget_paused_seconds_total{priority=\"live\"}",
        "syncback_salesforce_api_limit 1000",
    ] {
        assert!(text.contains(needle), "{needle} in {text}");
    }
}

fn learner(i: usize) -> Learner {
    let (dept, name) = if i.is_multiple_of(2) {
        ("42", "Engineering")
    } else {
        ("43", "Sales")
    };
    Learner {
        id: format!("G{i:05}"),
        username: format!("g{i}@budget.example"),
        email: Some(format!("g{i}@budget.example")),
        first_name: Some("Gov".into()),
        last_name: Some(format!("Ernor{i}")),
        department_id: Some(dept.into()),
        department_name: Some(name.into()),
        status: LearnerStatus::Active,
        fields: Default::default(),
        updated_at: Utc::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_pauses_at_the_budget_threshold_and_resumes_when_usage_drops() {
    const N: usize = 2_000;
    let w: World = common::world().await;
    for i in 0..N {
        w.lms.upsert_learner(learner(i));
    }
    let dir = tempfile::tempdir().unwrap();
    let store_url = format!("sqlite://{}", dir.path().join("b.db").display());
    let mut settings = common::settings(&w, "memory", "amqp://unused", "budget", &store_url);
    settings.salesforce.budget_poll_ms = 100;
    settings.salesforce.max_api_share = 0.5;
    // Ceiling 50 of 100: bulk work pauses at 45. Other integrations already used 38.
    w.org.set_api_limit(100);
    w.org.set_api_used(38);
    let store = syncback::store::open(&store_url, 4).await.unwrap();
    let started = Instant::now();
    let backfill = {
        let (settings, store) = (settings.clone(), store.clone());
        tokio::spawn(async move {
            syncback::sync::backfill::run_from_settings(&settings, store, false, false, None).await
        })
    };
    let org = w.org.clone();
    eventually(20, "backfill pauses and polls /limits", || {
        let org = org.clone();
        async move { limits_polls(&org) >= 2 }
    })
    .await;
    let (used, _) = w.org.api_usage();
    let paused_at = calls_except_limits(&w.org);
    let contacts = w.org.records("Contact").len();
    assert!(
        contacts < N,
        "paused before the end: {contacts} Contacts of {N}"
    );
    assert!(
        used <= 45 + limits_polls(&w.org),
        "bulk work stopped at 90 % of the ceiling (45): usage {used}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!backfill.is_finished(), "still paused");
    assert_eq!(
        calls_except_limits(&w.org),
        paused_at,
        "no Salesforce work while paused"
    );
    assert_eq!(w.org.records("Contact").len(), contacts);

    // The rolling window frees up: the backfill resumes and finishes.
    w.org.set_api_used(0);
    let summary = tokio::time::timeout(Duration::from_secs(60), backfill)
        .await
        .expect("backfill resumes and finishes")
        .unwrap()
        .unwrap();
    assert_eq!(summary.seen, N as u64, "{summary:?}");
    assert_eq!(summary.created, N as u64, "{summary:?}");
    assert_eq!(summary.failed(), 0, "{summary:?}");
    assert_eq!(w.org.records("Contact").len(), N);
    assert!(started.elapsed() >= Duration::from_millis(700));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_wait_at_the_ceiling_and_are_applied_when_usage_drops() {
    let w = common::world().await;
    // Ceiling 50 of 100 (max_api_share 0.5); other integrations already used 60.
    w.org.set_api_limit(100);
    w.org.set_api_used(60);
    let Some(app) = common::spawn_app(&w, "budget_live").await else {
        return;
    };
    let at = Utc::now();
    let e0 = envelope(
        "evt_budget_0",
        "learner.created",
        at,
        serde_json::json!({"learner": learner_json("GL0", "gl0@budget.example", "Zero", ("42", "Engineering"), "active", at)}),
    );
    assert_eq!(app.post(&e0).await, 202);
    // The first call teaches the worker's governor the usage; from then on it waits.
    tokio::time::sleep(Duration::from_millis(800)).await;
    let e1 = envelope(
        "evt_budget_1",
        "learner.created",
        at,
        serde_json::json!({"learner": learner_json("GL1", "gl1@budget.example", "One", ("42", "Engineering"), "active", at)}),
    );
    assert_eq!(app.post(&e1).await, 202);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        common::contacts_with(&w.org, "Email", "gl1@budget.example").is_empty(),
        "live work waits while usage is over the ceiling"
    );
    assert_eq!(app.count("GL1", "evt_budget_1").await, 0, "not settled yet");

    w.org.set_api_used(0);
    for (learner, id, email) in [
        ("GL0", "evt_budget_0", "gl0@budget.example"),
        ("GL1", "evt_budget_1", "gl1@budget.example"),
    ] {
        let store = app.store.clone();
        eventually(20, "applied after the window frees up", || {
            let store = store.clone();
            async move {
                store
                    .history(learner, 10)
                    .await
                    .unwrap()
                    .iter()
                    .any(|r| r.event_id == id)
            }
        })
        .await;
        let h = app.store.history(learner, 10).await.unwrap();
        assert_eq!(h.len(), 1, "settled once, not retried: {h:?}");
        assert_eq!(h[0].class.as_str(), "applied", "{h:?}");
        assert_eq!(common::contacts_with(&w.org, "Email", email).len(), 1);
    }
}

/// `syncback config check` against the sandboxes (off the test runtime's threads).
async fn config_check(w: &World, extra_salesforce: &str, sync: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("syncback.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\nurl = \"sqlite://{db}\"\n[queue]\nbackend = \"memory\"\n\
             [salesforce]\nlogin_url = \"{sf}\"\nclient_id = \"sandbox-client\"\nclient_secret = \"sandbox-secret\"\n{extra_salesforce}\n\
             [skillsync]\nbase_url = \"{ss}\"\nclient_id = \"sandbox-client\"\nclient_secret = \"sandbox-secret\"\n\
             [sync]\nenabled = true\nsource_department_id = \"42\"\n{sync}\n",
            db = dir.path().join("s.db").display(),
            sf = w.sf_url,
            ss = w.ss_url,
        ),
    )
    .unwrap();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_syncback"))
            .args([
                "--config",
                cfg.to_str().unwrap(),
                "config",
                "check",
                "--role",
                "work",
            ])
            .env("RUST_LOG", "error")
            .env_remove("SYNCBACK_CONFIG")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_warns_about_data_skew_and_the_replaced_threshold() {
    let w = common::world().await;
    let big = w.accounts["Prospects"].clone();
    for i in 0..10_001 {
        let mut c = syncback::salesforce::Record::new();
        c.insert("LastName".into(), serde_json::json!(format!("Skew{i}")));
        c.insert("AccountId".into(), serde_json::json!(big));
        w.org.insert("Contact", c).unwrap();
    }
    let (code, out) = config_check(
        &w,
        "api_usage_threshold = 0.9",
        &format!("account_rule = \"default\"\ndefault_account_id = \"{big}\""),
    )
    .await;
    assert_eq!(code, 0, "warnings do not fail the check: {out}");
    assert!(
        out.contains("sync.default_account_id")
            && out.contains("10001 Contacts")
            && out.contains("data-skew threshold of 10000"),
        "{out}"
    );
    assert!(
        out.contains("salesforce.api_usage_threshold = 0.9 is no longer used"),
        "{out}"
    );
    assert!(
        out.contains("used in the last 24 h (syncback's ceiling 7,500"),
        "usage against the ceiling is shown: {out}"
    );

    let small = w.accounts["Engineering"].clone();
    let (code, out) = config_check(
        &w,
        "",
        &format!("account_rule = \"default\"\ndefault_account_id = \"{small}\""),
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("data-skew"), "{out}");
    assert!(!out.contains("api_usage_threshold"), "{out}");
}

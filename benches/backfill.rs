//! Backfill benchmark (issue: SkillSync side): 10,000 in-scope learners synced into an
//! empty-ish org over loopback HTTP (real clients, sandboxes), SQLite store.
//!
//! In one run:
//! 1. baseline — every learner applied one by one through the per-event engine path
//!    (what replaying `learner.created` webhooks would cost);
//! 2. `backfill` — batched: SOQL `IN` for Accounts and Contacts, sObject Collections of
//!    200 for the writes.
//!
//! Reports Salesforce calls per learner and wall time for both.
//! `cargo bench --bench backfill -- [--learners N]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::json;
use syncback::config::{SalesforceSettings, Scope, Secret, SkillSyncSettings, SyncSettings};
use syncback::model::{Learner, LearnerStatus};
use syncback::salesforce::Record;
use syncback::sandbox::salesforce::Org;
use syncback::sandbox::skillsync::Lms;
use syncback::skillsync::scope::ScopeResolver;
use syncback::sync::backfill::Backfill;
use syncback::sync::Engine;

struct Rig {
    org: Org,
    sf: syncback::salesforce::Client,
    ss: Arc<syncback::skillsync::Client>,
    scope: Arc<ScopeResolver>,
    store: Arc<dyn syncback::store::Store>,
    _dir: tempfile::TempDir,
}

async fn rig(n: usize) -> (Rig, Vec<Learner>) {
    let org = Org::new();
    // A daily API allowance large enough that the client never paces itself here.
    org.set_api_limit(10_000_000);
    for name in ["Engineering", "Sales"] {
        let mut r = Record::new();
        r.insert("Name".into(), json!(name));
        org.insert("Account", r).unwrap();
    }
    let lms = Lms::new();
    lms.add_department("42", "Engineering", None);
    lms.add_department("43", "Sales", Some("42"));
    let mut learners = Vec::with_capacity(n);
    for i in 0..n {
        let dept = if i % 2 == 0 {
            ("42", "Engineering")
        } else {
            ("43", "Sales")
        };
        let l = Learner {
            id: format!("BF{i:06}"),
            username: format!("bf{i}@bench.example"),
            email: Some(format!("bf{i}@bench.example")),
            first_name: Some("Back".into()),
            last_name: Some(format!("Fill{i}")),
            department_id: Some(dept.0.into()),
            department_name: Some(dept.1.into()),
            status: LearnerStatus::Active,
            fields: Default::default(),
            updated_at: Utc::now(),
        };
        if i % 10 == 0 {
            // 10 % already have a Contact (to be linked and moved).
            let mut c = Record::new();
            c.insert("LastName".into(), json!("Existing"));
            c.insert("Email".into(), json!(l.username));
            org.insert("Contact", c).unwrap();
        }
        lms.upsert_learner(l.clone());
        learners.push(l);
    }
    let (sf_addr, _) = org.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (ss_addr, _) = lms.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let sf = syncback::salesforce::Client::new(&SalesforceSettings {
        login_url: format!("http://{sf_addr}"),
        client_id: Org::CLIENT_ID.into(),
        client_secret: Secret::new(Org::CLIENT_SECRET),
        ..Default::default()
    })
    .unwrap();
    let ss = Arc::new(
        syncback::skillsync::Client::new(&SkillSyncSettings {
            base_url: format!("http://{ss_addr}"),
            client_id: Lms::CLIENT_ID.into(),
            client_secret: Secret::new(Lms::CLIENT_SECRET),
            ..Default::default()
        })
        .unwrap(),
    );
    let scope = Arc::new(ScopeResolver::new(
        ss.clone(),
        "42",
        Scope::WithSubdepartments,
        Duration::from_secs(300),
    ));
    let dir = tempfile::tempdir().unwrap();
    let store = syncback::store::open(
        &format!("sqlite://{}", dir.path().join("bf.db").display()),
        4,
    )
    .await
    .unwrap();
    (
        Rig {
            org,
            sf,
            ss,
            scope,
            store,
            _dir: dir,
        },
        learners,
    )
}

/// The engine over `r`'s clients and store, leases of 300 s renewed every `renew`.
fn build_engine(r: &Rig, renew: Duration) -> Engine {
    Engine::new(
        syncback::sync::SettingsHandle::fixed(settings()),
        Arc::new(r.sf.clone()),
        r.ss.clone(),
        r.scope.clone(),
        r.store.clone(),
        Duration::from_secs(300),
        renew,
    )
}

fn settings() -> SyncSettings {
    SyncSettings {
        enabled: true,
        source_department_id: "42".into(),
        ..Default::default()
    }
}

fn report(name: &str, learners: usize, calls: u64, secs: f64, contacts: usize) {
    println!(
        "{name:<34} {learners:>6} learners  {calls:>6} Salesforce calls = {:>7.4} per learner   {secs:>7.2} s   {:>7.0} learners/s   Contacts now {contacts}",
        calls as f64 / learners as f64,
        learners as f64 / secs
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: usize = std::env::args()
        .skip_while(|a| a != "--learners")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        println!("backfill benchmark: {n} in-scope learners, 10 % with an existing Contact, HTTP sandboxes, SQLite");

        // 1. Baseline: one learner at a time through the per-event engine.
        let (r, learners) = rig(n).await;
        let engine = build_engine(&r, Duration::from_secs(30));
        let before = r.sf.total_calls();
        let started = Instant::now();
        let now = Utc::now();
        for (i, l) in learners.iter().enumerate() {
            let env = serde_json::from_value(json!({"id": format!("bf_{i}"), "type": "learner.created",
                "occurred_at": now.to_rfc3339(), "data": {"learner": l}}))
            .unwrap();
            engine.handle(&env).await.unwrap();
        }
        report("baseline: per-event engine", n, r.sf.total_calls() - before, started.elapsed().as_secs_f64(), r.org.records("Contact").len());

        // 2. The batched backfill, on a fresh org with the same data.
        let (r, _) = rig(n).await;
        let counter = r.sf.clone();
        let calls = move || counter.total_calls();
        let engine = build_engine(&r, Duration::from_secs(60));
        let summary = Backfill {
            engine: &engine,
            ss: r.ss.as_ref(),
            scope: &r.scope,
            dry_run: false,
            restart: true,
            progress: None,
            sf_calls: Some(&calls),
        }
        .run()
        .await
        .unwrap();
        report(
            "backfill: the one apply path, batches of 200",
            n,
            summary.salesforce_calls,
            summary.elapsed_ms as f64 / 1000.0,
            r.org.records("Contact").len(),
        );
        println!("{summary}");
    });
}

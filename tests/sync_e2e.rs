//! End to end: signed POST → receiver → RabbitMQ → worker → Salesforce sandbox, with the
//! state in PostgreSQL (or SQLite). One test per FAQ answer of the seed article, and the
//! concurrency test of 2,000 shuffled, duplicated events in 2 `syncback work` processes.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use syncback::config::Settings;
use syncback::queue::Message;
use syncback::store::{LinkState, Store};

mod common;
use common::*;

/// FAQ: "If the Username matches a unique email address of a certain Contact, the User will
/// be synced to that existing Contact." + "Will my Contacts be moved to another Account? Yes."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faq_unique_match_links_existing_contact_and_moves_it() {
    let w = world().await;
    let Some(app) = spawn_app(&w, "faq_match").await else {
        return;
    };
    let existing = add_contact(&w.org, "grace@acme.example", &w.accounts["Prospects"]);
    let t = Utc::now();
    let env = envelope(
        "evt_m1",
        "learner.created",
        t,
        json!({"learner": learner_json("L2", "Grace@Acme.example", "Hopper", ("43", "Sales"), "active", t)}),
    );
    assert_eq!(
        app.apply(&env, "L2").await,
        ("applied".into(), "linked".into())
    );
    let c = w.org.record("Contact", &existing).unwrap();
    assert_eq!(c["SkillSync_User_Id__c"], json!("L2"), "R8 link");
    assert_eq!(
        c["AccountId"],
        json!(w.accounts["Sales"]),
        "R7 moved to the department's Account"
    );
    assert_eq!(c["LastName"], json!("Hopper"));
    assert_eq!(w.org.records("Contact").len(), 1, "no Contact created");
    let st = app.store.learner("L2").await.unwrap().unwrap();
    assert_eq!(st.link, LinkState::Linked);
    assert_eq!(st.contact_id.as_deref(), Some(existing.as_str()));
}

/// FAQ: "If the Username matches multiple email addresses of different Contacts, the sync
/// would fail to avoid ambiguity." — the event is dead-lettered, nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faq_ambiguous_match_fails_and_writes_nothing() {
    let w = world().await;
    let Some(app) = spawn_app(&w, "faq_ambiguous").await else {
        return;
    };
    let a = add_contact(&w.org, "dup@acme.example", &w.accounts["Prospects"]);
    let b = add_contact(&w.org, "DUP@acme.example", &w.accounts["Prospects"]);
    let t = Utc::now();
    let env = envelope(
        "evt_a1",
        "learner.created",
        t,
        json!({"learner": learner_json("L3", "dup@acme.example", "Dup", ("42", "Engineering"), "active", t)}),
    );
    assert_eq!(
        app.apply(&env, "L3").await,
        ("failed".into(), "contact_ambiguous".into())
    );
    for id in [a, b] {
        let c = w.org.record("Contact", &id).unwrap();
        assert!(c.get("SkillSync_User_Id__c").is_none_or(Value::is_null));
        assert_eq!(c["AccountId"], json!(w.accounts["Prospects"]), "not moved");
    }
    assert_eq!(w.org.records("Contact").len(), 2);
    // It is in the DLQ with its reason.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let dlq = app.queue.dlq_list().await.unwrap();
        if let Some(d) = dlq.iter().find(|d| d.message.webhook_id == "evt_a1") {
            assert_eq!(d.reason_kind, "contact_ambiguous");
            assert_eq!(d.learner_id.as_deref(), Some("L3"));
            break;
        }
        assert!(Instant::now() < deadline, "not dead-lettered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// FAQ: "If the Username doesn't match any email addresses of Contacts, we will create a new
/// Contact ... under the Account based on the Department synced rule." + "can the connector
/// create any Accounts? No."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faq_no_match_creates_contact_under_account_and_never_creates_accounts() {
    let w = world().await;
    let Some(app) = spawn_app(&w, "faq_create").await else {
        return;
    };
    let t = Utc::now();
    let env = envelope(
        "evt_c1",
        "learner.created",
        t,
        json!({"learner": learner_json("L1", "ada@acme.example", "Lovelace", ("42", "Engineering"), "active", t)}),
    );
    assert_eq!(
        app.apply(&env, "L1").await,
        ("applied".into(), "created".into())
    );
    let c = contacts_with(&w.org, "SkillSync_User_Id__c", "L1");
    assert_eq!(c.len(), 1);
    assert_eq!(c[0]["AccountId"], json!(w.accounts["Engineering"]));
    assert_eq!(c[0]["Email"], json!("ada@acme.example"));
    let accounts_before = w.org.records("Account").len();
    // Research has no Account: permanent failure, no Account is created (R4).
    let env = envelope(
        "evt_c2",
        "learner.created",
        t,
        json!({"learner": learner_json("L5", "rita@acme.example", "Search", ("44", "Research"), "active", t)}),
    );
    assert_eq!(
        app.apply(&env, "L5").await,
        ("failed".into(), "account_not_found".into())
    );
    // Two Accounts named Twin: ambiguous.
    let env = envelope(
        "evt_c3",
        "learner.created",
        t,
        json!({"learner": learner_json("L6", "tw@acme.example", "Win", ("45", "Twin"), "active", t)}),
    );
    assert_eq!(
        app.apply(&env, "L6").await,
        ("failed".into(), "account_ambiguous".into())
    );
    assert_eq!(w.org.records("Account").len(), accounts_before);
    assert!(contacts_with(&w.org, "Email", "rita@acme.example").is_empty());
}

/// FAQ: "Can we sync the Learner as an Admin or a person account? ... only as Contacts."
/// Every write goes to Contact or the custom objects; nothing else is ever touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faq_only_contacts_are_written() {
    let w = world().await;
    let Some(app) = spawn_app(&w, "faq_contacts").await else {
        return;
    };
    w.org.reset_counts();
    let t = Utc::now();
    let env = envelope(
        "evt_o1",
        "learner.created",
        t,
        json!({"learner": learner_json("L7", "admin@acme.example", "Admin", ("42", "Engineering"), "active", t)}),
    );
    assert_eq!(app.apply(&env, "L7").await.1, "created");
    for (endpoint, _) in w.org.requests_by_endpoint() {
        // Reads are queries; every write targets Contact or the custom objects (R6):
        // never User, Account or a person account.
        let path = endpoint.split_once(' ').unwrap().1;
        let object = path
            .strip_prefix("sobjects/")
            .or_else(|| path.strip_prefix("composite/sobjects/"))
            .map(|p| p.split('/').next().unwrap());
        assert!(
            path == "query"
                || path == "composite/sobjects"
                || matches!(
                    object,
                    Some("Contact" | "SkillSync_Enrollment__c" | "SkillSync_Certification__c")
                ),
            "unexpected endpoint {endpoint}"
        );
    }
}

/// FAQ: "Will enrollments be synced over for the synced Contacts? Yes" and "What happens if I
/// deactivate the Learner? The contact will remain, but it will no longer link ...
/// Re-activating the Learner will sync them back to the Contact."
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faq_enrollments_deactivation_and_reactivation() {
    let w = world().await;
    let Some(app) = spawn_app(&w, "faq_lifecycle").await else {
        return;
    };
    let t0 = Utc::now() - chrono::Duration::minutes(1);
    let at = |s| t0 + chrono::Duration::seconds(s);
    let l = |status, s| {
        learner_json(
            "L1",
            "ada@acme.example",
            "Lovelace",
            ("43", "Sales"),
            status,
            at(s),
        )
    };
    assert_eq!(
        app.apply(
            &envelope(
                "e1",
                "learner.created",
                at(1),
                json!({"learner": l("active", 1)})
            ),
            "L1"
        )
        .await
        .1,
        "created"
    );
    let contact = app
        .store
        .learner("L1")
        .await
        .unwrap()
        .unwrap()
        .contact_id
        .unwrap();
    let enr = |status: &str, s| {
        json!({"enrollment": {"id": "E1", "learner_id": "L1", "course_id": "C1", "course_name": "Basics", "status": status,
        "enrolled_at": at(0).to_rfc3339(), "completed_at": null, "score": null, "updated_at": at(s).to_rfc3339()}})
    };
    assert_eq!(
        app.apply(
            &envelope("e2", "enrollment.created", at(2), enr("enrolled", 2)),
            "L1"
        )
        .await
        .1,
        "upserted"
    );
    let recs = w.org.records("SkillSync_Enrollment__c");
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0]["Contact__c"], json!(contact));
    assert_eq!(recs[0]["Status__c"], json!("enrolled"));
    let cert = json!({"certification": {"id": "CERT1", "learner_id": "L1", "name": "Admin", "issued_at": at(3).to_rfc3339(), "expires_at": null, "status": "active", "updated_at": at(3).to_rfc3339()}});
    assert_eq!(
        app.apply(&envelope("e3", "certification.issued", at(3), cert), "L1")
            .await
            .1,
        "upserted"
    );
    assert_eq!(w.org.records("SkillSync_Certification__c").len(), 1);

    // Deactivate: Contact stays, link removed, remembered.
    assert_eq!(
        app.apply(
            &envelope(
                "e4",
                "learner.deactivated",
                at(4),
                json!({"learner": l("inactive", 4)})
            ),
            "L1"
        )
        .await
        .1,
        "unlinked"
    );
    let c = w
        .org
        .record("Contact", &contact)
        .expect("the Contact remains");
    assert!(c.get("SkillSync_User_Id__c").is_none_or(Value::is_null));
    let st = app.store.learner("L1").await.unwrap().unwrap();
    assert_eq!(
        (st.link, st.contact_id.as_deref()),
        (LinkState::Deactivated, Some(contact.as_str()))
    );
    // Enrollment of an unlinked learner: skipped.
    assert_eq!(
        app.apply(
            &envelope("e5", "enrollment.completed", at(5), enr("completed", 5)),
            "L1"
        )
        .await,
        ("skipped".into(), "learner_not_linked".into())
    );

    // SkillSync's view for the re-sync: E1 completed, E2 new.
    w.lms.add_enrollment(serde_json::from_value(json!({"id": "E1", "learner_id": "L1", "course_id": "C1", "course_name": "Basics", "status": "completed",
        "enrolled_at": at(0).to_rfc3339(), "completed_at": at(5).to_rfc3339(), "score": 88.0, "updated_at": at(5).to_rfc3339()})).unwrap());
    w.lms.add_enrollment(serde_json::from_value(json!({"id": "E2", "learner_id": "L1", "course_id": "C2", "course_name": "Flows", "status": "in_progress",
        "enrolled_at": at(0).to_rfc3339(), "completed_at": null, "score": null, "updated_at": at(5).to_rfc3339()})).unwrap());
    assert_eq!(
        app.apply(
            &envelope(
                "e6",
                "learner.reactivated",
                at(6),
                json!({"learner": l("active", 6)})
            ),
            "L1"
        )
        .await
        .1,
        "relinked"
    );
    let c = w.org.record("Contact", &contact).unwrap();
    assert_eq!(
        c["SkillSync_User_Id__c"],
        json!("L1"),
        "re-linked to the same Contact"
    );
    assert_eq!(contacts_with(&w.org, "Email", "ada@acme.example").len(), 1);
    let recs = w.org.records("SkillSync_Enrollment__c");
    assert_eq!(recs.len(), 2, "enrollments re-synced from SkillSync (R10)");
    let e1 = recs
        .iter()
        .find(|r| r["SkillSync_Enrollment_Id__c"] == json!("E1"))
        .unwrap();
    assert_eq!(e1["Status__c"], json!("completed"));

    // enrollment.deleted deletes the record (R11).
    assert_eq!(
        app.apply(
            &envelope("e7", "enrollment.deleted", at(7), enr("cancelled", 7)),
            "L1"
        )
        .await
        .1,
        "deleted"
    );
    assert_eq!(w.org.records("SkillSync_Enrollment__c").len(), 1);

    // R10: if the remembered Contact was deleted in Salesforce, match again.
    assert_eq!(
        app.apply(
            &envelope(
                "e8",
                "learner.deactivated",
                at(8),
                json!({"learner": l("inactive", 8)})
            ),
            "L1"
        )
        .await
        .1,
        "unlinked"
    );
    assert!(w.org.remove("Contact", &contact));
    let fresh = add_contact(&w.org, "ada@acme.example", &w.accounts["Prospects"]);
    assert_eq!(
        app.apply(
            &envelope(
                "e9",
                "learner.reactivated",
                at(9),
                json!({"learner": l("active", 9)})
            ),
            "L1"
        )
        .await
        .1,
        "linked"
    );
    assert_eq!(
        w.org.record("Contact", &fresh).unwrap()["SkillSync_User_Id__c"],
        json!("L1")
    );
}

/// FAQ: "What if there are multiple Contacts found ... with the same unique identifier? The
/// sync will fail" — and a matched Contact linked to another learner is a conflict (R5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faq_contact_linked_to_other_learner_is_a_conflict() {
    let w = world().await;
    let Some(app) = spawn_app(&w, "faq_conflict").await else {
        return;
    };
    let t = Utc::now();
    assert_eq!(app.apply(&envelope("k1", "learner.created", t, json!({"learner": learner_json("A", "same@acme.example", "A", ("42", "Engineering"), "active", t)})), "A").await.1, "created");
    assert_eq!(
        app.apply(&envelope("k2", "learner.created", t, json!({"learner": learner_json("B", "same@acme.example", "B", ("42", "Engineering"), "active", t)})), "B").await,
        ("failed".into(), "contact_conflict".into())
    );
    // Redelivered webhook id: 202 again, applied at most once (R12).
    assert_eq!(app.apply(&envelope("k1", "learner.created", t, json!({"learner": learner_json("A", "same@acme.example", "A", ("42", "Engineering"), "active", t)})), "A").await, ("skipped".into(), "duplicate".into()));
}

// ------------------------------------------------------------------ concurrency

/// 200 learners, ~2,000 deliveries (shuffled, ~30 % duplicated), and the expected end state
/// (newest event per learner).
fn concurrency_events(seed: u64) -> (Vec<Value>, BTreeMap<String, Value>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let base = Utc::now() - chrono::Duration::hours(1);
    let depts = [("42", "Engineering"), ("43", "Sales"), ("99", "Outside")];
    let mut events = Vec::new();
    let mut newest = BTreeMap::new();
    for i in 0..200 {
        let id = format!("CL{i:03}");
        let user = format!("user{i}@conc.example");
        let n = 8;
        for k in 0..n {
            let at =
                base + chrono::Duration::milliseconds((k * 1000 + rng.gen_range(0..500)) as i64);
            let (ty, status) = match k {
                0 => ("learner.created", "active"),
                _ if rng.gen_bool(0.15) => ("learner.deactivated", "inactive"),
                _ if rng.gen_bool(0.1) => ("learner.reactivated", "active"),
                _ => ("learner.updated", "active"),
            };
            let dept = if rng.gen_bool(0.1) {
                depts[2]
            } else {
                depts[rng.gen_range(0..2)]
            };
            let l = learner_json(&id, &user, &format!("Last{k}"), dept, status, at);
            let env = envelope(&format!("evt_{id}_{k}"), ty, at, json!({"learner": l}));
            newest.insert(id.clone(), env.clone());
            events.push(env.clone());
            if rng.gen_bool(0.3) {
                events.push(env);
            }
        }
    }
    events.shuffle(&mut rng);
    (events, newest)
}

fn assert_end_state(w: &World, newest: &BTreeMap<String, Value>) {
    let contacts = w.org.records("Contact");
    let mut by_email: HashMap<String, usize> = HashMap::new();
    for c in &contacts {
        *by_email
            .entry(c["Email"].as_str().unwrap_or("").to_lowercase())
            .or_default() += 1;
    }
    assert!(
        by_email.values().all(|n| *n == 1),
        "duplicate Contacts: {by_email:?}"
    );
    for (id, env) in newest {
        let l = &env["data"]["learner"];
        let active = env["type"] != json!("learner.deactivated") && l["status"] == json!("active");
        let in_scope = l["department_id"] != json!("99");
        let linked = contacts_with(&w.org, "SkillSync_User_Id__c", id);
        if active && in_scope {
            assert_eq!(
                linked.len(),
                1,
                "{id} must be linked to one Contact; newest {env}"
            );
            let c = &linked[0];
            assert_eq!(
                c["LastName"], l["last_name"],
                "{id} fields from the newest event"
            );
            assert_eq!(
                c["AccountId"],
                json!(w.accounts[l["department_name"].as_str().unwrap()]),
                "{id} account"
            );
        } else {
            assert!(linked.is_empty(), "{id} must not be linked; newest {env}");
        }
    }
}

async fn run_two_worker_processes(
    w: &World,
    s: &Settings,
    total: usize,
    store: &Arc<dyn Store>,
    ids: &[String],
) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("syncback.toml");
    let mut file_settings = s.clone();
    file_settings.worker.concurrency = 8;
    std::fs::write(&cfg, toml_of(&file_settings)).unwrap();
    let mut children = Vec::new();
    for _ in 0..2 {
        children.push(
            tokio::process::Command::new(env!("CARGO_BIN_EXE_syncback"))
                .arg("--config")
                .arg(&cfg)
                .arg("work")
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .unwrap(),
        );
    }
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let mut settled = 0;
        for id in ids {
            settled += store
                .history(id, 1000)
                .await
                .unwrap()
                .iter()
                .filter(|r| !r.event_id.starts_with("snapshot:"))
                .count();
        }
        if settled >= total {
            break;
        }
        assert!(Instant::now() < deadline, "only {settled}/{total} settled");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for c in &mut children {
        let pid = c.id().unwrap() as i32;
        // Graceful stop: SIGTERM, exit 0.
        unsafe_kill(pid);
    }
    for mut c in children {
        let status = tokio::time::timeout(Duration::from_secs(40), c.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "worker exit status {status}");
    }
    let _ = w;
}

async fn concurrency(store_url: String, store: Arc<dyn Store>, test: &str) {
    let Some(amqp) = syncback::testing::rabbitmq() else {
        return;
    };
    let w = world().await;
    let s = settings(
        &w,
        "rabbitmq",
        &amqp,
        &syncback::testing::unique_prefix(test),
        &store_url,
    );
    let (events, newest) = concurrency_events(7);
    let total = events.len();
    assert!(total >= 2_000, "{total} deliveries");
    let queue = syncback::queue::connect(&s.queue).await.unwrap();
    let publishes = events.iter().map(|env| {
        let q = queue.clone();
        let m = Message {
            webhook_id: env["id"].as_str().unwrap().to_string(),
            received_at: Utc::now(),
            envelope: env.clone(),
        };
        async move { q.publish(&m).await.unwrap() }
    });
    futures::future::join_all(publishes).await;
    let ids: Vec<String> = newest.keys().cloned().collect();
    run_two_worker_processes(&w, &s, total, &store, &ids).await;
    assert_end_state(&w, &newest);
    let dlq = queue.dlq_list().await.unwrap();
    assert!(dlq.is_empty(), "nothing should fail: {dlq:?}");
    drop_queues(&s);
}

/// 2,000 shuffled, duplicated events for 200 learners, 8 tasks × 2 `syncback work`
/// processes, PostgreSQL store: the end state equals the newest event per learner (R12),
/// and no Contact is duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_two_processes_postgres() {
    let Some(db) = syncback::testing::fresh_postgres_db().await else {
        return;
    };
    let store = syncback::store::open(&db, 5).await.unwrap();
    concurrency(db, store, "conc_pg").await;
}

/// The same on SQLite (two processes sharing one database file).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_two_processes_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("conc.db").display());
    let store = syncback::store::open(&url, 2).await.unwrap();
    concurrency(url, store, "conc_sqlite").await;
    drop(dir);
}

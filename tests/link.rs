//! Resolving `contact_ambiguous` (docs/rules.md R5): the console's "link to this Contact"
//! and `syncback learner link` share `admin::actions::link`, which applies the learner's
//! SkillSync snapshot through the rules engine with the chosen Contact as R5's single match.
//! Here with the sandboxes served over HTTP, the engine from the composition root, a worker
//! on the in-memory queue and a SQLite store. (The CLI: tests/cli.rs; the console in a
//! browser: tests/console.rs.)

mod common;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use common::*;
use serde_json::{json, Value};
use syncback::admin::actions;
use syncback::queue::{Message, Queue};
use syncback::salesforce::Record;
use syncback::store::{LinkState, Store};
use syncback::worker::Worker;

struct Rig {
    w: World,
    store: Arc<dyn Store>,
    queue: Arc<dyn Queue>,
    parts: syncback::app::Parts,
    stop: tokio::sync::watch::Sender<bool>,
    _dir: tempfile::TempDir,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

/// The world of tests/common, a SQLite store, the in-memory queue with a worker on it, and
/// the engine `learner link` builds (composition root, the file's mapping).
async fn rig() -> Rig {
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("state.db").display());
    let s = settings(&w, "memory", "", "link", &db);
    let store = syncback::store::open(&db, 2).await.unwrap();
    let queue = syncback::queue::open(&s.queue);
    let worker_engine = syncback::worker::engine_from_settings(&s, store.clone())
        .await
        .unwrap();
    let (stop, rx) = tokio::sync::watch::channel(false);
    let worker = Arc::new(Worker::new(worker_engine, queue.clone(), s.worker.clone()));
    tokio::spawn(worker.run(rx));
    let parts = syncback::app::build(
        &s,
        store.clone(),
        syncback::app::Options {
            validate_source: false,
            mark_uncertain: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    Rig {
        w,
        store,
        queue,
        parts,
        stop,
        _dir: dir,
    }
}

impl Rig {
    async fn link(&self, learner: &str, contact: &str) -> anyhow::Result<actions::Linked> {
        actions::link(
            learner,
            contact,
            &self.parts.engine,
            &self.parts.salesforce,
            self.parts.skillsync.as_ref(),
            self.queue.as_ref(),
            "tester",
        )
        .await
    }

    /// Queue a `learner.created` event for `l` (SkillSync has the learner too) and wait
    /// until the worker dead-letters it as `contact_ambiguous`.
    async fn ambiguous(&self, id: &str, l: &Value) {
        self.w
            .lms
            .upsert_learner(serde_json::from_value(l.clone()).unwrap());
        self.queue
            .publish(&Message {
                webhook_id: id.into(),
                received_at: Utc::now(),
                envelope: envelope(id, "learner.created", Utc::now(), json!({"learner": l})),
            })
            .await
            .unwrap();
        eventually(
            20,
            "the event dead-lettered as contact_ambiguous",
            || async {
                self.queue
                    .dlq_list()
                    .await
                    .unwrap()
                    .iter()
                    .any(|d| d.message.webhook_id == id && d.reason_kind == "contact_ambiguous")
            },
        )
        .await;
    }

    fn child_ids(&self, sobject: &str, ext: &str, contact: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .w
            .org
            .records(sobject)
            .into_iter()
            .filter(|r| r.get("Contact__c") == Some(&json!(contact)))
            .map(|r| r[ext].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    }
}

fn contact(org: &syncback::sandbox::salesforce::Org, email: &str, account: &str) -> String {
    let mut r = Record::new();
    r.insert("FirstName".into(), json!("Old"));
    r.insert("LastName".into(), json!("Existing"));
    r.insert("Email".into(), json!(email));
    r.insert("AccountId".into(), json!(account));
    org.insert("Contact", r).unwrap()
}

/// The chosen Contact gets what R5's single match gets: mapped fields and link (R8), the
/// department's Account (R4 rule B, moved per R7), the learner's enrollments and
/// certifications (R11); the learner's history holds the engine's outcome; the dead
/// letter is replayed and settled by the worker; the action is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_applies_the_learner_through_the_rules_and_replays_its_dead_letters() {
    let r = rig().await;
    let (eng, prospects, sales) = (
        r.w.accounts["Engineering"].clone(),
        r.w.accounts["Prospects"].clone(),
        r.w.accounts["Sales"].clone(),
    );
    let first = contact(&r.w.org, "dup@example.com", &eng);
    let chosen = contact(&r.w.org, "dup@example.com", &prospects);
    let at = Utc::now() - chrono::Duration::minutes(5);
    let l = learner_json(
        "L1",
        "dup@example.com",
        "Linked",
        ("43", "Sales"),
        "active",
        at,
    );
    r.ambiguous("evt_l1", &l).await;
    r.w.lms.add_enrollment(
        serde_json::from_value(json!({"id": "E1", "learner_id": "L1", "course_id": "C1",
            "course_name": "Flows", "status": "enrolled", "enrolled_at": at.to_rfc3339(),
            "completed_at": null, "score": null, "updated_at": at.to_rfc3339()}))
        .unwrap(),
    );
    r.w.lms.add_certification(
        serde_json::from_value(json!({"id": "K1", "learner_id": "L1", "name": "Admin",
            "issued_at": at.to_rfc3339(), "expires_at": null, "status": "active",
            "updated_at": at.to_rfc3339()}))
        .unwrap(),
    );

    let linked = r.link("L1", &chosen).await.unwrap();
    assert_eq!(
        (linked.outcome.class.as_str(), linked.outcome.code.as_str()),
        ("applied", "linked"),
        "{linked:?}"
    );
    assert_eq!(linked.replayed, 1);

    let c = r.w.org.record("Contact", &chosen).unwrap();
    assert_eq!(c["SkillSync_User_Id__c"], json!("L1"), "R8 link");
    assert_eq!(c["FirstName"], json!("F"), "R8 field map");
    assert_eq!(c["LastName"], json!("Linked"), "R8 field map");
    assert_eq!(c["Email"], json!("dup@example.com"));
    assert_eq!(c["AccountId"], json!(sales), "R4 rule B, moved (R7)");
    assert_eq!(
        r.child_ids(
            "SkillSync_Enrollment__c",
            "SkillSync_Enrollment_Id__c",
            &chosen
        ),
        ["E1"]
    );
    assert_eq!(
        r.child_ids(
            "SkillSync_Certification__c",
            "SkillSync_Certification_Id__c",
            &chosen
        ),
        ["K1"]
    );
    let other = r.w.org.record("Contact", &first).unwrap();
    assert!(
        other.get("SkillSync_User_Id__c").is_none_or(Value::is_null),
        "the other candidate stays unlinked"
    );
    assert_eq!(other["LastName"], json!("Existing"));
    assert_eq!(other["AccountId"], json!(eng));

    let st = r.store.learner("L1").await.unwrap().unwrap();
    assert_eq!(st.link, LinkState::Linked);
    assert_eq!(st.contact_id.as_deref(), Some(chosen.as_str()));
    assert_eq!(st.account_id.as_deref(), Some(sales.as_str()));
    assert_eq!(st.last_outcome.as_deref(), Some("applied: linked"));
    let h = r.store.history("L1", 10).await.unwrap();
    let snap = h
        .iter()
        .find(|e| e.event_type == "snapshot.link")
        .expect("the link's outcome in the history");
    assert_eq!(
        (snap.class.as_str(), snap.code.as_str()),
        ("applied", "linked")
    );
    assert!(snap.detail.contains(&chosen), "{}", snap.detail);

    // The replayed dead letter is settled by the worker (R12: the snapshot is newer).
    eventually(20, "the replayed event settled", || async {
        r.queue.dlq_list().await.unwrap().is_empty()
            && r.store
                .history("L1", 10)
                .await
                .unwrap()
                .iter()
                .filter(|e| e.event_id == "evt_l1")
                .count()
                == 2
    })
    .await;
    assert_eq!(
        r.store.learner("L1").await.unwrap().unwrap().contact_id,
        Some(chosen.clone())
    );
    let audit = r.store.audit(10).await.unwrap();
    let a = audit
        .iter()
        .find(|a| a.action == "learner.link")
        .expect("audited");
    assert_eq!(a.target, "learner L1");
    assert_eq!(
        a.before.as_deref(),
        Some("unlinked -"),
        "after its contact_ambiguous failure"
    );
    let after = a.after.as_deref().unwrap();
    assert!(
        after.starts_with(&format!("linked {chosen}")) && after.contains("1 dead letters"),
        "{after}"
    );
}

/// A link the rules refuse (R9 inactive, R3 out of scope, R4 no Account) or the checks
/// refuse (a Contact linked to another learner) says why and writes nothing: no Salesforce
/// write, no outcome, no state, the dead letter kept, nothing audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_the_rules_refuse_says_why_and_writes_nothing() {
    let r = rig().await;
    let eng = r.w.accounts["Engineering"].clone();
    let a = contact(&r.w.org, "two@example.com", &eng);
    contact(&r.w.org, "two@example.com", &eng);
    let at = Utc::now() - chrono::Duration::minutes(5);
    let l = |dept: (&str, &str), status: &str| {
        learner_json("L2", "two@example.com", "Two", dept, status, at)
    };
    r.ambiguous("evt_l2", &l(("42", "Engineering"), "active"))
        .await;
    let mut foreign = Record::new();
    foreign.insert("LastName".into(), json!("Taken"));
    foreign.insert("SkillSync_User_Id__c".into(), json!("L9"));
    let taken = r.w.org.insert("Contact", foreign).unwrap();
    let before = r.w.org.records("Contact");
    let history = r.store.history("L2", 10).await.unwrap().len();
    let state = r.store.learner("L2").await.unwrap();
    assert_eq!(state.as_ref().map(|s| s.link), Some(LinkState::Unlinked));
    let requests = r.w.org.total_requests();
    for (dept, status, why) in [
        // Its failed event left it unlinked: R9 keeps an inactive learner so.
        (("42", "Engineering"), "inactive", "already_unlinked"),
        (("99", "Outside"), "active", "out_of_scope"),
        (("44", "Research"), "active", "account_not_found"),
    ] {
        r.w.lms
            .upsert_learner(serde_json::from_value(l(dept, status)).unwrap());
        let e = r.link("L2", &a).await.unwrap_err().to_string();
        assert!(
            e.contains(why) && e.contains("nothing was written"),
            "{why}: {e}"
        );
    }
    r.w.lms
        .upsert_learner(serde_json::from_value(l(("42", "Engineering"), "active")).unwrap());
    let e = r.link("L2", &taken).await.unwrap_err().to_string();
    assert!(e.contains("already linked to learner L9"), "{e}");
    assert_eq!(r.w.org.records("Contact"), before, "no Contact written");
    assert!(r.w.org.total_requests() > requests, "the rules were asked");
    assert_eq!(r.store.history("L2", 10).await.unwrap().len(), history);
    assert_eq!(r.store.learner("L2").await.unwrap(), state);
    assert_eq!(r.w.org.records("SkillSync_Enrollment__c").len(), 0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let dead = r.queue.dlq_list().await.unwrap();
    assert_eq!(dead.len(), 1, "the dead letter is kept");
    assert!(r
        .store
        .audit(10)
        .await
        .unwrap()
        .iter()
        .all(|a| a.action != "learner.link"));
}

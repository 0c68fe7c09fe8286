//! The engine against the in-process sandboxes and a SQLite store: no network, no broker.
//! One test per rule and outcome that needs I/O (the pure decisions are tested in
//! `rules.rs`), plus crash safety and Salesforce calls per event.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::*;
use crate::config::{AccountRule, Scope, SyncSettings};
use crate::salesforce::Record;
use crate::sandbox::salesforce::Org;
use crate::sandbox::skillsync::Lms;
use crate::skillsync::scope::ScopeResolver;
use crate::store::LinkState;
use crate::sync::{Code, OutcomeClass};

struct T {
    org: Org,
    lms: Lms,
    engine: Engine,
    store: Arc<dyn Store>,
    accounts: std::collections::HashMap<&'static str, String>,
    _dir: tempfile::TempDir,
    t0: DateTime<Utc>,
}

fn rec(v: Value) -> Record {
    v.as_object().unwrap().clone()
}

async fn setup(
    tweak: impl FnOnce(&mut SyncSettings, &std::collections::HashMap<&'static str, String>),
) -> T {
    let org = Org::new();
    let mut accounts = std::collections::HashMap::new();
    for name in ["Engineering", "Sales", "Prospects", "Acme Corp"] {
        accounts.insert(
            name,
            org.insert("Account", rec(json!({"Name": name}))).unwrap(),
        );
    }
    let lms = Lms::new();
    lms.add_department("42", "Engineering", None);
    lms.add_department("43", "Sales", Some("42"));
    lms.add_department("99", "Outside", None);
    let dir = tempfile::tempdir().unwrap();
    let store = crate::store::open(
        &format!("sqlite://{}", dir.path().join("e.db").display()),
        2,
    )
    .await
    .unwrap();
    let mut settings = SyncSettings {
        enabled: true,
        source_department_id: "42".into(),
        scope: Scope::WithSubdepartments,
        ..Default::default()
    };
    tweak(&mut settings, &accounts);
    let scope = Arc::new(ScopeResolver::new(
        Arc::new(lms.clone()),
        "42",
        settings.scope,
        Duration::from_secs(60),
    ));
    let engine = Engine::new(
        SettingsHandle::fixed(settings),
        Arc::new(org.clone()),
        Arc::new(lms.clone()),
        scope,
        store.clone(),
        Duration::from_secs(300),
        Duration::from_secs(30),
    );
    T {
        org,
        lms,
        engine,
        store,
        accounts,
        _dir: dir,
        t0: Utc::now() - chrono::Duration::hours(1),
    }
}

fn learner(id: &str, user: &str, dept: (&str, &str), status: &str, fields: Value) -> Value {
    json!({"id": id, "username": user, "email": user, "first_name": "F", "last_name": format!("L-{id}"),
        "department_id": dept.0, "department_name": dept.1, "status": status, "fields": fields,
        "updated_at": "2026-11-24T10:00:00Z"})
}

impl T {
    fn env(&self, id: &str, ty: &str, secs: i64, data: Value) -> Envelope {
        serde_json::from_value(json!({"id": id, "type": ty,
            "occurred_at": (self.t0 + chrono::Duration::seconds(secs)).to_rfc3339(), "data": data}))
        .unwrap()
    }
    async fn learner_event(&self, id: &str, ty: &str, secs: i64, l: Value) -> Outcome {
        self.engine
            .handle(&self.env(id, ty, secs, json!({"learner": l})))
            .await
            .unwrap()
    }
    fn linked(&self, learner: &str) -> Vec<Record> {
        self.org
            .records("Contact")
            .into_iter()
            .filter(|c| c.get("SkillSync_User_Id__c") == Some(&json!(learner)))
            .collect()
    }
}

#[tokio::test]
async fn r1_toggle_off_records_a_skip_and_writes_nothing() {
    let t = setup(|s, _| s.enabled = false).await;
    let o = t
        .learner_event(
            "e1",
            "learner.created",
            1,
            learner(
                "L1",
                "a@x.example",
                ("42", "Engineering"),
                "active",
                json!({}),
            ),
        )
        .await;
    assert_eq!(
        (o.class, o.code.as_str()),
        (OutcomeClass::Skipped, "sync_disabled")
    );
    assert_eq!(t.org.total_requests(), 0, "nothing written, nothing read");
    assert_eq!(
        t.store.history("L1", 5).await.unwrap()[0].code,
        "sync_disabled"
    );
}

#[tokio::test]
async fn r3_leaving_the_scope_unlinks_and_coming_back_relinks() {
    let t = setup(|_, _| {}).await;
    let l = |d: (&str, &str)| learner("L1", "a@x.example", d, "active", json!({}));
    assert_eq!(
        t.learner_event("e1", "learner.created", 1, l(("43", "Sales")))
            .await
            .code,
        "created"
    );
    let contact = t.linked("L1")[0]["Id"].clone();
    let o = t
        .learner_event("e2", "learner.updated", 2, l(("99", "Outside")))
        .await;
    assert_eq!(o.code, "unlinked");
    assert!(t.linked("L1").is_empty());
    assert_eq!(
        t.store.learner("L1").await.unwrap().unwrap().link,
        LinkState::OutOfScope
    );
    let o = t
        .learner_event("e3", "learner.updated", 3, l(("42", "Engineering")))
        .await;
    assert_eq!(o.code, "relinked");
    assert_eq!(t.linked("L1")[0]["Id"], contact, "the same Contact");
    assert_eq!(
        t.linked("L1")[0]["AccountId"],
        json!(t.accounts["Engineering"]),
        "R7 moved"
    );
    // Never seen in scope: skipped, nothing created.
    let o = t
        .learner_event(
            "e4",
            "learner.created",
            4,
            learner("L2", "b@x.example", ("99", "Outside"), "active", json!({})),
        )
        .await;
    assert_eq!(
        (o.class, o.code.as_str()),
        (OutcomeClass::Skipped, "out_of_scope")
    );
    assert!(t.linked("L2").is_empty());
}

#[tokio::test]
async fn r4_rule_a_default_account_and_rule_c_learner_field() {
    let t = setup(|s, a| {
        s.account_rule = AccountRule::Default;
        s.default_account_id = a["Prospects"].clone();
    })
    .await;
    t.learner_event(
        "e1",
        "learner.created",
        1,
        learner("L1", "a@x.example", ("43", "Sales"), "active", json!({})),
    )
    .await;
    assert_eq!(
        t.linked("L1")[0]["AccountId"],
        json!(t.accounts["Prospects"])
    );

    let t = setup(|s, _| {
        s.account_rule = AccountRule::LearnerField;
        s.account_field = "company".into();
    })
    .await;
    let o = t
        .learner_event(
            "e1",
            "learner.created",
            1,
            learner(
                "L1",
                "a@x.example",
                ("43", "Sales"),
                "active",
                json!({"company": "acme corp"}),
            ),
        )
        .await;
    assert_eq!(o.code, "created", "{o:?}");
    assert_eq!(
        t.linked("L1")[0]["AccountId"],
        json!(t.accounts["Acme Corp"]),
        "Name match is case-insensitive"
    );
    let o = t
        .learner_event(
            "e2",
            "learner.created",
            2,
            learner(
                "L2",
                "b@x.example",
                ("43", "Sales"),
                "active",
                json!({"company": null}),
            ),
        )
        .await;
    assert_eq!(
        (o.class, o.code.as_str()),
        (OutcomeClass::Failed, "account_not_found")
    );
    assert!(t.linked("L2").is_empty());
}

#[tokio::test]
async fn r5_conflict_and_r8_crash_safety() {
    let t = setup(|_, _| {}).await;
    // A Contact already carrying L9's link but unknown to the store: the state after a
    // crash between the Salesforce write and the store commit. No second Contact.
    let existing = t
        .org
        .insert(
            "Contact",
            rec(json!({"LastName": "X", "Email": "old@x.example", "SkillSync_User_Id__c": "L9"})),
        )
        .unwrap();
    let o = t
        .learner_event(
            "e1",
            "learner.created",
            1,
            learner(
                "L9",
                "new@x.example",
                ("42", "Engineering"),
                "active",
                json!({}),
            ),
        )
        .await;
    assert_eq!(o.class, OutcomeClass::Applied, "{o:?}");
    assert_eq!(t.linked("L9").len(), 1);
    assert_eq!(t.linked("L9")[0]["Id"], json!(existing));
    assert_eq!(t.org.records("Contact").len(), 1);
    // Same username as L9's Contact, different learner: conflict, nothing written.
    let o = t
        .learner_event(
            "e2",
            "learner.created",
            2,
            learner(
                "L10",
                "new@x.example",
                ("42", "Engineering"),
                "active",
                json!({}),
            ),
        )
        .await;
    assert_eq!(
        (o.class, o.code.as_str()),
        (OutcomeClass::Failed, "contact_conflict")
    );
    assert_eq!(t.org.records("Contact").len(), 1);
}

#[tokio::test]
async fn r12_duplicates_and_stale_events_are_skipped() {
    let t = setup(|_, _| {}).await;
    let l = |last: &str| {
        let mut v = learner(
            "L1",
            "a@x.example",
            ("42", "Engineering"),
            "active",
            json!({}),
        );
        v["last_name"] = json!(last);
        v
    };
    t.learner_event("e2", "learner.updated", 20, l("Newer"))
        .await;
    assert_eq!(
        t.learner_event("e2", "learner.updated", 20, l("Newer"))
            .await
            .code,
        "duplicate"
    );
    assert_eq!(
        t.learner_event("e1", "learner.updated", 10, l("Older"))
            .await
            .code,
        "stale"
    );
    // Same instant: the higher event id wins.
    assert_eq!(
        t.learner_event("e3", "learner.updated", 20, l("Tie"))
            .await
            .class,
        OutcomeClass::Applied
    );
    assert_eq!(
        t.learner_event("e0", "learner.updated", 20, l("TieLoser"))
            .await
            .code,
        "stale"
    );
    assert_eq!(t.linked("L1")[0]["LastName"], json!("Tie"));
}

#[tokio::test]
async fn r11_child_event_of_an_unsynced_learner_syncs_its_snapshot_first() {
    let t = setup(|_, _| {}).await;
    t.lms.upsert_learner(
        serde_json::from_value(learner(
            "L5",
            "e@x.example",
            ("43", "Sales"),
            "active",
            json!({}),
        ))
        .unwrap(),
    );
    let enr = json!({"enrollment": {"id": "E9", "learner_id": "L5", "course_id": "C", "course_name": "Course", "status": "completed",
        "enrolled_at": "2026-11-01T00:00:00Z", "completed_at": "2026-11-02T00:00:00Z", "score": 91.5, "updated_at": "2026-11-02T00:00:00Z"}});
    let o = t
        .engine
        .handle(&t.env("c1", "enrollment.completed", 5, enr))
        .await
        .unwrap();
    assert_eq!(o.class, OutcomeClass::Applied, "{o:?}");
    let contact = t.linked("L5")[0]["Id"].clone();
    let e = &t.org.records("SkillSync_Enrollment__c")[0];
    assert_eq!(
        (
            e["Contact__c"].clone(),
            e["Score__c"].clone(),
            e["Status__c"].clone()
        ),
        (contact, json!(91.5), json!("completed"))
    );
    // Unknown to SkillSync: skipped.
    let cert = json!({"certification": {"id": "X1", "learner_id": "ghost", "name": "N", "issued_at": "2026-11-01T00:00:00Z",
        "expires_at": null, "status": "active", "updated_at": "2026-11-01T00:00:00Z"}});
    let o = t
        .engine
        .handle(&t.env("c2", "certification.issued", 6, cert))
        .await
        .unwrap();
    assert_eq!(
        (o.class, o.code.as_str()),
        (OutcomeClass::Skipped, "learner_unknown")
    );
    // The snapshot's sync fails (no Account "Nowhere", R4): so does the event, recorded.
    t.lms.upsert_learner(
        serde_json::from_value(learner(
            "L6",
            "f@x.example",
            ("43", "Nowhere"),
            "active",
            json!({}),
        ))
        .unwrap(),
    );
    let enr = json!({"enrollment": {"id": "E10", "learner_id": "L6", "course_id": "C", "course_name": "Course", "status": "enrolled",
        "enrolled_at": "2026-11-01T00:00:00Z", "completed_at": null, "score": null, "updated_at": "2026-11-02T00:00:00Z"}});
    let o = t
        .engine
        .handle(&t.env("c3", "enrollment.created", 7, enr))
        .await
        .unwrap();
    assert_eq!(
        (o.class, o.code.as_str()),
        (OutcomeClass::Failed, "account_not_found")
    );
    assert_eq!(t.store.history("L6", 5).await.unwrap()[0].event_id, "c3");
}

/// Steady state (linked learner, warm Account cache): a learner update is one Salesforce
/// call, an enrollment or certification event one call.
#[tokio::test]
async fn steady_state_calls_per_event() {
    let t = setup(|_, _| {}).await;
    t.learner_event(
        "e0",
        "learner.created",
        0,
        learner(
            "L1",
            "a@x.example",
            ("42", "Engineering"),
            "active",
            json!({}),
        ),
    )
    .await;
    t.learner_event(
        "e1",
        "learner.updated",
        1,
        learner(
            "L1",
            "a@x.example",
            ("42", "Engineering"),
            "active",
            json!({}),
        ),
    )
    .await;
    let before = t.org.total_requests();
    for i in 2..12 {
        let mut l = learner(
            "L1",
            "a@x.example",
            ("42", "Engineering"),
            "active",
            json!({}),
        );
        l["last_name"] = json!(format!("V{i}"));
        assert_eq!(
            t.learner_event(&format!("e{i}"), "learner.updated", i, l)
                .await
                .class,
            OutcomeClass::Applied
        );
    }
    let per_update = (t.org.total_requests() - before) as f64 / 10.0;
    assert!(
        per_update <= 2.0,
        "{per_update} calls per learner.updated; {:?}",
        t.org.requests_by_endpoint()
    );
    let before = t.org.total_requests();
    let enr = json!({"enrollment": {"id": "E1", "learner_id": "L1", "course_id": "C", "course_name": "Course", "status": "enrolled",
        "enrolled_at": "2026-11-01T00:00:00Z", "completed_at": null, "score": null, "updated_at": "2026-11-02T00:00:00Z"}});
    t.engine
        .handle(&t.env("n1", "enrollment.created", 20, enr))
        .await
        .unwrap();
    assert_eq!(
        t.org.total_requests() - before,
        1,
        "one upsert by external id"
    );
}

/// A slow event keeps its learner's lease past the lease TTL (renewed while applied), so
/// no other worker can apply the same learner meanwhile.
#[tokio::test]
async fn lease_is_renewed_while_a_slow_event_is_applied() {
    let t = setup(|_, _| {}).await;
    let ttl = Duration::from_millis(300);
    let scope = Arc::new(ScopeResolver::new(
        Arc::new(t.lms.clone()),
        "42",
        Scope::WithSubdepartments,
        Duration::from_secs(60),
    ));
    let settings = SyncSettings {
        enabled: true,
        source_department_id: "42".into(),
        ..Default::default()
    };
    let engine = Arc::new(Engine::new(
        SettingsHandle::fixed(settings),
        Arc::new(t.org.clone()),
        Arc::new(t.lms.clone()),
        scope,
        t.store.clone(),
        Duration::from_secs(60),
        ttl,
    ));
    t.org.set_latency(Duration::from_millis(400)); // each call outlives the TTL
    let env = t.env("slow", "learner.created", 1, json!({"learner": learner("L1", "a@x.example", ("42", "Engineering"), "active", json!({}))}));
    let e2 = engine.clone();
    let task = tokio::spawn(async move { e2.handle(&env).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        !t.store
            .try_lease("learner:L1", "intruder", ttl)
            .await
            .unwrap(),
        "the lease must still be held after twice its TTL"
    );
    assert_eq!(task.await.unwrap().unwrap().code, "created");
    assert!(
        t.store
            .try_lease("learner:L1", "intruder", ttl)
            .await
            .unwrap(),
        "released after the event"
    );
}

/// R5 with a match field other than Email (the article: "we recommend using the email
/// address for the mapping, however, this is not mandatory").
#[tokio::test]
async fn r5_matching_on_a_configured_field_other_than_email() {
    let t = setup(|s, _| s.match_field = "Department".into()).await;
    let existing = t
        .org
        .insert(
            "Contact",
            rec(json!({"LastName": "Old", "Email": "other@x.example", "Department": "jdoe"})),
        )
        .unwrap();
    let mut l = learner("L1", "jdoe", ("42", "Engineering"), "active", json!({}));
    l["email"] = json!("jdoe@x.example");
    let o = t.learner_event("e1", "learner.created", 1, l).await;
    assert_eq!(o.code, "linked", "{o:?}");
    let c = t.org.record("Contact", &existing).unwrap();
    assert_eq!(c["SkillSync_User_Id__c"], json!("L1"));
    assert_eq!(
        c["Department"],
        json!("jdoe"),
        "the match field carries the username (R8)"
    );
    assert_eq!(
        c["Email"],
        json!("jdoe@x.example"),
        "Email maps from learner.email"
    );
}

/// R10: reactivation makes the Contact's enrollments and certifications equal SkillSync's
/// current ones: upserts what SkillSync has, deletes what it no longer has.
#[tokio::test]
async fn r10_reactivation_deletes_records_skillsync_no_longer_has() {
    let t = setup(|_, _| {}).await;
    let l = |status: &str| learner("L1", "a@x.example", ("43", "Sales"), status, json!({}));
    t.lms
        .upsert_learner(serde_json::from_value(l("active")).unwrap());
    assert_eq!(
        t.learner_event("e1", "learner.created", 1, l("active"))
            .await
            .code,
        "created"
    );
    let cert = json!({"id": "C1", "learner_id": "L1", "name": "Admin", "issued_at": "2026-11-01T00:00:00Z",
        "status": "active", "updated_at": "2026-11-01T00:00:00Z"});
    let enr = |id: &str| {
        json!({"id": id, "learner_id": "L1", "course_id": "7", "course_name": "C",
        "status": "enrolled", "enrolled_at": "2026-11-01T00:00:00Z", "updated_at": "2026-11-01T00:00:00Z"})
    };
    for (i, (ty, data)) in [
        ("certification.issued", json!({"certification": cert})),
        ("enrollment.created", json!({"enrollment": enr("E1")})),
    ]
    .into_iter()
    .enumerate()
    {
        let o = t
            .engine
            .handle(&t.env(&format!("c{i}"), ty, 2 + i as i64, data))
            .await
            .unwrap();
        assert_eq!(o.code, "upserted");
    }
    t.learner_event("e2", "learner.deactivated", 5, l("inactive"))
        .await;
    // Meanwhile SkillSync dropped C1 and E1, and has E2.
    t.lms
        .add_enrollment(serde_json::from_value(enr("E2")).unwrap());
    let o = t
        .learner_event("e3", "learner.reactivated", 6, l("active"))
        .await;
    assert_eq!(o.code, "relinked");
    let ids = |object: &str, field: &str| -> Vec<String> {
        t.org
            .records(object)
            .iter()
            .map(|r| r[field].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        ids("SkillSync_Enrollment__c", "SkillSync_Enrollment_Id__c"),
        ["E2"]
    );
    assert!(ids(
        "SkillSync_Certification__c",
        "SkillSync_Certification_Id__c"
    )
    .is_empty());
}

#[path = "apply_tests.rs"]
mod apply;

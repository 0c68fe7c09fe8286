//! `Engine::apply`: snapshots (backfill, reconcile, console), batches, R10 completeness.

use super::*;
use crate::model::{Enrollment, Learner};
use crate::sync::{Children, Item, Origin, SnapshotItem};

fn snap(t: &T, l: Value, origin: Origin) -> Item {
    let _ = t;
    Item::Snapshot(SnapshotItem::new(
        serde_json::from_value::<Learner>(l).unwrap(),
        origin,
    ))
}

fn enrollment(id: &str, learner: &str) -> Value {
    json!({"id": id, "learner_id": learner, "course_id": "C", "course_name": "Course", "status": "enrolled",
        "enrolled_at": "2026-11-01T00:00:00Z", "completed_at": null, "score": null, "updated_at": "2026-11-02T00:00:00Z"})
}

fn enrollments_of(t: &T, contact: &Value) -> Vec<String> {
    let mut v: Vec<String> = t
        .org
        .records("SkillSync_Enrollment__c")
        .into_iter()
        .filter(|r| &r["Contact__c"] == contact)
        .map(|r| {
            r["SkillSync_Enrollment_Id__c"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    v.sort();
    v
}

/// The R10 sequence of issue 10: a deletion missed while unlinked is caught up on reactivation.
#[tokio::test]
async fn r10_reactivation_makes_children_equal_skillsync() {
    let t = setup(|_, _| {}).await;
    let l = |status: &str| {
        learner(
            "L1",
            "a@x.example",
            ("42", "Engineering"),
            status,
            json!({}),
        )
    };
    t.lms
        .upsert_learner(serde_json::from_value(l("active")).unwrap());
    assert_eq!(
        t.learner_event("e1", "learner.created", 1, l("active"))
            .await
            .code,
        "created"
    );
    let contact = t.linked("L1")[0]["Id"].clone();
    let enr = enrollment("E1", "L1");
    t.lms
        .add_enrollment(serde_json::from_value::<Enrollment>(enr.clone()).unwrap());
    let o = t
        .engine
        .handle(&t.env("e2", "enrollment.created", 2, json!({"enrollment": enr})))
        .await
        .unwrap();
    assert_eq!(o.code, "upserted");
    assert_eq!(enrollments_of(&t, &contact), ["E1"]);
    assert_eq!(
        t.learner_event("e3", "learner.deactivated", 3, l("inactive"))
            .await
            .code,
        "unlinked"
    );
    t.lms.remove_enrollment("E1");
    let o = t
        .engine
        .handle(&t.env(
            "e4",
            "enrollment.deleted",
            4,
            json!({"enrollment": enrollment("E1", "L1")}),
        ))
        .await
        .unwrap();
    assert_eq!(
        (o.class, o.code),
        (OutcomeClass::Skipped, Code::LearnerNotLinked)
    );
    // A second enrollment SkillSync has now, never sent while unlinked.
    t.lms
        .add_enrollment(serde_json::from_value::<Enrollment>(enrollment("E2", "L1")).unwrap());
    let o = t
        .learner_event("e5", "learner.reactivated", 5, l("active"))
        .await;
    assert_eq!(o.code, "relinked", "{o:?}");
    assert_eq!(t.linked("L1")[0]["Id"], contact);
    assert_eq!(
        enrollments_of(&t, &contact),
        ["E2"],
        "E1 deleted, E2 written (R10)"
    );
}

/// Backfill snapshots of inactive, deactivated-then-active and out-of-scope learners give the
/// same end state as the same learners' events.
#[tokio::test]
async fn snapshots_and_events_reach_the_same_end_state() {
    async fn run(use_snapshots: bool) -> Vec<(String, Option<String>, Option<String>, String)> {
        let t = setup(|_, _| {}).await;
        let a =
            |status: &str, dept: (&str, &str)| learner("A", "a@x.example", dept, status, json!({}));
        let b = |status: &str| learner("B", "b@x.example", ("43", "Sales"), status, json!({}));
        let c = |dept: (&str, &str)| learner("C", "c@x.example", dept, "active", json!({}));
        // Common history: all three linked by events.
        t.learner_event(
            "a1",
            "learner.created",
            1,
            a("active", ("42", "Engineering")),
        )
        .await;
        t.learner_event("b1", "learner.created", 1, b("active"))
            .await;
        t.learner_event("c1", "learner.created", 1, c(("42", "Engineering")))
            .await;
        t.learner_event("b2", "learner.deactivated", 2, b("inactive"))
            .await;
        // Then: A goes inactive, B comes back, C leaves the scope.
        let now = [
            (
                "a3",
                "learner.deactivated",
                a("inactive", ("42", "Engineering")),
            ),
            ("b3", "learner.reactivated", b("active")),
            ("c3", "learner.updated", c(("99", "Outside"))),
        ];
        if use_snapshots {
            let items = now
                .iter()
                .map(|(_, _, l)| snap(&t, l.clone(), Origin::Backfill))
                .collect();
            for r in t.engine.apply(items).await {
                assert_ne!(r.unwrap().class, OutcomeClass::Failed);
            }
        } else {
            for (id, ty, l) in now {
                t.learner_event(id, ty, 3, l).await;
            }
        }
        let mut out = Vec::new();
        for id in ["A", "B", "C"] {
            let st = t.store.learner(id).await.unwrap().unwrap();
            let linked = t
                .linked(id)
                .first()
                .map(|c| c["Id"].as_str().unwrap().to_string());
            out.push((
                id.to_string(),
                st.contact_id.clone(),
                linked,
                st.link.as_str().to_string(),
            ));
        }
        // The snapshots are in the history with their origin.
        if use_snapshots {
            let h = t.store.history("B", 1).await.unwrap();
            assert_eq!(
                (h[0].event_type.as_str(), h[0].code.as_str()),
                ("snapshot.backfill", "relinked")
            );
        }
        out
    }
    let by_events = run(false).await;
    let by_snapshots = run(true).await;
    let shape = |v: &[(String, Option<String>, Option<String>, String)]| {
        v.iter()
            .map(|(id, c, l, s)| (id.clone(), c.is_some(), l.is_some(), s.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(shape(&by_events), shape(&by_snapshots));
    assert_eq!(
        shape(&by_events),
        [
            ("A".to_string(), true, false, "deactivated".to_string()),
            ("B".to_string(), true, true, "linked".to_string()),
            ("C".to_string(), true, false, "out_of_scope".to_string()),
        ]
    );
}

/// The console's "link to this Contact": the chosen Contact takes the link (cleared on the
/// one carrying it before); a missing or foreign Contact fails with its own code.
#[tokio::test]
async fn snapshot_with_a_contact_hint_links_the_chosen_contact() {
    let t = setup(|_, _| {}).await;
    let l = learner(
        "L1",
        "dup@x.example",
        ("42", "Engineering"),
        "active",
        json!({}),
    );
    let c1 = t
        .org
        .insert(
            "Contact",
            rec(json!({"LastName": "One", "Email": "dup@x.example"})),
        )
        .unwrap();
    let c2 = t
        .org
        .insert(
            "Contact",
            rec(json!({"LastName": "Two", "Email": "dup@x.example"})),
        )
        .unwrap();
    let o = t.learner_event("e1", "learner.created", 1, l.clone()).await;
    assert_eq!(o.code, "contact_ambiguous");
    let with_hint = |hint: &str| {
        let mut s = SnapshotItem::new(serde_json::from_value(l.clone()).unwrap(), Origin::Link);
        s.contact_hint = Some(hint.to_string());
        Item::Snapshot(s)
    };
    let o = t
        .engine
        .apply(vec![with_hint(&c2)])
        .await
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!(
        (o.class, o.code),
        (OutcomeClass::Applied, Code::Linked),
        "{o:?}"
    );
    assert_eq!(t.linked("L1")[0]["Id"], json!(c2));
    // Changing one's mind: the link moves, exactly one Contact carries it.
    let o = t
        .engine
        .apply(vec![with_hint(&c1)])
        .await
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!(o.class, OutcomeClass::Applied, "{o:?}");
    assert_eq!(t.linked("L1").len(), 1);
    assert_eq!(t.linked("L1")[0]["Id"], json!(c1));
    // Missing Contact, and a Contact linked to another learner.
    let o = t
        .engine
        .apply(vec![with_hint("003000000000000AAA")])
        .await
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!(o.code, Code::ContactNotFound, "{o:?}");
    let other = t
        .org
        .insert(
            "Contact",
            rec(json!({"LastName": "X", "SkillSync_User_Id__c": "L2"})),
        )
        .unwrap();
    let o = t
        .engine
        .apply(vec![with_hint(&other)])
        .await
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!(o.code, Code::ContactConflict, "{o:?}");
    assert_eq!(
        t.linked("L1")[0]["Id"],
        json!(c1),
        "a failed hint changes nothing"
    );
}

/// Reconcile's `on_field_drift = "report"`: the link and AccountId are repaired, the mapped
/// fields are left as they are; `children` makes the Contact's records equal the list.
#[tokio::test]
async fn snapshot_keep_fields_and_children() {
    let t = setup(|_, _| {}).await;
    let l = learner(
        "L1",
        "a@x.example",
        ("42", "Engineering"),
        "active",
        json!({}),
    );
    t.learner_event("e1", "learner.created", 1, l.clone()).await;
    let contact = t.linked("L1")[0]["Id"].as_str().unwrap().to_string();
    let mut edit = Record::new();
    edit.insert("LastName".into(), json!("Edited in Salesforce"));
    edit.insert("AccountId".into(), json!(t.accounts["Sales"]));
    crate::salesforce::SalesforceApi::update(&t.org, "Contact", &contact, &edit)
        .await
        .unwrap();
    t.engine
        .handle(&t.env(
            "e2",
            "enrollment.created",
            2,
            json!({"enrollment": enrollment("OLD", "L1")}),
        ))
        .await
        .unwrap();
    let mut s = SnapshotItem::new(
        serde_json::from_value(l).unwrap(),
        Origin::Reconcile {
            detail: "account drift".into(),
        },
    );
    s.keep_fields = true;
    s.children = Some(Children {
        enrollments: vec![serde_json::from_value(enrollment("NEW", "L1")).unwrap()],
        certifications: vec![],
    });
    let o = t
        .engine
        .apply(vec![Item::Snapshot(s)])
        .await
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!(o.class, OutcomeClass::Applied, "{o:?}");
    let c = t.org.record("Contact", &contact).unwrap();
    assert_eq!(c["LastName"], json!("Edited in Salesforce"), "fields kept");
    assert_eq!(
        c["AccountId"],
        json!(t.accounts["Engineering"]),
        "R7 still applied"
    );
    assert_eq!(enrollments_of(&t, &json!(contact)), ["NEW"]);
    let h = t.store.history("L1", 1).await.unwrap();
    assert_eq!(h[0].event_type, "snapshot.reconcile");
    assert!(h[0].detail.contains("account drift"), "{}", h[0].detail);
}

/// A batch: results in input order; a learner leased by another worker gets a transient
/// result for its items only; of one entity's events in the batch only the latest (by
/// occurred_at, id) is written, the older ones are recorded `stale` (R12).
#[tokio::test]
async fn a_batch_settles_each_item_and_skips_busy_learners() {
    let mut t = setup(|_, _| {}).await;
    t.engine.set_lease_wait(Duration::from_millis(50));
    assert!(t
        .store
        .try_lease("learner:BUSY", "other-worker", Duration::from_secs(30))
        .await
        .unwrap());
    let l = |id: &str, last: &str| {
        let mut v = learner(
            id,
            &format!("{id}@x.example"),
            ("42", "Engineering"),
            "active",
            json!({}),
        );
        v["last_name"] = json!(last);
        v
    };
    let items = vec![
        Item::Event(t.env(
            "u2",
            "learner.updated",
            2,
            json!({"learner": l("L1", "Second")}),
        )),
        Item::Event(t.env(
            "b1",
            "learner.created",
            1,
            json!({"learner": l("BUSY", "X")}),
        )),
        Item::Event(t.env(
            "u1",
            "learner.created",
            1,
            json!({"learner": l("L1", "First")}),
        )),
        Item::Event(t.env(
            "k1",
            "learner.created",
            1,
            json!({"learner": l("L3", "Other")}),
        )),
    ];
    let r = t.engine.apply(items).await;
    assert_eq!(r.len(), 4);
    assert_eq!(r[0].as_ref().unwrap().code, Code::Created, "{:?}", r[0]);
    let older = r[2].as_ref().unwrap();
    assert_eq!(
        (older.code, older.class),
        (Code::Stale, OutcomeClass::Skipped),
        "superseded by u2 in the same batch: not written"
    );
    assert!(
        older.detail.contains("superseded by u2"),
        "{}",
        older.detail
    );
    assert_eq!(r[1].as_ref().unwrap_err().kind(), "learner_busy");
    assert_eq!(r[3].as_ref().unwrap().code, Code::Created);
    assert_eq!(t.linked("L1")[0]["LastName"], json!("Second"));
    assert!(t.linked("BUSY").is_empty());
}

/// One batch mixing a success, `account_not_found`, `contact_ambiguous`, a Salesforce
/// validation error, a row lock that clears within the batch and one that does not: every
/// item settles with its own outcome, and the failures never fail their neighbours
/// (Collections with `allOrNone=false`, lock errors retried for the locked records only).
#[tokio::test]
async fn a_mixed_batch_settles_every_item_with_its_own_outcome() {
    let t = setup(|_, _| {}).await;
    for _ in 0..2 {
        t.org
            .insert(
                "Contact",
                rec(json!({"LastName": "Twin", "Email": "twin@x.example"})),
            )
            .unwrap();
    }
    // Another transaction holds the Account "Sales" longer than the batch retries, and
    // "Prospects" only briefly.
    t.org.lock_parent(&t.accounts["Sales"], 100);
    t.org.lock_parent(&t.accounts["Prospects"], 2);
    let ev =
        |id: &str, l: Value| Item::Event(t.env(id, "learner.created", 1, json!({"learner": l})));
    let items = vec![
        ev(
            "ok",
            learner(
                "OK",
                "ok@x.example",
                ("42", "Engineering"),
                "active",
                json!({}),
            ),
        ),
        ev(
            "noacct",
            learner("NA", "na@x.example", ("43", "Nowhere"), "active", json!({})),
        ),
        ev(
            "amb",
            learner(
                "AM",
                "twin@x.example",
                ("42", "Engineering"),
                "active",
                json!({}),
            ),
        ),
        ev(
            "invalid",
            learner(
                "IV",
                "not-an-email",
                ("42", "Engineering"),
                "active",
                json!({}),
            ),
        ),
        ev(
            "brief",
            learner(
                "BR",
                "br@x.example",
                ("43", "Prospects"),
                "active",
                json!({}),
            ),
        ),
        ev(
            "locked",
            learner("LK", "lk@x.example", ("43", "Sales"), "active", json!({})),
        ),
    ];
    let before = t.org.total_requests();
    let r = t.engine.apply(items).await;
    let code = |i: usize| r[i].as_ref().map(|o| o.code).map_err(|e| e.kind());
    assert_eq!(code(0), Ok(Code::Created), "{:?}", r[0]);
    assert_eq!(code(1), Ok(Code::AccountNotFound), "{:?}", r[1]);
    assert_eq!(code(2), Ok(Code::ContactAmbiguous), "{:?}", r[2]);
    assert_eq!(code(3), Ok(Code::SalesforceRejected), "{:?}", r[3]);
    assert!(
        r[3].as_ref()
            .unwrap()
            .detail
            .contains("INVALID_EMAIL_ADDRESS"),
        "{:?}",
        r[3]
    );
    assert_eq!(
        code(4),
        Ok(Code::Created),
        "a brief lock is retried: {:?}",
        r[4]
    );
    let locked = r[5].as_ref().unwrap_err();
    assert!(
        locked.is_transient() && locked.to_string().contains("UNABLE_TO_LOCK_ROW"),
        "a held lock is retried later: {locked}"
    );
    assert_eq!(t.linked("OK").len(), 1);
    assert_eq!(t.linked("BR").len(), 1);
    assert!(t.linked("LK").is_empty() && t.linked("IV").is_empty() && t.linked("AM").is_empty());
    // The failures are recorded in each learner's history (not the transient one).
    assert_eq!(
        t.store.history("NA", 5).await.unwrap()[0].code,
        "account_not_found"
    );
    assert!(t.store.history("LK", 5).await.unwrap().is_empty());
    // Batched: Accounts and Contacts read once each, one upsert call (+ the lock retries).
    let calls = t.org.total_requests() - before;
    assert!(
        calls <= 8,
        "{calls} calls: {:?}",
        t.org.requests_by_endpoint()
    );
}

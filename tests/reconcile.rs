//! Reconcile against the sandboxes: every drift kind created by hand in the Salesforce
//! sandbox is reported by a dry run that writes nothing anywhere.

#[path = "reconcile/reconcile_rig.rs"]
mod reconcile_rig;
#[path = "reconcile/repair.rs"]
mod repair;

use reconcile_rig::*;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::Utc;
use serde_json::json;
use syncback::config::ReconcileSettings;
use syncback::salesforce::Record;
use syncback::sandbox::salesforce::Org;
use syncback::sync::reconcile::pass::LAST_PASS;
use syncback::sync::reconcile::{DriftKind, PassKind, Selection};
use syncback::sync::rules;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_drift_kind_is_reported_by_a_dry_run_that_writes_nothing() {
    let r = rig().await;
    drifted(&r).await;

    let before_contacts = r.org.records("Contact");
    let before_children = r.org.records(rules::ENROLLMENT_OBJECT);
    r.org.reset_counts();
    let rec = r.reconciler(ReconcileSettings::default());
    let report = rec
        .run(
            &Selection::All { department: None },
            PassKind::Full,
            true,
            &|_| {},
        )
        .await
        .unwrap();
    let found: BTreeMap<String, BTreeSet<DriftKind>> =
        report.drifts.iter().fold(BTreeMap::new(), |mut m, d| {
            m.entry(d.learner_id.clone()).or_default().insert(d.kind);
            m
        });
    let want = |k: DriftKind| BTreeSet::from([k]);
    assert_eq!(found.get("L1"), Some(&want(DriftKind::MissingContact)));
    assert_eq!(found.get("L2"), Some(&want(DriftKind::LinkMissing)));
    assert_eq!(found.get("L3"), Some(&want(DriftKind::LinkWrong)));
    assert_eq!(found.get("L4"), Some(&want(DriftKind::StaleLink)));
    assert_eq!(found.get("L5"), Some(&want(DriftKind::FieldDrift)));
    assert_eq!(found.get("L6"), Some(&want(DriftKind::WrongAccount)));
    assert_eq!(found.get("L7"), Some(&want(DriftKind::MissingChild)));
    assert_eq!(found.get("L8"), Some(&want(DriftKind::ExtraChild)));
    assert_eq!(found.get("L9"), Some(&want(DriftKind::ContactDeleted)));
    assert_eq!(found.get("L10"), None, "{:#?}", report.drifts);
    assert_eq!(found.get("L11"), Some(&want(DriftKind::StaleLink)));
    assert_eq!(found.len(), 10);
    let l5 = report.drifts.iter().find(|d| d.learner_id == "L5").unwrap();
    assert_eq!(l5.detail, r#"LastName "Smyth" → "LastL5""#);
    assert_eq!(report.learners, 11);
    assert!(report.problems.is_empty(), "{:?}", report.problems);

    // Nothing written anywhere: only queries reached Salesforce, no outcome, no checkpoint,
    // no lease.
    let endpoints: Vec<String> = r
        .org
        .requests_by_endpoint()
        .into_iter()
        .map(|(e, _)| e)
        .collect();
    assert_eq!(endpoints, vec!["GET query".to_string()]);
    assert_eq!(r.org.records("Contact"), before_contacts);
    assert_eq!(r.org.records(rules::ENROLLMENT_OBJECT), before_children);
    for l in ["L1", "L2", "L4", "L9"] {
        assert!(r.store.history(l, 10).await.unwrap().is_empty());
    }
    assert_eq!(r.store.checkpoint(LAST_PASS).await.unwrap(), None);
    assert!(r
        .store
        .try_lease("reconcile", "someone-else", Duration::from_secs(1))
        .await
        .unwrap());
    assert_eq!(r.store.learner("L1").await.unwrap(), None);

    // Narrowed passes: one learner, or one department subtree.
    let one = rec
        .run(
            &Selection::Learners(vec!["L5".into(), "L10".into()]),
            PassKind::Full,
            true,
            &|_| {},
        )
        .await
        .unwrap();
    assert_eq!(one.learners, 2);
    assert_eq!(one.drifts.len(), 1);
    let sales = rec
        .run(
            &Selection::All {
                department: Some("43".into()),
            },
            PassKind::Full,
            true,
            &|_| {},
        )
        .await
        .unwrap();
    assert_eq!(sales.learners, 1);
    assert_eq!(sales.drifts[0].kind, DriftKind::WrongAccount);
    let outside = rec
        .run(
            &Selection::All {
                department: Some("99".into()),
            },
            PassKind::Full,
            true,
            &|_| {},
        )
        .await;
    assert!(outside
        .unwrap_err()
        .to_string()
        .contains("not inside the configured scope"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_changed_since_the_last_pass_name_their_learners() {
    let r = rig().await;
    let eng = ("42", "Engineering");
    let c1 = r.synced("M1", eng).await;
    r.synced("M2", eng).await;
    let rec = r.reconciler(ReconcileSettings::default());
    // A link cleared on M1's Contact: found through the store.
    r.set("Contact", &c1, "SkillSync_User_Id__c", json!(null))
        .await;
    let ids = rec.modified_since(Utc::now()).await.unwrap();
    assert_eq!(ids, vec!["M1".to_string(), "M2".to_string()]);
    let ids = rec
        .modified_since(Utc::now() + chrono::Duration::minutes(5))
        .await
        .unwrap();
    assert!(ids.is_empty(), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_dry_run_prints_json_lines_and_csv_and_exit_codes_say_whether_drift_was_found() {
    let r = rig().await;
    let eng = ("42", "Engineering");
    let c1 = r.synced("J1", eng).await;
    r.set("Contact", &c1, "LastName", json!("Smyth")).await;
    r.synced("J2", eng).await;
    let cfg = r.config("").await;
    let csv = r._dir.path().join("drift.csv");
    let (code, out, err) = syncback(
        &cfg,
        &[
            "reconcile",
            "--dry-run",
            "--json",
            "--csv",
            csv.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(code, 6, "drift found: exit 6\n{out}\n{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{out}");
    assert_eq!(lines[0]["learner_id"], "J1");
    assert_eq!(lines[0]["kind"], "field_drift");
    assert_eq!(lines[0]["detail"], r#"LastName "Smyth" → "LastJ1""#);
    assert_eq!(lines[0]["field"], "LastName");
    assert!(err.contains("DRY RUN"), "{err}");
    assert!(err.contains("field_drift"), "{err}");
    let csv = std::fs::read_to_string(&csv).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(
        rows[0],
        "learner_id,kind,contact_id,field,salesforce,expected,action,detail"
    );
    assert!(rows[1].starts_with(&format!(
        "J1,field_drift,{c1},LastName,Smyth,LastJ1,would_repair,"
    )));
    // One learner in sync: exit 0, a readable summary.
    let (code, out, err) = syncback(&cfg, &["reconcile", "--dry-run", "--learner", "J2"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("no drift"), "{out}");
    assert!(out.contains("learners checked 1"), "{out}");
    // Nothing was written: no lease, no checkpoint, no outcome.
    assert_eq!(r.store.checkpoint(LAST_PASS).await.unwrap(), None);
    assert!(r.store.history("J1", 5).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_write_times_out_for_the_client_and_lands_later() {
    use syncback::config::{SalesforceSettings, Secret};
    use syncback::salesforce::SalesforceApi;
    let r = rig().await;
    let c = r.synced("H1", ("42", "Engineering")).await;
    let (sf, _) = r.org.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let client = syncback::salesforce::Client::new(&SalesforceSettings {
        login_url: format!("http://{sf}"),
        client_id: Org::CLIENT_ID.into(),
        client_secret: Secret::new(Org::CLIENT_SECRET),
        timeout_secs: 1,
        ..Default::default()
    })
    .unwrap();
    r.org.hold_next_writes(1, Duration::from_millis(2500));
    let mut rec = Record::new();
    rec.insert("LastName".into(), json!("Late"));
    let err = client.update("Contact", &c, &rec).await.unwrap_err();
    assert_eq!(err.code(), "TIMEOUT", "{err}");
    assert_ne!(
        r.org.record("Contact", &c).unwrap()["LastName"],
        json!("Late")
    );
    // Reads are not held; the next write is not either.
    assert!(client.query("SELECT Id FROM Contact").await.is_ok());
    tokio::time::sleep(Duration::from_millis(2000)).await;
    assert_eq!(
        r.org.record("Contact", &c).unwrap()["LastName"],
        json!("Late")
    );
}

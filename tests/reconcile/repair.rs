//! Repairs: every drift kind repaired through the one apply path (Engine::apply), the
//! `report` policy, the CLI's repair run and `learner status`, and the late-landing write
//! caught by the continuous reconciler within `reconcile.uncertain_after_secs`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde_json::{json, Value};
use syncback::config::{OnFieldDrift, ReconcileSettings};
use syncback::model::{Envelope, LearnerStatus};
use syncback::sync::reconcile::wiring::UncertainMarker;
use syncback::sync::reconcile::{DriftKind, PassKind, Selection};
use syncback::sync::rules;

use super::reconcile_rig::*;

const LINK: &str = "SkillSync_User_Id__c";

/// The Contacts carrying `learner`'s link.
fn carriers(r: &Rig, learner: &str) -> Vec<String> {
    r.org
        .records("Contact")
        .into_iter()
        .filter(|c| c.get(LINK) == Some(&json!(learner)))
        .map(|c| c["Id"].as_str().unwrap().to_string())
        .collect()
}

fn children_of(r: &Rig, contact: &str) -> Vec<String> {
    r.org
        .records(rules::ENROLLMENT_OBJECT)
        .into_iter()
        .filter(|e| e["Contact__c"] == json!(contact))
        .map(|e| e[rules::ENROLLMENT_EXT_ID].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_drift_kind_is_repaired_through_the_apply_path() {
    let r = rig().await;
    let c = drifted(&r).await;
    let rec = r.repairing(ReconcileSettings::default(), r.engine(None));
    let all = Selection::All { department: None };
    let report = rec.run(&all, PassKind::Full, false, &|_| {}).await.unwrap();
    assert!(report.failures.is_empty(), "{:#?}", report.failures);
    assert_eq!(report.drifts.len(), 10, "{:#?}", report.drifts);
    assert_eq!(report.remaining(), 0, "{:#?}", report.repaired);
    assert_eq!(
        syncback::cli::reconcile::exit_code(&report),
        std::process::ExitCode::SUCCESS
    );
    // A second look finds nothing.
    let again = rec.run(&all, PassKind::Full, true, &|_| {}).await.unwrap();
    assert!(again.drifts.is_empty(), "{:#?}", again.drifts);

    // Each learner: exactly one Contact carries the link — the remembered one if it exists.
    assert_eq!(carriers(&r, "L1").len(), 1, "L1 got a Contact");
    assert_eq!(carriers(&r, "L2"), vec![c["L2"].clone()]);
    assert_eq!(carriers(&r, "L3"), vec![c["L3"].clone()]);
    assert!(carriers(&r, "L4").is_empty(), "deactivated L4 unlinked");
    let l5 = r.org.record("Contact", &c["L5"]).unwrap();
    assert_eq!(l5["LastName"], json!("LastL5"));
    let l6 = r.org.record("Contact", &c["L6"]).unwrap();
    assert_eq!(l6["AccountId"], json!(r.accounts["Sales"]));
    assert_eq!(children_of(&r, &c["L7"]), vec!["EL7".to_string()]);
    assert_eq!(children_of(&r, &c["L8"]), vec!["EL8".to_string()]);
    let l9 = carriers(&r, "L9");
    assert_eq!(l9.len(), 1);
    assert_ne!(l9[0], c["L9"]);
    assert!(
        carriers(&r, "L11").is_empty(),
        "L11 left the scope: unlinked"
    );
    assert!(
        r.org.record("Contact", &c["L11"]).is_some(),
        "Contacts stay"
    );
    let st = r.store.learner("L9").await.unwrap().unwrap();
    assert_eq!(st.contact_id.as_deref(), Some(l9[0].as_str()));

    // Each repair is an outcome in the learner's history.
    let h = r.store.history("L5", 5).await.unwrap();
    assert!(
        h.iter().any(|o| o.event_type == "snapshot.reconcile"
            && o.detail
                .contains(r#"reconciled: field_drift LastName "Smyth" → "LastL5""#)),
        "{h:#?}"
    );
    // L10 was in sync: not touched.
    assert!(r.store.history("L10", 5).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_policy_leaves_a_salesforce_edit_and_reports_it() {
    let r = rig().await;
    let c = r.synced("P1", ("43", "Sales")).await;
    r.set("Contact", &c, "LastName", json!("Smyth")).await;
    // The Account is always repaired (R7), whatever the policy.
    r.set("Contact", &c, "AccountId", json!(r.accounts["Prospects"]))
        .await;
    let settings = ReconcileSettings {
        on_field_drift: OnFieldDrift::Report,
        ..Default::default()
    };
    let rec = r.repairing(settings, r.engine(None));
    let sel = Selection::Learners(vec!["P1".into()]);
    let report = rec.run(&sel, PassKind::Full, false, &|_| {}).await.unwrap();
    let kinds: BTreeMap<DriftKind, bool> = report
        .drifts
        .iter()
        .map(|d| (d.kind, d.report_only))
        .collect();
    assert_eq!(
        kinds,
        BTreeMap::from([
            (DriftKind::FieldDrift, true),
            (DriftKind::WrongAccount, false)
        ])
    );
    assert_eq!(report.remaining(), 1);
    let contact = r.org.record("Contact", &c).unwrap();
    assert_eq!(contact["LastName"], json!("Smyth"), "the edit stays");
    assert_eq!(contact["AccountId"], json!(r.accounts["Sales"]));
    // Reported again by the next pass, and nothing else.
    let again = rec.run(&sel, PassKind::Full, true, &|_| {}).await.unwrap();
    assert_eq!(again.drifts.len(), 1);
    assert_eq!(again.drifts[0].detail, r#"LastName "Smyth" → "LastP1""#);
    assert!(again.drifts[0].report_only);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_repair_run_exits_0_and_learner_status_shows_the_repair() {
    let r = rig().await;
    let c = r.synced("S1", ("42", "Engineering")).await;
    r.set("Contact", &c, "LastName", json!("Smyth")).await;
    let cfg = r.config("").await;
    let csv = r._dir.path().join("repair.csv");
    let (code, out, err) = syncback(&cfg, &["reconcile", "--csv", csv.to_str().unwrap()]).await;
    assert_eq!(code, 0, "everything found was repaired\n{out}\n{err}");
    assert!(out.contains("field_drift"), "{out}");
    assert!(
        std::fs::read_to_string(&csv)
            .unwrap()
            .contains(",repaired,"),
        "csv says repaired"
    );
    assert_eq!(
        r.org.record("Contact", &c).unwrap()["LastName"],
        json!("LastS1")
    );
    let (code, out, err) = syncback(&cfg, &["learner", "status", "S1"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains(r#"reconciled: field_drift LastName "Smyth" → "LastS1""#),
        "{out}"
    );
    // Nothing left: a dry run exits 0.
    let (code, out, _) = syncback(&cfg, &["reconcile", "--dry-run"]).await;
    assert_eq!(code, 0, "{out}");
}

fn event(id: &str, ty: &str, learner: &syncback::model::Learner) -> Envelope {
    serde_json::from_value(
        json!({"id": id, "type": ty, "occurred_at": Utc::now().to_rfc3339(),
        "data": {"learner": learner}}),
    )
    .unwrap()
}

/// The sequence found from outside: a `learner.updated` PATCH is held past the client
/// timeout, the retry succeeds, the deactivation unlinks, then the held PATCH lands and
/// re-links the Contact. The continuous reconciler re-verifies the learner marked uncertain
/// and Salesforce matches SkillSync again within `reconcile.uncertain_after_secs`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_landing_write_is_repaired_within_uncertain_after_secs() {
    use syncback::config::{SalesforceSettings, Secret};
    use syncback::sandbox::salesforce::Org;
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
    let engine = r.engine(Some(Arc::new(UncertainMarker {
        inner: Arc::new(client),
        store: r.store.clone(),
        link_field: LINK.into(),
    })));
    let window = 8;
    let settings = ReconcileSettings {
        interval_secs: 3600,
        uncertain_after_secs: window,
        ..Default::default()
    };
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let bg = tokio::spawn(syncback::sync::reconcile::continuous::run(
        Arc::new(r.repairing(settings, engine.clone())),
        None,
        shutdown,
    ));

    let mut l = learner("H1", ("42", "Engineering"));
    l.last_name = Some("Late".into());
    r.lms.upsert_learner(l.clone());
    r.org.hold_next_writes(1, Duration::from_millis(2500));
    let t0 = Instant::now();
    let updated = event("evt_h1", "learner.updated", &l);
    let first = engine
        .apply(vec![updated.clone().into()])
        .await
        .pop()
        .unwrap();
    assert!(first.is_err(), "the held write timed out: {first:?}");
    let marks = r.store.uncertain(10).await.unwrap();
    assert!(marks.iter().any(|m| m.learner_id == "H1"), "{marks:?}");
    // R13: retried, succeeds; then the deactivation unlinks (R9).
    let retry = engine.apply(vec![updated.into()]).await.pop().unwrap();
    assert!(retry.is_ok(), "{retry:?}");
    l.status = LearnerStatus::Inactive;
    r.lms.upsert_learner(l.clone());
    tokio::time::sleep(Duration::from_millis(20)).await;
    let off = engine
        .apply(vec![event("evt_h2", "learner.deactivated", &l).into()])
        .await
        .pop()
        .unwrap();
    assert!(off.is_ok(), "{off:?}");
    assert!(
        carriers(&r, "H1").is_empty(),
        "unlinked by the deactivation"
    );

    // The held PATCH lands and re-links; reconcile puts it right within the window.
    let mut relinked = false;
    loop {
        let linked = !carriers(&r, "H1").is_empty();
        relinked |= linked;
        if relinked && !linked {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(window),
            "Salesforce did not match SkillSync within {window} s (held write landed: {relinked})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let contact = r.org.record("Contact", &c).unwrap();
    assert!(contact.get(LINK).is_none_or(Value::is_null));
    let st = r.store.learner("H1").await.unwrap().unwrap();
    assert_eq!(st.link.as_str(), "deactivated");
    let h = r.store.history("H1", 10).await.unwrap();
    assert!(
        h.iter()
            .any(|o| o.event_type == "snapshot.reconcile" && o.detail.contains("stale_link")),
        "{h:#?}"
    );
    stop.send(true).unwrap();
    bg.await.unwrap();
}

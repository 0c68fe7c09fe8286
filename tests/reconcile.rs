//! Reconcile against the sandboxes: every drift kind created by hand in the Salesforce
//! sandbox is reported by a dry run that writes nothing anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use serde_json::json;
use syncback::config::{AccountRule, ReconcileSettings, Scope, SyncSettings};
use syncback::model::{Enrollment, EnrollmentStatus, Learner, LearnerStatus};
use syncback::salesforce::Record;
use syncback::sandbox::salesforce::Org;
use syncback::sandbox::skillsync::Lms;
use syncback::skillsync::scope::ScopeResolver;
use syncback::store::{LearnerState, LinkState, Store};
use syncback::sync::reconcile::pass::LAST_PASS;
use syncback::sync::reconcile::{DriftKind, PassKind, Reconciler, Selection};
use syncback::sync::rules;

struct Rig {
    org: Org,
    lms: Lms,
    store: Arc<dyn Store>,
    accounts: BTreeMap<String, String>,
    _dir: tempfile::TempDir,
}

fn sync_settings() -> SyncSettings {
    SyncSettings {
        enabled: true,
        source_department_id: "42".into(),
        scope: Scope::WithSubdepartments,
        account_rule: AccountRule::Department,
        ..Default::default()
    }
}

async fn rig() -> Rig {
    let org = Org::new();
    let lms = Lms::new();
    let mut accounts = BTreeMap::new();
    for name in ["Engineering", "Sales", "Prospects"] {
        let mut r = Record::new();
        r.insert("Name".into(), json!(name));
        accounts.insert(name.to_string(), org.insert("Account", r).unwrap());
    }
    lms.add_department("42", "Engineering", None);
    lms.add_department("43", "Sales", Some("42"));
    lms.add_department("99", "Outside", None);
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("rc.db").display());
    let store = syncback::store::open(&url, 4).await.unwrap();
    Rig {
        org,
        lms,
        store,
        accounts,
        _dir: dir,
    }
}

fn learner(id: &str, dept: (&str, &str)) -> Learner {
    Learner {
        id: id.into(),
        username: format!("{}@example.com", id.to_lowercase()),
        email: Some(format!("{}@example.com", id.to_lowercase())),
        first_name: Some("Ada".into()),
        last_name: Some(format!("Last{id}")),
        department_id: Some(dept.0.into()),
        department_name: Some(dept.1.into()),
        status: LearnerStatus::Active,
        fields: Default::default(),
        updated_at: Utc::now(),
    }
}

fn enrollment(id: &str, learner: &str) -> Enrollment {
    Enrollment {
        id: id.into(),
        learner_id: learner.into(),
        course_id: "C1".into(),
        course_name: "Rust".into(),
        status: EnrollmentStatus::InProgress,
        enrolled_at: Utc.with_ymd_and_hms(2026, 11, 1, 9, 0, 0).unwrap(),
        completed_at: None,
        score: Some(80.0),
        updated_at: Utc::now(),
    }
}

impl Rig {
    /// A learner in SkillSync with one enrollment, synced into Salesforce exactly as the rules
    /// say (written by hand, as an admin would find it), and remembered by the store.
    async fn synced(&self, id: &str, dept: (&str, &str)) -> String {
        let l = learner(id, dept);
        self.lms.upsert_learner(l.clone());
        let e = enrollment(&format!("E{id}"), id);
        self.lms.add_enrollment(e.clone());
        let account = self.accounts[dept.1].clone();
        let mut c = rules::contact_fields(&sync_settings(), &l, &account);
        c.insert("SkillSync_User_Id__c".into(), json!(id));
        let contact = self.org.insert("Contact", c).unwrap();
        let mut r = rules::enrollment_fields(&e, &contact);
        r.insert(rules::ENROLLMENT_EXT_ID.into(), json!(e.id));
        self.org.insert(rules::ENROLLMENT_OBJECT, r).unwrap();
        self.store
            .put_learner(&LearnerState {
                learner_id: id.into(),
                contact_id: Some(contact.clone()),
                link: LinkState::Linked,
                account_id: Some(account),
                last_outcome: Some("applied: created".into()),
                last_error: None,
                updated_at: Utc::now(),
            })
            .await
            .unwrap();
        contact
    }

    async fn set(&self, sobject: &str, id: &str, field: &str, v: serde_json::Value) {
        use syncback::salesforce::SalesforceApi;
        let mut r = Record::new();
        r.insert(field.into(), v);
        self.org.update(sobject, id, &r).await.unwrap();
    }

    fn reconciler(&self, settings: ReconcileSettings) -> Reconciler {
        let ss: Arc<dyn syncback::skillsync::SkillSyncApi> = Arc::new(self.lms.clone());
        let org = self.org.clone();
        Reconciler {
            sync: sync_settings(),
            settings,
            sf: Arc::new(self.org.clone()),
            ss: ss.clone(),
            scope: Arc::new(ScopeResolver::new(
                ss,
                "42",
                Scope::WithSubdepartments,
                Duration::from_secs(300),
            )),
            store: self.store.clone(),
            repair: None,
            sf_calls: Some(Arc::new(move || org.total_requests())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_drift_kind_is_reported_by_a_dry_run_that_writes_nothing() {
    let r = rig().await;
    let eng = ("42", "Engineering");
    // L1 missing_contact: in SkillSync, never synced.
    r.lms.upsert_learner(learner("L1", eng));
    // L2 link_missing: an admin cleared the link field.
    let c2 = r.synced("L2", eng).await;
    r.set("Contact", &c2, "SkillSync_User_Id__c", json!(null))
        .await;
    // L3 link_wrong: a second Contact carries the same learner.
    r.synced("L3", eng).await;
    let mut twin = Record::new();
    twin.insert("LastName".into(), json!("Twin"));
    twin.insert("SkillSync_User_Id__c".into(), json!("L3"));
    r.org.insert_unchecked("Contact", twin);
    // L4 stale_link: deactivated in SkillSync and in the store, still linked in Salesforce
    // (the late-landing write).
    r.synced("L4", eng).await;
    let mut l4 = learner("L4", eng);
    l4.status = LearnerStatus::Inactive;
    r.lms.upsert_learner(l4);
    let mut st = r.store.learner("L4").await.unwrap().unwrap();
    st.link = LinkState::Deactivated;
    r.store.put_learner(&st).await.unwrap();
    // L5 field_drift: LastName edited in Salesforce.
    let c5 = r.synced("L5", eng).await;
    r.set("Contact", &c5, "LastName", json!("Smyth")).await;
    // L6 wrong_account: moved to another Account by hand.
    let c6 = r.synced("L6", ("43", "Sales")).await;
    r.set("Contact", &c6, "AccountId", json!(r.accounts["Prospects"]))
        .await;
    // L7 missing_child: the enrollment record was deleted.
    let c7 = r.synced("L7", eng).await;
    for e in r.org.records(rules::ENROLLMENT_OBJECT) {
        if e["Contact__c"] == json!(c7) {
            r.org
                .remove(rules::ENROLLMENT_OBJECT, e["Id"].as_str().unwrap());
        }
    }
    // L8 extra_child: SkillSync no longer has one of the Contact's enrollments.
    let c8 = r.synced("L8", eng).await;
    let mut extra = rules::enrollment_fields(&enrollment("GONE", "L8"), &c8);
    extra.insert(rules::ENROLLMENT_EXT_ID.into(), json!("GONE"));
    r.org.insert(rules::ENROLLMENT_OBJECT, extra).unwrap();
    // L9 contact_deleted: the remembered Contact was deleted in Salesforce.
    let c9 = r.synced("L9", eng).await;
    r.org.remove("Contact", &c9);
    // L10 in sync.
    r.synced("L10", eng).await;
    // L11 left the scope without an event: only the store and the link know it.
    r.synced("L11", eng).await;
    r.lms.upsert_learner(learner("L11", ("99", "Outside")));

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

impl Rig {
    /// Serve both sandboxes over HTTP and write a config file pointing at them.
    async fn config(&self, extra: &str) -> std::path::PathBuf {
        let (sf, _) = self
            .org
            .serve("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let (ss, _) = self
            .lms
            .serve("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let path = self._dir.path().join("syncback.toml");
        std::fs::write(
            &path,
            format!(
                r#"
[store]
url = "sqlite://{db}"
[salesforce]
login_url = "http://{sf}"
client_id = "sandbox-client"
client_secret = "sandbox-secret"
timeout_secs = 1
[skillsync]
base_url = "http://{ss}"
client_id = "sandbox-client"
client_secret = "sandbox-secret"
[sync]
enabled = true
source_department_id = "42"
{extra}
"#,
                db = self._dir.path().join("rc.db").display(),
            ),
        )
        .unwrap();
        path
    }
}

async fn syncback(cfg: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_syncback"))
        .arg("--config")
        .arg(cfg)
        .args(args)
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
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

//! The reconcile tests' rig: both sandboxes, a SQLite store, learners synced by hand.

use std::collections::BTreeMap;
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
use syncback::sync::reconcile::wiring::EngineRepair;
use syncback::sync::reconcile::Reconciler;
use syncback::sync::{rules, Engine, SettingsHandle};

pub struct Rig {
    pub org: Org,
    pub lms: Lms,
    pub store: Arc<dyn Store>,
    pub accounts: BTreeMap<String, String>,
    pub _dir: tempfile::TempDir,
}

pub fn sync_settings() -> SyncSettings {
    SyncSettings {
        enabled: true,
        source_department_id: "42".into(),
        scope: Scope::WithSubdepartments,
        account_rule: AccountRule::Department,
        ..Default::default()
    }
}

pub async fn rig() -> Rig {
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

pub fn learner(id: &str, dept: (&str, &str)) -> Learner {
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

pub fn enrollment(id: &str, learner: &str) -> Enrollment {
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
    pub async fn synced(&self, id: &str, dept: (&str, &str)) -> String {
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

    pub async fn set(&self, sobject: &str, id: &str, field: &str, v: serde_json::Value) {
        use syncback::salesforce::SalesforceApi;
        let mut r = Record::new();
        r.insert(field.into(), v);
        self.org.update(sobject, id, &r).await.unwrap();
    }

    /// The sync engine over `sf` (the sandbox org by default), as `work` builds it.
    pub fn engine(&self, sf: Option<Arc<dyn syncback::salesforce::SalesforceApi>>) -> Arc<Engine> {
        let ss: Arc<dyn syncback::skillsync::SkillSyncApi> = Arc::new(self.lms.clone());
        let mut e = Engine::new(
            SettingsHandle::fixed(sync_settings()),
            sf.unwrap_or_else(|| Arc::new(self.org.clone())),
            ss.clone(),
            Arc::new(ScopeResolver::new(
                ss,
                "42",
                Scope::WithSubdepartments,
                Duration::from_secs(300),
            )),
            self.store.clone(),
            Duration::from_secs(60),
            Duration::from_secs(30),
        );
        e.set_lease_wait(Duration::from_secs(1));
        Arc::new(e)
    }

    /// A reconciler that repairs through `engine`.
    pub fn repairing(&self, settings: ReconcileSettings, engine: Arc<Engine>) -> Reconciler {
        Reconciler {
            repair: Some(Arc::new(EngineRepair { engine })),
            ..self.reconciler(settings)
        }
    }

    pub fn reconciler(&self, settings: ReconcileSettings) -> Reconciler {
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

/// Every drift kind created by hand in the Salesforce sandbox (L1–L9, L11), and L10 in sync.
/// Returns the Contacts by learner.
pub async fn drifted(r: &Rig) -> BTreeMap<&'static str, String> {
    let mut c = BTreeMap::new();
    let eng = ("42", "Engineering");
    // L1 missing_contact: in SkillSync, never synced.
    r.lms.upsert_learner(learner("L1", eng));
    // L2 link_missing: an admin cleared the link field.
    let c2 = r.synced("L2", eng).await;
    r.set("Contact", &c2, "SkillSync_User_Id__c", json!(null))
        .await;
    // L3 link_wrong: a second Contact carries the same learner.
    c.insert("L3", r.synced("L3", eng).await);
    let mut twin = Record::new();
    twin.insert("LastName".into(), json!("Twin"));
    twin.insert("SkillSync_User_Id__c".into(), json!("L3"));
    r.org.insert_unchecked("Contact", twin);
    // L4 stale_link: deactivated in SkillSync and in the store, still linked in Salesforce
    // (the late-landing write).
    c.insert("L4", r.synced("L4", eng).await);
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
    c.insert("L10", r.synced("L10", eng).await);
    // L11 left the scope without an event: only the store and the link know it.
    c.insert("L11", r.synced("L11", eng).await);
    r.lms.upsert_learner(learner("L11", ("99", "Outside")));
    c.insert("L2", c2);
    c.insert("L5", c5);
    c.insert("L6", c6);
    c.insert("L7", c7);
    c.insert("L8", c8);
    c.insert("L9", c9);
    c
}

impl Rig {
    /// Serve both sandboxes over HTTP and write a config file pointing at them.
    pub async fn config(&self, extra: &str) -> std::path::PathBuf {
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

pub async fn syncback(cfg: &std::path::Path, args: &[&str]) -> (i32, String, String) {
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

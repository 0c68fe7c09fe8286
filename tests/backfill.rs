//! `syncback backfill` against the sandboxes over HTTP: a 10,000-learner department tree,
//! calls per learner, dry run, and resuming after an interruption (issue: SkillSync side).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use serde_json::{json, Value};
use syncback::config::{SalesforceSettings, Scope, Secret, SkillSyncSettings, SyncSettings};
use syncback::model::{Learner, LearnerStatus};
use syncback::salesforce::{Describe, Record, SalesforceApi, SaveResult, SfError, UpsertResult};
use syncback::sandbox::salesforce::Org;
use syncback::sandbox::skillsync::Lms;
use syncback::skillsync::scope::ScopeResolver;
use syncback::store::{LinkState, Store};
use syncback::sync::backfill::Backfill;
use syncback::sync::{Engine, SettingsHandle};

fn rec(v: Value) -> Record {
    v.as_object().unwrap().clone()
}

fn learner(i: usize, dept: (&str, &str), status: LearnerStatus) -> Learner {
    Learner {
        id: format!("B{i:05}"),
        username: format!("learner{i}@backfill.example"),
        email: Some(format!("learner{i}@backfill.example")),
        first_name: Some("First".into()),
        last_name: Some(format!("Last{i}")),
        department_id: Some(dept.0.into()),
        department_name: Some(dept.1.into()),
        status,
        fields: Default::default(),
        updated_at: Utc::now(),
    }
}

struct World {
    org: Org,
    lms: Lms,
    accounts: HashMap<&'static str, String>,
    sf_url: String,
    ss_url: String,
    /// Learners the backfill should end up linking.
    expected_linked: usize,
    /// Pre-existing Contacts matching a learner (to be linked, some moved).
    matching: Vec<String>,
}

/// `n` learners: 42 Engineering → 43 Sales → 44 Research (no Account); 99 Outside.
/// Every 10th learner already has a Contact (in the wrong Account: it must move);
/// Research learners fail (no Account), Outside learners are out of scope, every 50th is
/// inactive, two share a username with two Contacts (ambiguous).
async fn world(n: usize) -> World {
    let org = Org::new();
    let lms = Lms::new();
    let mut accounts = HashMap::new();
    for name in ["Engineering", "Sales", "Prospects"] {
        accounts.insert(
            name,
            org.insert("Account", rec(json!({"Name": name}))).unwrap(),
        );
    }
    lms.add_department("42", "Engineering", None);
    lms.add_department("43", "Sales", Some("42"));
    lms.add_department("44", "Research", Some("43"));
    lms.add_department("99", "Outside", None);
    let mut expected_linked = 0;
    let mut matching = Vec::new();
    for i in 0..n {
        let dept = match i % 20 {
            0..=9 => ("42", "Engineering"),
            10..=16 => ("43", "Sales"),
            17 => ("44", "Research"),
            _ => ("99", "Outside"),
        };
        let status = if i % 50 == 1 {
            LearnerStatus::Inactive
        } else {
            LearnerStatus::Active
        };
        let l = learner(i, dept, status);
        if i % 10 == 3 && dept.0 != "99" {
            matching.push(
                org.insert("Contact", rec(json!({"LastName": "Old", "Email": l.username, "AccountId": accounts["Prospects"]})))
                    .unwrap(),
            );
        }
        if status == LearnerStatus::Active && (dept.0 == "42" || dept.0 == "43") {
            expected_linked += 1;
        }
        lms.upsert_learner(l);
    }
    // Two Contacts share learner 5's username: ambiguous, nothing written.
    for _ in 0..2 {
        org.insert(
            "Contact",
            rec(json!({"LastName": "Dup", "Email": "learner5@backfill.example"})),
        )
        .unwrap();
    }
    expected_linked -= 1;
    let (sf, _) = org.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (ss, _) = lms.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    World {
        org,
        lms,
        accounts,
        sf_url: format!("http://{sf}"),
        ss_url: format!("http://{ss}"),
        expected_linked,
        matching,
    }
}

fn sync_settings() -> SyncSettings {
    SyncSettings {
        enabled: true,
        source_department_id: "42".into(),
        scope: Scope::WithSubdepartments,
        ..Default::default()
    }
}

struct Clients {
    sf: syncback::salesforce::Client,
    ss: Arc<syncback::skillsync::Client>,
    scope: Arc<ScopeResolver>,
}

fn clients(w: &World) -> Clients {
    let sf = syncback::salesforce::Client::new(&SalesforceSettings {
        login_url: w.sf_url.clone(),
        client_id: Org::CLIENT_ID.into(),
        client_secret: Secret::new(Org::CLIENT_SECRET),
        ..Default::default()
    })
    .unwrap();
    let ss = Arc::new(
        syncback::skillsync::Client::new(&SkillSyncSettings {
            base_url: w.ss_url.clone(),
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
    Clients { sf, ss, scope }
}

async fn run_backfill(
    settings: &SyncSettings,
    c: &Clients,
    store: &Arc<dyn Store>,
    dry_run: bool,
) -> syncback::sync::backfill::Summary {
    let counter = c.sf.clone();
    let calls = move || counter.total_calls();
    let engine = engine(
        settings,
        Arc::new(c.sf.clone()),
        c.ss.clone(),
        c.scope.clone(),
        store.clone(),
    );
    Backfill {
        engine: &engine,
        ss: c.ss.as_ref(),
        scope: &c.scope,
        dry_run,
        restart: false,
        progress: None,
        sf_calls: Some(&calls),
    }
    .run()
    .await
    .unwrap()
}

/// The one apply path, as `syncback backfill` builds it.
fn engine(
    settings: &SyncSettings,
    sf: Arc<dyn SalesforceApi>,
    ss: Arc<dyn syncback::skillsync::SkillSyncApi>,
    scope: Arc<ScopeResolver>,
    store: Arc<dyn Store>,
) -> Engine {
    Engine::new(
        SettingsHandle::fixed(settings.clone()),
        sf,
        ss,
        scope,
        store,
        Duration::from_secs(300),
        Duration::from_secs(60),
    )
}

async fn sqlite() -> (tempfile::TempDir, Arc<dyn Store>) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bf.db").display());
    let store = syncback::store::open(&url, 4).await.unwrap();
    (dir, store)
}

/// Learners in the batching test: enough for several Salesforce collections (200 records)
/// and SkillSync pages, small enough to run in seconds. The 10,000-learner figure is
/// measured by `cargo bench --bench backfill`.
const N: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_is_batched_and_complete() {
    let w = world(N).await;
    let c = clients(&w);
    let (_dir, store) = sqlite().await;
    let settings = sync_settings();
    // Dry run first: a plan, and nothing written.
    let contacts_before = w.org.records("Contact").len();
    let dry = run_backfill(&settings, &c, &store, true).await;
    assert_eq!(
        w.org.records("Contact").len(),
        contacts_before,
        "dry run writes nothing"
    );
    assert!(dry.created > 0 && dry.linked > 0);
    assert!(
        dry.plan.iter().any(|l| l.contains("account_not_found")),
        "the plan names failures"
    );
    assert!(dry.plan.iter().any(|l| l.contains("contact_ambiguous")));
    assert!(
        store.learner("B00000").await.unwrap().is_none(),
        "dry run records nothing"
    );
    let dry_text = dry.to_string();
    assert!(dry_text.contains("DRY RUN"), "{dry_text}");

    let s = run_backfill(&settings, &c, &store, false).await;
    println!("{s}");
    assert_eq!(
        s.seen,
        (N * 18 / 20) as u64,
        "learners listed from the in-scope departments 42, 43, 44"
    );
    assert_eq!(s.created + s.linked, w.expected_linked as u64, "{s:?}");
    assert_eq!(
        s.linked,
        w.matching.len() as u64,
        "every pre-existing Contact linked: {s:?}"
    );
    assert_eq!(
        s.failed.get("account_not_found").copied(),
        Some((N / 20) as u64),
        "Research learners"
    );
    assert_eq!(s.failed.get("contact_ambiguous").copied(), Some(1));
    assert_eq!(
        (dry.created, dry.linked),
        (s.created, s.linked),
        "the dry run planned what happened"
    );
    let per_learner = s.salesforce_calls as f64 / s.seen as f64;
    println!(
        "backfill: {} Salesforce calls for {} learners = {per_learner:.4} per learner in {} ms",
        s.salesforce_calls, s.seen, s.elapsed_ms
    );
    assert!(per_learner <= 0.02, "{per_learner} calls per learner");

    // Salesforce ends with exactly one Contact per synced learner, moved to its Account.
    let contacts = w.org.records("Contact");
    let mut by_link: HashMap<&str, usize> = HashMap::new();
    for c in &contacts {
        if let Some(l) = c.get("SkillSync_User_Id__c").and_then(Value::as_str) {
            *by_link.entry(l).or_default() += 1;
        }
    }
    assert_eq!(by_link.len(), w.expected_linked);
    assert!(by_link.values().all(|n| *n == 1));
    for id in &w.matching {
        let c = w.org.record("Contact", id).unwrap();
        if c["SkillSync_User_Id__c"].is_string() {
            assert_ne!(c["AccountId"], json!(w.accounts["Prospects"]), "moved (R7)");
        }
    }
    let st = store.learner("B00003").await.unwrap().unwrap();
    assert_eq!(st.link, LinkState::Linked);
    assert_eq!(
        store.checkpoint("backfill").await.unwrap(),
        None,
        "finished: checkpoint cleared"
    );

    // A second run changes nothing and costs about the same few calls.
    let again = run_backfill(&settings, &c, &store, false).await;
    assert_eq!(again.created, 0);
    assert_eq!(w.org.records("Contact").len(), contacts.len());
    let _ = &w.lms;
}

/// A Salesforce that dies after `budget` calls (an interrupted backfill).
struct Dying {
    org: Org,
    left: AtomicU64,
}

impl Dying {
    fn spend(&self) -> Result<(), SfError> {
        if self
            .left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_err()
        {
            return Err(SfError::Transient {
                status: None,
                code: "CONNECT".into(),
                message: "gone".into(),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl SalesforceApi for Dying {
    async fn query(&self, q: &str) -> Result<Vec<Record>, SfError> {
        self.spend()?;
        self.org.query(q).await
    }
    async fn create(&self, s: &str, f: &Record) -> Result<String, SfError> {
        self.spend()?;
        self.org.create(s, f).await
    }
    async fn get(&self, s: &str, id: &str, f: &[&str]) -> Result<Record, SfError> {
        self.spend()?;
        self.org.get(s, id, f).await
    }
    async fn update(&self, s: &str, id: &str, f: &Record) -> Result<(), SfError> {
        self.spend()?;
        self.org.update(s, id, f).await
    }
    async fn delete(&self, s: &str, id: &str) -> Result<(), SfError> {
        self.spend()?;
        self.org.delete(s, id).await
    }
    async fn upsert(&self, s: &str, e: &str, x: &str, f: &Record) -> Result<UpsertResult, SfError> {
        self.spend()?;
        self.org.upsert(s, e, x, f).await
    }
    async fn delete_by_external_id(&self, s: &str, e: &str, x: &str) -> Result<(), SfError> {
        self.spend()?;
        self.org.delete_by_external_id(s, e, x).await
    }
    async fn create_many(&self, r: &[Record], a: bool) -> Result<Vec<SaveResult>, SfError> {
        self.spend()?;
        self.org.create_many(r, a).await
    }
    async fn update_many(&self, r: &[Record], a: bool) -> Result<Vec<SaveResult>, SfError> {
        self.spend()?;
        self.org.update_many(r, a).await
    }
    async fn upsert_many(
        &self,
        s: &str,
        e: &str,
        r: &[Record],
        a: bool,
    ) -> Result<Vec<SaveResult>, SfError> {
        self.spend()?;
        self.org.upsert_many(s, e, r, a).await
    }
    async fn delete_many(&self, ids: &[String], a: bool) -> Result<Vec<SaveResult>, SfError> {
        self.spend()?;
        self.org.delete_many(ids, a).await
    }
    async fn describe(&self, s: &str) -> Result<Describe, SfError> {
        self.spend()?;
        self.org.describe(s).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_backfill_resumes_from_its_checkpoint() {
    let w = world(2_000).await;
    let scope = Arc::new(ScopeResolver::new(
        Arc::new(w.lms.clone()),
        "42",
        Scope::WithSubdepartments,
        Duration::from_secs(300),
    ));
    let (_dir, store) = sqlite().await;
    let settings = sync_settings();
    let dying = Dying {
        org: w.org.clone(),
        left: AtomicU64::new(12),
    };
    let run = |sf: Arc<dyn SalesforceApi>| {
        let store = store.clone();
        let settings = settings.clone();
        let lms = w.lms.clone();
        let scope = scope.clone();
        async move {
            let engine = engine(&settings, sf, Arc::new(lms.clone()), scope.clone(), store);
            Backfill {
                engine: &engine,
                ss: &lms,
                scope: &scope,
                dry_run: false,
                restart: false,
                progress: None,
                sf_calls: None,
            }
            .run()
            .await
        }
    };
    let err = run(Arc::new(dying)).await.unwrap_err();
    assert!(err.to_string().contains("gone"), "{err}");
    let cp = store
        .checkpoint("backfill")
        .await
        .unwrap()
        .expect("a checkpoint after the completed batches");
    let done_before: u64 = serde_json::from_str::<Value>(&cp).unwrap()["summary_seen"]
        .as_u64()
        .unwrap();
    assert!(done_before >= 200, "{cp}");
    let s = run(Arc::new(w.org.clone())).await.unwrap();
    assert_eq!(
        s.seen + done_before,
        1_800,
        "resumed where it stopped: {s:?}"
    );
    let linked = w
        .org
        .records("Contact")
        .iter()
        .filter(|c| c.get("SkillSync_User_Id__c").is_some_and(Value::is_string))
        .count();
    assert_eq!(
        linked, w.expected_linked,
        "every learner linked exactly once across the two runs"
    );
}

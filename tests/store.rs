//! The state store contract, run against real PostgreSQL and against SQLite.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use syncback::model::EntityKind;
use syncback::store::{
    Commit, EntityVersion, EventRecord, LearnerState, LinkState, OutcomeClass, Store,
};

fn t(s: i64, us: u32) -> chrono::DateTime<Utc> {
    Utc.timestamp_opt(1_790_000_000 + s, us * 1000).unwrap()
}

fn record(event: &str, learner: &str, class: OutcomeClass, code: &str) -> EventRecord {
    EventRecord {
        event_id: event.into(),
        event_type: "learner.updated".into(),
        learner_id: learner.into(),
        occurred_at: t(10, 123),
        class,
        code: code.into(),
        detail: format!("detail of {event}"),
        recorded_at: Utc::now(),
    }
}

fn state(learner: &str, contact: Option<&str>, link: LinkState) -> LearnerState {
    LearnerState {
        learner_id: learner.into(),
        contact_id: contact.map(String::from),
        link,
        account_id: Some("001000000000001AAA".into()),
        last_outcome: Some("created".into()),
        last_error: None,
        updated_at: t(0, 5),
    }
}

async fn contract(store: Arc<dyn Store>) {
    store.migrate().await.expect("migrations are idempotent");
    store.ping().await.unwrap();

    // Learner state round-trips, including the remembered Contact of R9.
    assert_eq!(store.learner("L1").await.unwrap(), None);
    let s = state("L1", Some("003000000000001AAA"), LinkState::Deactivated);
    store.put_learner(&s).await.unwrap();
    assert_eq!(store.learner("L1").await.unwrap(), Some(s.clone()));
    store
        .put_learner(&state("L2", None, LinkState::Unlinked))
        .await
        .unwrap();
    let many = store
        .learners(&["L2".into(), "L1".into(), "nope".into()])
        .await
        .unwrap();
    assert_eq!(many.len(), 2);
    assert_eq!(store.all_learners(10).await.unwrap()[0].learner_id, "L1");

    // Commit: history, processed ids, entity version only moves forward (R12).
    let v2 = EntityVersion {
        occurred_at: t(20, 0),
        event_id: "evt_b".into(),
    };
    store
        .commit(&Commit {
            record: record("evt_b", "L1", OutcomeClass::Applied, "updated"),
            mark_processed: true,
            entity: Some((EntityKind::Learner, "L1".into(), v2.clone())),
            learner: Some(state("L1", Some("003000000000001AAA"), LinkState::Linked)),
        })
        .await
        .unwrap();
    assert!(store.is_processed("evt_b").await.unwrap());
    assert!(!store.is_processed("evt_a").await.unwrap());
    assert_eq!(
        store.learner("L1").await.unwrap().unwrap().link,
        LinkState::Linked
    );
    // An older version never overwrites a newer one…
    store
        .commit(&Commit {
            record: record("evt_a", "L1", OutcomeClass::Skipped, "stale"),
            mark_processed: true,
            entity: Some((
                EntityKind::Learner,
                "L1".into(),
                EntityVersion {
                    occurred_at: t(19, 999_999),
                    event_id: "evt_z".into(),
                },
            )),
            learner: None,
        })
        .await
        .unwrap();
    assert_eq!(
        store
            .entity_version(EntityKind::Learner, "L1")
            .await
            .unwrap(),
        Some(v2.clone())
    );
    // …ties on time are broken by event id.
    let v3 = EntityVersion {
        occurred_at: t(20, 0),
        event_id: "evt_c".into(),
    };
    store
        .commit(&Commit {
            record: record("evt_c", "L1", OutcomeClass::Failed, "account_not_found"),
            mark_processed: false,
            entity: Some((EntityKind::Learner, "L1".into(), v3.clone())),
            learner: None,
        })
        .await
        .unwrap();
    assert_eq!(
        store
            .entity_version(EntityKind::Learner, "L1")
            .await
            .unwrap(),
        Some(v3)
    );
    assert!(
        !store.is_processed("evt_c").await.unwrap(),
        "failures stay replayable"
    );
    assert_eq!(
        store
            .entity_version(EntityKind::Enrollment, "L1")
            .await
            .unwrap(),
        None,
        "versions are per entity kind"
    );
    let h = store.history("L1", 10).await.unwrap();
    let ids: Vec<_> = h.iter().map(|r| r.event_id.as_str()).collect();
    assert_eq!(ids, ["evt_c", "evt_a", "evt_b"], "newest first");
    assert_eq!(h[0].class, OutcomeClass::Failed);
    assert_eq!(h[2].occurred_at, t(10, 123), "microseconds survive");
    assert_eq!(store.history("L1", 1).await.unwrap().len(), 1);

    // Leases: exclusive, renewable by the holder, taken over once expired.
    let ttl = Duration::from_millis(300);
    assert!(store.try_lease("learner:L1", "w1", ttl).await.unwrap());
    assert!(!store.try_lease("learner:L1", "w2", ttl).await.unwrap());
    assert!(store.try_lease("learner:L1", "w1", ttl).await.unwrap());
    store.release_lease("learner:L1", "w2").await.unwrap();
    assert!(
        !store.try_lease("learner:L1", "w2", ttl).await.unwrap(),
        "only the holder releases"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        store.try_lease("learner:L1", "w2", ttl).await.unwrap(),
        "a crashed holder cannot keep it"
    );
    store.release_lease("learner:L1", "w2").await.unwrap();
    assert!(store.try_lease("learner:L1", "w3", ttl).await.unwrap());

    // Many concurrent contenders: exactly one wins.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.try_lease("learner:HOT", &format!("h{i}"), Duration::from_secs(30))
                .await
                .unwrap()
        }));
    }
    let mut winners = 0;
    for t in tasks {
        winners += t.await.unwrap() as u32;
    }
    assert_eq!(winners, 1);

    // Retention and checkpoints.
    assert_eq!(
        store
            .prune_processed(Utc::now() + chrono::Duration::seconds(5))
            .await
            .unwrap(),
        2
    );
    assert!(!store.is_processed("evt_b").await.unwrap());
    assert_eq!(store.checkpoint("backfill").await.unwrap(), None);
    store
        .set_checkpoint("backfill", Some("{\"i\":1}"))
        .await
        .unwrap();
    store
        .set_checkpoint("backfill", Some("{\"i\":2}"))
        .await
        .unwrap();
    assert_eq!(
        store.checkpoint("backfill").await.unwrap().as_deref(),
        Some("{\"i\":2}")
    );
    store.set_checkpoint("backfill", None).await.unwrap();
    assert_eq!(store.checkpoint("backfill").await.unwrap(), None);

    // Reconcile: paging through learners, learners by Contact, uncertain marks.
    for (l, c) in [("RA", "003RA"), ("RB", "003RB"), ("RC", "003RA")] {
        store
            .put_learner(&state(l, Some(c), LinkState::Deactivated))
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.learners_after(after.as_deref(), 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.learner_id.clone());
        seen.extend(page.into_iter().map(|s| s.learner_id));
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(seen, sorted, "pages are ordered and never overlap");
    assert!(seen.iter().any(|l| l == "RC"));
    let mut by_contact: Vec<String> = store
        .learners_by_contact(&["003RA".to_string()])
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.learner_id)
        .collect();
    by_contact.sort();
    assert_eq!(by_contact, vec!["RA", "RC"]);
    assert!(store.uncertain(10).await.unwrap().is_empty());
    store
        .mark_uncertain("RA", "TIMEOUT on PATCH")
        .await
        .unwrap();
    let marks = store.uncertain(10).await.unwrap();
    assert_eq!(marks.len(), 1);
    assert_eq!(marks[0].reason, "TIMEOUT on PATCH");
    // A mark made after the verification started survives its clearing.
    assert!(!store
        .clear_uncertain("RA", marks[0].marked_at - chrono::Duration::seconds(1))
        .await
        .unwrap());
    assert!(store
        .clear_uncertain("RA", marks[0].marked_at)
        .await
        .unwrap());
    assert!(store.uncertain(10).await.unwrap().is_empty());
}

#[tokio::test]
async fn sqlite_store_honours_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("state.db").display());
    let store = syncback::store::open(&url, 4).await.unwrap();
    contract(store).await;
}

#[tokio::test]
async fn postgres_store_honours_the_contract() {
    let Some(url) = syncback::testing::fresh_postgres_db().await else {
        return;
    };
    let store = syncback::store::open(&url, 8).await.unwrap();
    contract(store.clone()).await;
    // A NUL in a value is SQLSTATE 22021: a permanent data error (bad_event), never
    // "store unavailable" retried until max_attempts.
    let e = store.learner("a\u{0}b").await.unwrap_err();
    assert!(
        matches!(e, syncback::store::StoreError::Data(_)),
        "expected a data error, got {e:?}"
    );
    let sync_err: syncback::sync::SyncError = e.into();
    assert_eq!(sync_err.kind(), "bad_event");
    assert!(!sync_err.is_transient());
}

#[tokio::test]
async fn bad_store_urls_are_explained() {
    let err = syncback::store::open("mysql://x", 1).await.err().unwrap();
    assert!(
        err.to_string().contains("postgres:// or sqlite://"),
        "{err}"
    );
    let err = syncback::store::open("postgres://nobody@127.0.0.1:1/x", 1)
        .await
        .err()
        .unwrap();
    assert!(
        err.is_transient(),
        "an unreachable database is retryable: {err}"
    );
}

#[tokio::test]
async fn processed_ids_are_forgotten_after_the_retention() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ret.db").display());
    let store = syncback::store::open(&url, 2).await.unwrap();
    store
        .commit(&Commit {
            record: record("evt_old", "L1", OutcomeClass::Applied, "updated"),
            mark_processed: true,
            entity: None,
            learner: None,
        })
        .await
        .unwrap();
    assert!(store.is_processed("evt_old").await.unwrap());
    let (stop, rx) = tokio::sync::watch::channel(false);
    let task = syncback::worker::spawn_retention(store.clone(), Duration::ZERO, Duration::ZERO, rx);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while store.is_processed("evt_old").await.unwrap() {
        assert!(std::time::Instant::now() < deadline, "not pruned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !store.history("L1", 10).await.unwrap().is_empty() {
        assert!(std::time::Instant::now() < deadline, "history not pruned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(true).unwrap();
    task.await.unwrap();
}

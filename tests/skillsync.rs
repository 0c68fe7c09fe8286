//! SkillSync client × sandbox over HTTP (docs/rules.md "SkillSync", R2).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use syncback::config::{Scope, Secret, SkillSyncSettings};
use syncback::model::{Learner, LearnerStatus};
use syncback::sandbox::skillsync::{Fault, Lms};
use syncback::skillsync::scope::{ScopeResolver, SourceCheckError};
use syncback::skillsync::{Client, SkillSyncApi, SsError};

fn settings(base: &str, secret: &str, timeout: u64) -> SkillSyncSettings {
    SkillSyncSettings {
        base_url: base.into(),
        client_id: Lms::CLIENT_ID.into(),
        client_secret: Secret::new(secret),
        timeout_secs: timeout,
        department_cache_ttl_secs: 60,
    }
}

fn learner(id: &str, dept: &str) -> Learner {
    Learner {
        id: id.into(),
        username: format!("{id}@ss.example"),
        email: Some(format!("{id}@ss.example")),
        first_name: Some("F".into()),
        last_name: Some("L".into()),
        department_id: Some(dept.into()),
        department_name: Some("Sales".into()),
        status: LearnerStatus::Active,
        fields: Default::default(),
        updated_at: Utc::now(),
    }
}

async fn served() -> (Lms, String) {
    let lms = Lms::new();
    lms.add_department("42", "Engineering", None);
    lms.add_department("43", "Sales", Some("42"));
    lms.add_department("44", "Ops", Some("42"));
    let (addr, _) = lms.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    (lms, format!("http://{addr}"))
}

#[tokio::test]
async fn reads_departments_learners_and_pages() {
    let (lms, url) = served().await;
    lms.set_page_size(2);
    for i in 0..5 {
        lms.upsert_learner(learner(&format!("L{i}"), "43"));
    }
    lms.add_enrollment(serde_json::from_value(serde_json::json!({"id": "E1", "learner_id": "L1", "course_id": 7, "course_name": "C",
        "status": "enrolled", "enrolled_at": "2026-11-01T00:00:00Z", "updated_at": "2026-11-01T00:00:00Z"})).unwrap());
    let c = Client::new(&settings(&url, Lms::CLIENT_SECRET, 5)).unwrap();
    assert_eq!(
        c.department("42").await.unwrap().unwrap().name,
        "Engineering"
    );
    assert_eq!(c.department("nope").await.unwrap(), None);
    let kids: Vec<_> = c
        .department_children("42")
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(kids, ["43", "44"], "children across pages of 2");
    let mut cursor = None;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let p = c.learners_page("43", cursor.as_deref()).await.unwrap();
        pages += 1;
        seen.extend(p.items.into_iter().map(|l| l.id));
        match p.next_cursor {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!((pages, seen.len()), (3, 5));
    assert_eq!(
        c.learner("L1").await.unwrap().unwrap().username,
        "L1@ss.example"
    );
    assert_eq!(c.learner("ghost").await.unwrap(), None);
    let e = c.enrollments("L1").await.unwrap();
    assert_eq!(
        (e.len(), e[0].course_id.as_str()),
        (1, "7"),
        "numeric ids read as strings"
    );
    assert!(c.enrollments("ghost").await.unwrap().is_empty());
    assert!(c.certifications("L1").await.unwrap().is_empty());
}

#[tokio::test]
async fn token_is_cached_and_refreshed_once_after_expiry() {
    let (lms, url) = served().await;
    let c = Client::new(&settings(&url, Lms::CLIENT_SECRET, 5)).unwrap();
    c.department("42").await.unwrap();
    lms.expire_tokens();
    assert!(
        c.department("42").await.unwrap().is_some(),
        "refreshed after 401"
    );
    let wrong = Client::new(&settings(&url, "wrong", 5)).unwrap();
    assert!(matches!(
        wrong.department("42").await,
        Err(SsError::Unauthorized(_))
    ));
}

#[tokio::test]
async fn faults_are_transient() {
    let (lms, url) = served().await;
    let c = Client::new(&settings(&url, Lms::CLIENT_SECRET, 1)).unwrap();
    lms.fail_next(1, Fault::Unavailable);
    assert!(c.department("42").await.unwrap_err().is_transient());
    lms.fail_next(1, Fault::RateLimited);
    assert!(c.department("42").await.unwrap_err().is_transient());
    lms.fail_next(1, Fault::Timeout(Duration::from_millis(1500)));
    assert!(c.department("42").await.unwrap_err().is_transient());
    assert!(c.department("42").await.is_ok(), "recovers");
}

#[tokio::test]
async fn source_department_check_explains_unknown_unauthorized_unreachable() {
    let (_lms, url) = served().await;
    let check = |base: &str, secret: &str, dept: &str| {
        let c = Client::new(&settings(base, secret, 2)).unwrap();
        ScopeResolver::new(
            Arc::new(c),
            dept,
            Scope::WithSubdepartments,
            Duration::from_secs(60),
        )
    };
    assert_eq!(
        check(&url, Lms::CLIENT_SECRET, "42")
            .validate_source()
            .await
            .unwrap()
            .id,
        "42"
    );
    let e = check(&url, Lms::CLIENT_SECRET, "4242")
        .validate_source()
        .await
        .unwrap_err();
    assert!(matches!(e, SourceCheckError::Unknown(_)), "{e}");
    let e = check(&url, "bad", "42")
        .validate_source()
        .await
        .unwrap_err();
    assert!(matches!(e, SourceCheckError::Unauthorized(_)), "{e}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let e = check(&format!("http://{closed}"), Lms::CLIENT_SECRET, "42")
        .validate_source()
        .await
        .unwrap_err();
    assert!(matches!(e, SourceCheckError::Unreachable(_)), "{e}");
    assert!(
        Client::new(&settings("", "x", 1)).is_err(),
        "base_url required"
    );
}

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

/// The sample LMS has learners in every department, readable through the real client.
#[tokio::test]
async fn sample_lms_has_learners_enrollments_and_certifications() {
    let lms = Lms::new();
    let summary = lms.seed_sample();
    assert!(summary.iter().any(|l| l.starts_with("department 43 Sales")));
    let (addr, _) = lms.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let c = Client::new(&settings(&format!("http://{addr}"), Lms::CLIENT_SECRET, 5)).unwrap();
    for dept in ["42", "43", "44", "99"] {
        assert!(
            !c.learners_page(dept, None).await.unwrap().items.is_empty(),
            "department {dept} has learners"
        );
    }
    let s1 = c.learner("S1").await.unwrap().unwrap();
    assert_eq!(s1.fields["company"].as_deref(), Some("Acme"));
    assert_eq!(c.enrollments("S1").await.unwrap().len(), 2);
    assert_eq!(c.certifications("S1").await.unwrap().len(), 1);
}

/// Learners, enrollments and certifications can be added over HTTP (with defaults and
/// clear 4xx answers), and each write is sent as the signed webhook SkillSync would send.
#[tokio::test]
async fn writes_through_the_api_add_data_and_send_signed_webhooks() {
    use axum::body::Bytes;
    use axum::http::HeaderMap;
    use serde_json::{json, Value};
    use syncback::webhook::signature::Verifier;

    // A receiver that verifies and records what the sandbox sends.
    let got: Arc<std::sync::Mutex<Vec<Value>>> = Default::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |h: HeaderMap, body: Bytes| {
            let sink = sink.clone();
            async move {
                let v = Verifier::new(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"], 300).unwrap();
                let hv = |k: &str| h.get(k).and_then(|v| v.to_str().ok());
                v.verify(
                    hv("webhook-id"),
                    hv("webhook-timestamp"),
                    hv("webhook-signature"),
                    &body,
                    chrono::Utc::now().timestamp(),
                )
                .expect("signed");
                sink.lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap());
                axum::http::StatusCode::ACCEPTED
            }
        }),
    );
    let (hook, _) = syncback::sandbox::serve(app, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let (lms, url) = served().await;
    lms.send_webhooks_to(
        &format!("http://{hook}/hook"),
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    )
    .unwrap();
    let token = lms.issue_token();
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        http.post(format!("{url}{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };

    let r = post(
        "/api/v1/learners",
        json!({"username": "new@acme.example", "last_name": "New", "department_id": 43}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.headers()["x-sandbox-webhook"]
            .to_str()
            .unwrap()
            .split(' ')
            .next(),
        Some("learner.created")
    );
    let l: Value = r.json().await.unwrap();
    let id = l["id"].as_str().unwrap().to_string();
    assert_eq!(
        (l["department_name"].as_str(), l["status"].as_str()),
        (Some("Sales"), Some("active"))
    );
    assert_eq!(lms.learner(&id).unwrap().username, "new@acme.example");

    let again = post(
        "/api/v1/learners",
        json!({"id": id, "username": "x@acme.example"}),
    )
    .await
    .unwrap();
    assert_eq!(again.status(), 409);
    let bad = post(
        "/api/v1/learners",
        json!({"username": "y@acme.example", "department_id": "777"}),
    )
    .await
    .unwrap();
    assert_eq!(bad.status(), 422);
    assert!(bad.text().await.unwrap().contains("department_id 777"));
    let bad = post("/api/v1/learners", json!({"last_name": "No username"}))
        .await
        .unwrap();
    assert_eq!(bad.status(), 422);
    let anon = http
        .post(format!("{url}/api/v1/learners"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401, "writes need a token too");

    let r = post(
        &format!("/api/v1/learners/{id}/enrollments"),
        json!({"course_id": 7, "course_name": "Basics"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let r = post(
        &format!("/api/v1/learners/{id}/certifications"),
        json!({"name": "Admin"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201);
    let r = post(
        "/api/v1/learners/ghost/enrollments",
        json!({"course_id": 7, "course_name": "Basics"}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 404);

    let r = http
        .put(format!("{url}/api/v1/learners/{id}"))
        .bearer_auth(&token)
        .json(&json!({"username": "new@acme.example", "department_id": "43", "status": "inactive"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let c = Client::new(&settings(&url, Lms::CLIENT_SECRET, 5)).unwrap();
    assert_eq!(c.enrollments(&id).await.unwrap()[0].course_id, "7");
    assert_eq!(c.certifications(&id).await.unwrap()[0].name, "Admin");
    let types: Vec<String> = got
        .lock()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        types,
        [
            "learner.created",
            "enrollment.created",
            "certification.issued",
            "learner.deactivated"
        ]
    );
    assert_eq!(got.lock().unwrap()[0]["data"]["learner"]["id"], json!(id));
}

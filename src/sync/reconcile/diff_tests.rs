//! The differ, kind by kind, without I/O.

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use serde_json::json;

use super::*;
use crate::model::{CertificationStatus, EnrollmentStatus};

fn settings() -> SyncSettings {
    SyncSettings::default()
}

fn learner() -> Learner {
    Learner {
        id: "L1".into(),
        username: "ada@example.com".into(),
        email: Some("ada@example.com".into()),
        first_name: Some("Ada".into()),
        last_name: Some("Smith".into()),
        department_id: Some("42".into()),
        department_name: Some("Engineering".into()),
        status: LearnerStatus::Active,
        fields: BTreeMap::new(),
        updated_at: Utc::now(),
    }
}

fn enrollment() -> Enrollment {
    Enrollment {
        id: "E1".into(),
        learner_id: "L1".into(),
        course_id: "C1".into(),
        course_name: "Rust".into(),
        status: EnrollmentStatus::InProgress,
        enrolled_at: Utc.with_ymd_and_hms(2026, 11, 1, 9, 0, 0).unwrap(),
        completed_at: None,
        score: None,
        updated_at: Utc::now(),
    }
}

fn certification() -> Certification {
    Certification {
        id: "X1".into(),
        learner_id: "L1".into(),
        name: "Safety".into(),
        issued_at: Utc.with_ymd_and_hms(2026, 10, 1, 0, 0, 0).unwrap(),
        expires_at: None,
        status: CertificationStatus::Active,
        updated_at: Utc::now(),
    }
}

/// A Contact exactly as the rules would write it for `learner()` under `001A`.
fn contact(id: &str, link: Option<&str>) -> ContactView {
    let mut record = rules::contact_fields(&settings(), &learner(), "001A");
    record.insert("Id".into(), json!(id));
    record.insert(
        "SkillSync_User_Id__c".into(),
        link.map_or(Value::Null, |l| json!(l)),
    );
    ContactView {
        id: id.into(),
        record,
    }
}

/// Salesforce answers datetimes in its own format.
fn sf_time(t: DateTime<Utc>) -> Value {
    json!(t.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string())
}

fn child_enrollment(contact: &str) -> ChildView {
    let e = enrollment();
    let mut record = rules::enrollment_fields(&e, contact);
    record.insert("Enrolled_At__c".into(), sf_time(e.enrolled_at));
    ChildView {
        object: rules::ENROLLMENT_OBJECT,
        id: "a01A".into(),
        ext_id: "E1".into(),
        record,
    }
}

fn child_certification(contact: &str) -> ChildView {
    let c = certification();
    ChildView {
        object: rules::CERTIFICATION_OBJECT,
        id: "a02A".into(),
        ext_id: "X1".into(),
        record: rules::certification_fields(&c, contact),
    }
}

fn state(link: LinkState, contact: Option<&str>) -> LearnerState {
    LearnerState {
        learner_id: "L1".into(),
        contact_id: contact.map(String::from),
        link,
        account_id: Some("001A".into()),
        last_outcome: None,
        last_error: None,
        updated_at: Utc::now(),
    }
}

/// A learner in sync: linked to 003A, fields, Account and children as SkillSync says.
fn in_sync() -> LearnerView {
    LearnerView {
        learner_id: "L1".into(),
        snapshot: Some(learner()),
        in_scope: true,
        state: Some(state(LinkState::Linked, Some("003A"))),
        carriers: vec![contact("003A", Some("L1"))],
        remembered: Remembered::Alive(contact("003A", Some("L1"))),
        matches: vec![],
        account: Some(Ok("001A".into())),
        children: Some(ExpectedChildren {
            enrollments: vec![enrollment()],
            certifications: vec![certification()],
        }),
        sf_children: vec![child_enrollment("003A"), child_certification("003A")],
    }
}

fn kinds(d: &LearnerDiff) -> Vec<DriftKind> {
    d.drifts.iter().map(|d| d.kind).collect()
}

#[test]
fn no_drift_when_salesforce_holds_what_the_rules_say() {
    let d = diff(&settings(), &in_sync());
    assert_eq!(d.drifts, vec![], "{:#?}", d.drifts);
    assert!(d.should_link);
    assert_eq!(d.problem, None);
}

#[test]
fn missing_contact_says_what_r5_will_do() {
    let mut v = in_sync();
    v.state = None;
    v.carriers.clear();
    v.remembered = Remembered::None;
    v.sf_children.clear();
    let d = diff(&settings(), &v);
    assert_eq!(kinds(&d), vec![DriftKind::MissingContact]);
    assert!(d.drifts[0].detail.contains("will be created"));
    v.matches = vec![contact("003M", None)];
    assert!(diff(&settings(), &v).drifts[0]
        .detail
        .contains("003M matches the username and will be linked"));
    v.matches = vec![contact("003M", None), contact("003N", None)];
    assert!(diff(&settings(), &v).drifts[0]
        .detail
        .contains("contact_ambiguous"));
}

#[test]
fn link_missing_when_the_remembered_contact_lost_its_link() {
    let mut v = in_sync();
    v.carriers.clear();
    v.remembered = Remembered::Alive(contact("003A", None));
    let d = diff(&settings(), &v);
    assert_eq!(kinds(&d), vec![DriftKind::LinkMissing]);
    assert_eq!(d.drifts[0].contact_id.as_deref(), Some("003A"));
    // A missed reactivation (R10) is the same repair, said differently.
    v.state = Some(state(LinkState::Deactivated, Some("003A")));
    let d = diff(&settings(), &v);
    assert_eq!(kinds(&d), vec![DriftKind::LinkMissing]);
    assert!(d.drifts[0].detail.contains("store: deactivated"));
}

#[test]
fn link_wrong_for_another_carrier_two_carriers_or_an_unknowing_store() {
    // The link moved to another Contact.
    let mut v = in_sync();
    v.carriers = vec![contact("003B", Some("L1"))];
    v.remembered = Remembered::Alive(contact("003A", None));
    let d = diff(&settings(), &v);
    assert_eq!(kinds(&d), vec![DriftKind::LinkWrong]);
    assert!(d.drifts[0]
        .detail
        .contains("link on Contact 003B but the store remembers Contact 003A"));
    // Two Contacts carry one learner.
    v.carriers = vec![contact("003A", Some("L1")), contact("003B", Some("L1"))];
    v.remembered = Remembered::Alive(contact("003A", Some("L1")));
    assert_eq!(kinds(&diff(&settings(), &v)), vec![DriftKind::LinkWrong]);
    v.remembered = Remembered::None;
    v.state = None;
    let d = diff(&settings(), &v);
    assert_eq!(kinds(&d), vec![DriftKind::LinkWrong]);
    assert!(d.drifts[0].detail.contains("2 Contacts carry"));
    // Linked in Salesforce, unknown to the store (crash between write and commit).
    v.carriers = vec![contact("003A", Some("L1"))];
    let d = diff(&settings(), &v);
    assert_eq!(kinds(&d), vec![DriftKind::LinkWrong]);
    assert!(d.drifts[0].detail.contains("never synced"));
}

#[test]
fn stale_link_for_inactive_out_of_scope_or_vanished_learners() {
    let mut v = in_sync();
    v.snapshot.as_mut().unwrap().status = LearnerStatus::Inactive;
    v.state = Some(state(LinkState::Deactivated, Some("003A")));
    let d = diff(&settings(), &v);
    assert_eq!(kinds(&d), vec![DriftKind::StaleLink]);
    assert!(d.drifts[0].detail.contains("inactive (R9)"));
    assert!(!d.should_link);

    let mut v = in_sync();
    v.in_scope = false;
    let d = diff(&settings(), &v);
    assert_eq!(kinds(&d), vec![DriftKind::StaleLink]);
    assert!(d.drifts[0].detail.contains("out of scope (R3)"));

    let mut v = in_sync();
    v.snapshot = None;
    assert!(diff(&settings(), &v).drifts[0]
        .detail
        .contains("no longer exists in SkillSync"));

    // Unlinked as the rules say: nothing to report, whatever its fields.
    let mut v = in_sync();
    v.in_scope = false;
    v.carriers.clear();
    v.remembered = Remembered::Alive(contact("003A", None));
    assert_eq!(diff(&settings(), &v).drifts, vec![]);
}

#[test]
fn field_drift_names_the_field_and_both_values() {
    let mut v = in_sync();
    let mut c = contact("003A", Some("L1"));
    c.record.insert("LastName".into(), json!("Smyth"));
    v.carriers = vec![c.clone()];
    v.remembered = Remembered::Alive(c);
    let d = diff(&settings(), &v);
    assert_eq!(kinds(&d), vec![DriftKind::FieldDrift]);
    let f = &d.drifts[0];
    assert_eq!(f.field.as_deref(), Some("LastName"));
    assert_eq!(f.salesforce, Some(json!("Smyth")));
    assert_eq!(f.expected, Some(json!("Smith")));
    assert_eq!(f.line(), r#"field_drift LastName "Smyth" → "Smith""#);
}

#[test]
fn equal_values_in_salesforce_formats_are_not_drift() {
    let mut v = in_sync();
    let mut c = contact("003A", Some("L1"));
    // Salesforce may keep an e-mail's case; an empty FirstName is null.
    c.record.insert("Email".into(), json!("ADA@example.com"));
    v.snapshot.as_mut().unwrap().first_name = Some("".into());
    c.record.insert("FirstName".into(), Value::Null);
    v.carriers = vec![c.clone()];
    v.remembered = Remembered::Alive(c);
    assert_eq!(diff(&settings(), &v).drifts, vec![]);
    assert!(same(&json!(85), &json!(85.0), false));
    assert!(same(
        &json!("2026-11-01T09:00:00.000+0000"),
        &json!("2026-11-01T09:00:00.000Z"),
        false
    ));
    assert!(!same(
        &json!("2026-11-01T09:00:01.000+0000"),
        &json!("2026-11-01T09:00:00.000Z"),
        false
    ));
}

#[test]
fn wrong_account_when_the_contact_is_not_where_r4_says() {
    let mut v = in_sync();
    v.account = Some(Ok("001B".into()));
    let d = diff(&settings(), &v);
    assert_eq!(kinds(&d), vec![DriftKind::WrongAccount]);
    assert_eq!(d.drifts[0].salesforce, Some(json!("001A")));
    assert_eq!(d.drifts[0].expected, Some(json!("001B")));
    // An Account that cannot be resolved is a problem, not a drift.
    v.account = Some(Err(Permanent::new(
        crate::sync::Code::AccountNotFound,
        "no Account",
    )));
    let d = diff(&settings(), &v);
    assert_eq!(d.drifts, vec![]);
    assert_eq!(d.problem.unwrap().code, "account_not_found");
}

#[test]
fn missing_extra_and_drifted_children() {
    let mut v = in_sync();
    v.sf_children = vec![child_certification("003A")];
    let d = diff(&settings(), &v);
    assert_eq!(kinds(&d), vec![DriftKind::MissingChild]);
    assert!(d.drifts[0]
        .detail
        .contains("SkillSync_Enrollment__c E1 (Rust)"));

    let mut v = in_sync();
    v.children.as_mut().unwrap().certifications.clear();
    let d = diff(&settings(), &v);
    assert_eq!(kinds(&d), vec![DriftKind::ExtraChild]);
    assert!(d.drifts[0].detail.contains("SkillSync_Certification__c X1"));

    let mut v = in_sync();
    v.sf_children[0]
        .record
        .insert("Status__c".into(), json!("enrolled"));
    let d = diff(&settings(), &v);
    assert_eq!(kinds(&d), vec![DriftKind::FieldDrift]);
    assert_eq!(
        d.drifts[0].field.as_deref(),
        Some("SkillSync_Enrollment__c E1 Status__c")
    );
}

#[test]
fn contact_deleted_says_what_happens_next() {
    let mut v = in_sync();
    v.carriers.clear();
    v.remembered = Remembered::Deleted("003A".into());
    v.sf_children.clear();
    let d = diff(&settings(), &v);
    assert_eq!(kinds(&d), vec![DriftKind::ContactDeleted]);
    assert!(d.drifts[0].detail.contains("will be created"));
    // Another Contact already carries the link: it becomes the target, compared in full.
    v.carriers = vec![contact("003B", Some("L1"))];
    v.sf_children = vec![child_enrollment("003B"), child_certification("003B")];
    let d = diff(&settings(), &v);
    assert_eq!(kinds(&d), vec![DriftKind::ContactDeleted]);
    assert!(d.drifts[0].detail.contains("the link is now on 003B"));
}

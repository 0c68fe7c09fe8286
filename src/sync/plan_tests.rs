//! The planner, rule by rule, without I/O (docs/rules.md R1–R12).

use std::collections::BTreeMap;

use chrono::{Duration, Utc};
use serde_json::json;

use super::*;
use crate::config::SyncSettings;
use crate::model::{Envelope, EventData, EventType, LearnerStatus};

fn settings() -> SyncSettings {
    SyncSettings {
        enabled: true,
        source_department_id: "42".into(),
        ..SyncSettings::default()
    }
}

fn learner(id: &str, user: &str) -> Learner {
    Learner {
        id: id.into(),
        username: user.into(),
        email: Some(format!("{id}@personal.example")),
        first_name: Some("Ada".into()),
        last_name: Some("Lovelace".into()),
        department_id: Some("42".into()),
        department_name: Some("Engineering".into()),
        status: LearnerStatus::Active,
        fields: BTreeMap::new(),
        updated_at: Utc::now(),
    }
}

fn state(id: &str, link: LinkState, contact: Option<&str>, account: Option<&str>) -> LearnerState {
    LearnerState {
        learner_id: id.into(),
        contact_id: contact.map(String::from),
        link,
        account_id: account.map(String::from),
        last_outcome: None,
        last_error: None,
        updated_at: Utc::now(),
    }
}

fn row(id: &str, link: Option<&str>, m: Option<&str>) -> ContactRow {
    ContactRow {
        id: id.into(),
        link: link.map(String::from),
        match_value: m.map(String::from),
    }
}

fn input<'a>(
    l: &'a Learner,
    st: Option<&'a LearnerState>,
    rows: &'a [ContactRow],
) -> LearnerInput<'a> {
    LearnerInput {
        learner: l,
        active: true,
        in_scope: true,
        state: st,
        account: Ok("001A".into()),
        rows,
        links_loaded: false,
        hint: None,
        keep_fields: false,
        children: None,
        known_gone: false,
    }
}

fn plan(i: &LearnerInput) -> LearnerStep {
    plan_learner(&settings(), i, &mut Claims::default())
}

fn op_code(step: &LearnerStep) -> (&ContactOp, Code) {
    match step {
        LearnerStep::Write { op, code, .. } => (op, *code),
        other => panic!("expected a write, got {other:?}"),
    }
}

fn env(id: &str, ty: EventType, secs: i64, data: EventData) -> Envelope {
    Envelope {
        id: id.into(),
        event_type: ty,
        occurred_at: Utc::now() + Duration::seconds(secs),
        data,
    }
}

#[test]
fn r1_toggle_off_and_r12_duplicates_and_stale_settle_early() {
    let l = learner("L1", "a@x.example");
    let e = env(
        "e2",
        EventType::LearnerUpdated,
        0,
        EventData {
            learner: Some(l),
            ..Default::default()
        },
    );
    assert_eq!(
        precheck(true, true, None, &e).unwrap().code,
        Code::Duplicate
    );
    assert_eq!(
        precheck(false, false, None, &e).unwrap().code,
        Code::SyncDisabled
    );
    let newer = EntityVersion {
        occurred_at: e.occurred_at + Duration::seconds(1),
        event_id: "e9".into(),
    };
    assert_eq!(
        precheck(true, false, Some(&newer), &e).unwrap().code,
        Code::Stale
    );
    assert_eq!(precheck(true, false, None, &e), None);
}

#[test]
fn r12_within_a_batch_later_events_supersede_and_repeats_are_duplicates() {
    let data = |id: &str| EventData {
        learner: Some(learner(id, "u@x.example")),
        ..Default::default()
    };
    let a = env("a", EventType::LearnerUpdated, 0, data("L1"));
    let b = env("b", EventType::LearnerUpdated, 1, data("L1"));
    let other = env(
        "c",
        EventType::EnrollmentCreated,
        2,
        EventData {
            enrollment: Some(
                serde_json::from_value(json!({"id": "E1", "learner_id": "L1", "course_id": "C",
            "course_name": "C", "status": "enrolled", "enrolled_at": "2026-11-01T00:00:00Z",
            "updated_at": "2026-11-01T00:00:00Z"}))
                .unwrap(),
            ),
            ..Default::default()
        },
    );
    let r = superseded(&[Some(&a), Some(&other), Some(&b), Some(&b), None]);
    assert_eq!(r[0].as_ref().unwrap().code, Code::Stale);
    assert!(r[0].as_ref().unwrap().detail.contains("superseded by b"));
    assert_eq!(r[1], None, "another entity is not superseded");
    assert_eq!(r[2], None, "the latest is applied");
    assert_eq!(r[3].as_ref().unwrap().code, Code::Duplicate);
    assert_eq!(r[4], None);
}

#[test]
fn r3_out_of_scope_skips_and_a_linked_learner_leaving_is_unlinked() {
    let l = learner("L1", "a@x.example");
    let mut i = input(&l, None, &[]);
    i.in_scope = false;
    assert!(matches!(
        plan(&i),
        LearnerStep::Skip {
            code: Code::OutOfScope,
            ..
        }
    ));
    let st = state("L1", LinkState::Linked, Some("003C"), Some("001A"));
    let mut i = input(&l, Some(&st), &[]);
    i.in_scope = false;
    match plan(&i) {
        LearnerStep::Write {
            op: ContactOp::Unlink { id },
            state,
            ..
        } => {
            assert_eq!(id, "003C");
            assert_eq!(state.link, LinkState::OutOfScope);
            assert_eq!(state.contact_id.as_deref(), Some("003C"), "remembered");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn r4_account_failures_are_permanent_and_nothing_is_written() {
    let l = learner("L1", "a@x.example");
    let mut i = input(&l, None, &[]);
    i.account = Err(Permanent::new(Code::AccountNotFound, "no Account named X"));
    assert!(matches!(plan(&i), LearnerStep::Fail(p) if p.code == Code::AccountNotFound));
}

#[test]
fn r5_matching_links_one_creates_none_fails_many_and_conflicts() {
    let l = learner("L1", "A@X.example");
    // None matches: create through the external-id upsert, with the link and the Account.
    let step = plan(&input(&l, None, &[]));
    let (op, code) = op_code(&step);
    assert_eq!(code, Code::Created);
    match op {
        ContactOp::Create { fields } => {
            assert_eq!(fields["SkillSync_User_Id__c"], json!("L1"));
            assert_eq!(fields["AccountId"], json!("001A"));
            assert_eq!(
                fields["Email"],
                json!("A@X.example"),
                "R8: Email carries the username"
            );
        }
        other => panic!("{other:?}"),
    }
    // Exactly one (case-insensitively): link it.
    let rows = [
        row("003A", None, Some("a@x.EXAMPLE")),
        row("003Z", None, Some("z@x.example")),
    ];
    let step = plan(&input(&l, None, &rows));
    let (op, code) = op_code(&step);
    assert_eq!(code, Code::Linked);
    assert!(matches!(op, ContactOp::Update { id, .. } if id == "003A"));
    // Several: ambiguous.
    let rows = [
        row("003A", None, Some("a@x.example")),
        row("003B", None, Some("A@x.example")),
    ];
    assert!(
        matches!(plan(&input(&l, None, &rows)), LearnerStep::Fail(p) if p.code == Code::ContactAmbiguous)
    );
    // The one match carries another learner's link: conflict.
    let rows = [row("003A", Some("L9"), Some("a@x.example"))];
    assert!(
        matches!(plan(&input(&l, None, &rows)), LearnerStep::Fail(p) if p.code == Code::ContactConflict)
    );
}

#[test]
fn r5_two_learners_of_one_batch_never_share_a_contact_or_a_created_username() {
    let s = settings();
    let mut claims = Claims::default();
    let a = learner("L1", "same@x.example");
    let b = learner("L2", "same@x.example");
    let first = plan_learner(&s, &input(&a, None, &[]), &mut claims);
    assert!(matches!(
        first,
        LearnerStep::Write {
            code: Code::Created,
            ..
        }
    ));
    let second = plan_learner(&s, &input(&b, None, &[]), &mut claims);
    assert!(matches!(second, LearnerStep::Fail(p) if p.code == Code::ContactConflict));

    let mut claims = Claims::default();
    let rows = [row("003A", None, Some("same@x.example"))];
    assert!(matches!(
        plan_learner(&s, &input(&a, None, &rows), &mut claims),
        LearnerStep::Write {
            code: Code::Linked,
            ..
        }
    ));
    assert!(matches!(
        plan_learner(&s, &input(&b, None, &rows), &mut claims),
        LearnerStep::Fail(p) if p.code == Code::ContactConflict
    ));
}

#[test]
fn r7_r8_a_linked_learner_is_updated_by_its_link_and_moved() {
    let l = learner("L1", "a@x.example");
    let st = state("L1", LinkState::Linked, Some("003C"), Some("001OLD"));
    let step = plan(&input(&l, Some(&st), &[]));
    let (op, code) = op_code(&step);
    assert_eq!(code, Code::Moved);
    match op {
        ContactOp::Update { id, fields } => {
            assert_eq!(id, "003C", "found by the link, not re-matched");
            assert_eq!(fields["AccountId"], json!("001A"));
        }
        other => panic!("{other:?}"),
    }
    let st = state("L1", LinkState::Linked, Some("003C"), Some("001A"));
    assert_eq!(op_code(&plan(&input(&l, Some(&st), &[]))).1, Code::Updated);
}

#[test]
fn r9_deactivation_unlinks_and_remembers() {
    let mut l = learner("L1", "a@x.example");
    l.status = LearnerStatus::Inactive;
    let st = state("L1", LinkState::Linked, Some("003C"), Some("001A"));
    let mut i = input(&l, Some(&st), &[]);
    i.active = false;
    match plan(&i) {
        LearnerStep::Write {
            op: ContactOp::Unlink { id },
            state,
            code,
            ..
        } => {
            assert_eq!((id.as_str(), code), ("003C", Code::Unlinked));
            assert_eq!(state.link, LinkState::Deactivated);
        }
        other => panic!("{other:?}"),
    }
    // Never synced and inactive: nothing to do.
    let mut i = input(&l, None, &[]);
    i.active = false;
    assert!(matches!(
        plan(&i),
        LearnerStep::Skip {
            code: Code::InactiveNotSynced,
            ..
        }
    ));
}

#[test]
fn r10_reactivation_relinks_the_remembered_contact_and_resyncs_children() {
    let l = learner("L1", "a@x.example");
    let st = state("L1", LinkState::Deactivated, Some("003C"), Some("001A"));
    let rows = [row("003C", None, Some("a@x.example"))];
    match plan(&input(&l, Some(&st), &rows)) {
        LearnerStep::Write {
            op: ContactOp::Update { id, .. },
            code,
            children,
            ..
        } => {
            assert_eq!((id.as_str(), code), ("003C", Code::Relinked));
            assert_eq!(children, ChildrenPlan::FromSkillSync);
        }
        other => panic!("{other:?}"),
    }
    // The remembered Contact was deleted in Salesforce (absent from the rows): match again.
    let rows = [row("003N", None, Some("a@x.example"))];
    let step = plan(&input(&l, Some(&st), &rows));
    let (op, code) = op_code(&step);
    assert_eq!(code, Code::Linked);
    assert!(matches!(op, ContactOp::Update { id, .. } if id == "003N"));
    // Taken by another learner meanwhile: conflict.
    let rows = [row("003C", Some("L7"), Some("a@x.example"))];
    assert!(
        matches!(plan(&input(&l, Some(&st), &rows)), LearnerStep::Fail(p) if p.code == Code::ContactConflict)
    );
    // A linked Contact whose update found it deleted: match again (known_gone).
    let linked = state("L1", LinkState::Linked, Some("003C"), Some("001A"));
    let mut i = input(&l, Some(&linked), &[]);
    i.known_gone = true;
    assert_eq!(op_code(&plan(&i)).1, Code::Created);
}

#[test]
fn snapshots_clear_stray_links_and_honour_hint_and_keep_fields() {
    let l = learner("L1", "a@x.example");
    let st = state("L1", LinkState::Linked, Some("003C"), Some("001A"));
    let rows = [row("003C", Some("L1"), None), row("003S", Some("L1"), None)];
    let mut i = input(&l, Some(&st), &rows);
    i.links_loaded = true;
    i.keep_fields = true;
    match plan(&i) {
        LearnerStep::Write {
            op: ContactOp::Update { id, fields },
            stray,
            ..
        } => {
            assert_eq!(id, "003C");
            assert_eq!(stray, vec!["003S".to_string()]);
            assert!(
                fields.get("LastName").is_none(),
                "keep_fields writes only link and Account"
            );
            assert_eq!(fields["AccountId"], json!("001A"));
        }
        other => panic!("{other:?}"),
    }
    // The admin's choice: must exist and carry no other learner's link.
    let rows = [row("003H", None, None)];
    let mut i = input(&l, None, &rows);
    i.hint = Some("003H");
    assert!(matches!(op_code(&plan(&i)).0, ContactOp::Update { id, .. } if id == "003H"));
    let mut i = input(&l, None, &[]);
    i.hint = Some("003H");
    assert!(matches!(plan(&i), LearnerStep::Fail(p) if p.code == Code::ContactNotFound));
}

#[test]
fn r11_children_need_a_linked_learner() {
    let enr: crate::model::Enrollment = serde_json::from_value(json!({"id": "E1", "learner_id": "L1",
        "course_id": "C", "course_name": "C", "status": "enrolled", "enrolled_at": "2026-11-01T00:00:00Z",
        "updated_at": "2026-11-01T00:00:00Z"}))
    .unwrap();
    let data = EventData {
        enrollment: Some(enr),
        ..Default::default()
    };
    let created = env("e", EventType::EnrollmentCreated, 0, data.clone());
    let linked = state("L1", LinkState::Linked, Some("003C"), None);
    match plan_child(&created, Some(&linked)).unwrap() {
        ChildOp::Upsert { ext_id, record, .. } => {
            assert_eq!(ext_id, "E1");
            assert_eq!(record["Contact__c"], json!("003C"));
        }
        other => panic!("{other:?}"),
    }
    let deleted = env("d", EventType::EnrollmentDeleted, 0, data);
    assert!(matches!(
        plan_child(&deleted, Some(&linked)),
        Ok(ChildOp::Delete { .. })
    ));
    let off = state("L1", LinkState::Deactivated, Some("003C"), None);
    assert_eq!(
        plan_child(&created, Some(&off)).unwrap_err().0,
        Code::LearnerNotLinked
    );
    assert_eq!(
        plan_child(&created, None).unwrap_err().0,
        Code::LearnerNotLinked
    );
}

//! The demo's world (sample Accounts, Contacts, departments, learners) and its script: a
//! section per rule of docs/rules.md, each a few signed events or changes around them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::config::{AccountRule, SyncSettings};
use crate::model::{
    Certification, CertificationStatus, Enrollment, EnrollmentStatus, Learner, LearnerStatus,
};
use crate::salesforce::Record;
use crate::sandbox::salesforce::{Fault, Org};
use crate::sandbox::skillsync::Lms;
use crate::sync::rules::sf_datetime;

/// Every rule of docs/rules.md: (id, name, what it means in one line).
pub const RULES: [(&str, &str, &str); 13] = [
    ("R1", "Inbound Learner Sync toggle", "off: events are accepted and recorded as skipped; nothing is written to Salesforce (sync.enabled)"),
    ("R2", "Source Department ID", "must exist in SkillSync before sync can be enabled; `run`/`work` refuse to start otherwise (sync.source_department_id)"),
    ("R3", "Scope", "only learners of the source department (and, with_subdepartments, its sub-departments) are synced; a linked learner that leaves is unlinked (sync.scope)"),
    ("R4", "Account rule", "the Contact's Account: one `default` Account, the Account named like the `department`, or like a `learner_field`; Accounts are never created (sync.account_rule)"),
    ("R5", "Matching", "an unlinked learner's username is compared with the Contact's match field: one match → link, none → create, several → contact_ambiguous (sync.match_field)"),
    ("R6", "Contacts only", "only Contacts (and the two SkillSync objects) are written — never person accounts, Users or Accounts"),
    ("R7", "Move", "every sync sets the Contact's AccountId per R4, moving existing Contacts"),
    ("R8", "Link", "a synced Contact carries the learner id in SkillSync_User_Id__c and is found by it afterwards (sync.link_field, sync.field_map)"),
    ("R9", "Deactivation", "the Contact stays, its link is removed, and syncback remembers which Contact it was"),
    ("R10", "Reactivation", "re-link the remembered Contact and make its enrollments and certifications equal SkillSync's current ones"),
    ("R11", "Enrollments and certifications", "of linked learners are upserted into SkillSync_Enrollment__c / SkillSync_Certification__c; others are skipped"),
    ("R12", "Order and duplicates", "an event older than the last applied one of the same entity, or seen before, is skipped"),
    ("R13", "Retries", "transient failures (5xx, limits, timeouts) are retried with backoff; permanent ones go to the dead-letter queue"),
];

/// The sandboxes and the Accounts seeded in them.
pub struct World {
    pub org: Org,
    pub lms: Lms,
    /// Account name → Id.
    pub accounts: BTreeMap<String, String>,
}

impl World {
    pub fn account(&self, name: &str) -> String {
        self.accounts.get(name).cloned().unwrap_or_default()
    }
}

/// One step of the walkthrough.
pub enum Step {
    /// Start the section of a rule (printed with its one-line explanation).
    Rule(&'static str),
    /// R2: check the source department, and an unknown one, against SkillSync.
    ValidateSource,
    /// Put another mapping in force (as the admin console would).
    Configure(&'static str, fn(&mut SyncSettings, &World)),
    /// Something changes in Salesforce or SkillSync outside syncback.
    Meanwhile(&'static str, fn(&World)),
    /// Send one signed webhook and show its outcome (expected outcome code).
    Send {
        label: &'static str,
        expect: &'static str,
        envelope: Value,
    },
}

fn learner(id: &str, user: &str, name: (&str, &str), dept: (&str, &str), active: bool) -> Learner {
    Learner {
        id: id.into(),
        username: user.into(),
        email: Some(user.into()),
        first_name: Some(name.0.into()),
        last_name: Some(name.1.into()),
        department_id: Some(dept.0.into()),
        department_name: Some(dept.1.into()),
        status: if active {
            LearnerStatus::Active
        } else {
            LearnerStatus::Inactive
        },
        fields: BTreeMap::new(),
        updated_at: Utc::now(),
    }
}

fn enrollment(id: &str, course: (&str, &str), status: EnrollmentStatus) -> Enrollment {
    let now = Utc::now();
    let done = status == EnrollmentStatus::Completed;
    Enrollment {
        id: id.into(),
        learner_id: "L1".into(),
        course_id: course.0.into(),
        course_name: course.1.into(),
        status,
        enrolled_at: now,
        completed_at: done.then_some(now),
        score: done.then_some(92.5),
        updated_at: now,
    }
}

fn certification() -> Certification {
    let now = Utc::now();
    Certification {
        id: "CERT1".into(),
        learner_id: "L1".into(),
        name: "Admin Certified".into(),
        issued_at: now,
        expires_at: Some(now + chrono::Duration::days(730)),
        status: CertificationStatus::Active,
        updated_at: now,
    }
}

const ENG: (&str, &str) = ("42", "Engineering");
const SALES: (&str, &str) = ("43", "Sales");
const OUTSIDE: (&str, &str) = ("99", "Outside");
const BASICS: (&str, &str) = ("C-101", "Salesforce Basics");
const FLOWS: (&str, &str) = ("C-202", "Advanced Flows");

/// Seed the sandboxes with the world the script expects.
pub fn seed() -> anyhow::Result<World> {
    let org = Org::new();
    let lms = Lms::new();
    let mut accounts = BTreeMap::new();
    for name in ["Engineering", "Sales", "Prospects", "Globex Corp"] {
        let mut r = Record::new();
        r.insert("Name".into(), json!(name));
        let id = org
            .insert("Account", r)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        accounts.insert(name.to_string(), id);
    }
    for (first, last, email) in [
        ("Grace", "Hopper", "grace@acme.example"),
        ("Dup", "One", "dup@acme.example"),
        ("Dup", "Two", "DUP@acme.example"),
    ] {
        let mut r = Record::new();
        r.insert("FirstName".into(), json!(first));
        r.insert("LastName".into(), json!(last));
        r.insert("Email".into(), json!(email));
        r.insert("AccountId".into(), json!(accounts["Prospects"]));
        org.insert("Contact", r)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    for (id, name, parent) in crate::sandbox::skillsync::SAMPLE_DEPARTMENTS {
        lms.add_department(id, name, *parent);
    }
    // SkillSync's own view of Ada, read back for R10 and R11 snapshots.
    lms.upsert_learner(learner(
        "L1",
        "ada@acme.example",
        ("Ada", "Lovelace"),
        SALES,
        true,
    ));
    lms.add_enrollment(enrollment("E1", BASICS, EnrollmentStatus::Enrolled));
    lms.add_certification(certification());
    Ok(World { org, lms, accounts })
}

/// The scripted walkthrough, events timed from `base`.
pub fn script(base: DateTime<Utc>) -> Vec<Step> {
    let t = |s: i64| base + chrono::Duration::seconds(s);
    let env = |id: &str, ty: &str, at: DateTime<Utc>, data: Value| json!({"id": id, "type": ty, "occurred_at": sf_datetime(at), "data": data});
    let person =
        |l: Learner, at: DateTime<Utc>| json!({"learner": Learner { updated_at: at, ..l }});
    let ada = |dept, active| learner("L1", "ada@acme.example", ("Ada", "Lovelace"), dept, active);
    let grace = |last: &str, dept| learner("L2", "grace@acme.example", ("Grace", last), dept, true);
    let e1 = |status: EnrollmentStatus, at| json!({"enrollment": Enrollment { updated_at: at, ..enrollment("E1", BASICS, status) }});
    let send = |label, expect, envelope| Step::Send {
        label,
        expect,
        envelope,
    };
    use Step::*;
    vec![
        Rule("R2"),
        ValidateSource,
        Rule("R5"),
        send("Ada is new; no Contact has her username → created under her department's Account (R4 `department`, R8 linked)", "created",
            env("evt_demo_01", "learner.created", t(1), person(ada(ENG, true), t(1)))),
        send("Grace's username matches one Contact → linked to it", "linked",
            env("evt_demo_02", "learner.created", t(2), person(grace("Hopper", SALES), t(2)))),
        send("two Contacts match dup@acme.example → contact_ambiguous, nothing written, dead-lettered", "contact_ambiguous",
            env("evt_demo_03", "learner.created", t(3), person(learner("L3", "dup@acme.example", ("Dup", "Licate"), ENG, true), t(3)))),
        Rule("R3"),
        send("Otto's department 99 is outside the source tree 42 → skipped", "out_of_scope",
            env("evt_demo_04", "learner.created", t(4), person(learner("L4", "otto@acme.example", ("Otto", "Side"), OUTSIDE, true), t(4)))),
        Rule("R4"),
        send("rule `department`: no Account is named Research → account_not_found, dead-lettered", "account_not_found",
            env("evt_demo_05", "learner.created", t(5), person(learner("L5", "rita@acme.example", ("Rita", "Search"), ("44", "Research"), true), t(5)))),
        Configure("sync.account_rule = \"default\", sync.default_account_id = the Prospects Account", |s, w| {
            s.account_rule = AccountRule::Default;
            s.default_account_id = w.account("Prospects");
        }),
        send("rule `default`: Linus is created under Prospects, whatever his department", "created",
            env("evt_demo_06", "learner.created", t(6), person(learner("L6", "linus@acme.example", ("Linus", "Torvalds"), ENG, true), t(6)))),
        Configure("sync.account_rule = \"learner_field\", sync.account_field = \"company\"", |s, _| {
            s.account_rule = AccountRule::LearnerField;
            s.account_field = "company".into();
        }),
        send("rule `learner_field`: Hedy's fields.company is \"Globex Corp\" → created under that Account", "created",
            env("evt_demo_07", "learner.created", t(7), person(Learner {
                fields: [("company".to_string(), Some("Globex Corp".to_string()))].into(),
                ..learner("L7", "hedy@acme.example", ("Hedy", "Lamarr"), ENG, true)
            }, t(7)))),
        Configure("back to sync.account_rule = \"department\"", |s, _| s.account_rule = AccountRule::Department),
        Rule("R6"),
        Rule("R7"),
        send("Grace's Contact sat under Prospects; her next sync moved it to Sales (see Contacts); now Ada moves to Sales", "moved",
            env("evt_demo_08", "learner.updated", t(8), person(ada(SALES, true), t(8)))),
        Rule("R8"),
        Rule("R11"),
        send("Ada (linked) enrolls → SkillSync_Enrollment__c upserted", "upserted",
            env("evt_demo_09", "enrollment.created", t(9), e1(EnrollmentStatus::Enrolled, t(9)))),
        send("Ada is certified → SkillSync_Certification__c upserted", "upserted",
            env("evt_demo_10", "certification.issued", t(10), json!({"certification": Certification { updated_at: t(10), ..certification() }}))),
        Rule("R12"),
        send("evt_demo_08 delivered again → skipped as a duplicate", "duplicate",
            env("evt_demo_08", "learner.updated", t(8), person(ada(SALES, true), t(8)))),
        send("an update older than the last applied one arrives late → skipped as stale", "stale",
            env("evt_demo_00", "learner.updated", t(0), person(ada(ENG, true), t(0)))),
        Rule("R13"),
        Meanwhile("Salesforce answers the next 2 calls with 503 SERVER_UNAVAILABLE", |w| w.org.fail_next(2, Fault::Unavailable)),
        send("Grace marries: the update meets the 503s, is retried with backoff, and applied", "updated",
            env("evt_demo_11", "learner.updated", t(11), person(grace("Hopper-Murray", SALES), t(11)))),
        Rule("R1"),
        Configure("sync.enabled = false (Inbound Learner Sync off)", |s, _| s.enabled = false),
        send("Grace's update is accepted and recorded, but nothing is written", "sync_disabled",
            env("evt_demo_12", "learner.updated", t(12), person(grace("Murray", SALES), t(12)))),
        Configure("sync.enabled = true again", |s, _| s.enabled = true),
        Rule("R3"),
        send("Grace (linked) moves to department 99, outside the scope → unlinked, Contact kept", "unlinked",
            env("evt_demo_13", "learner.updated", t(13), person(grace("Hopper-Murray", OUTSIDE), t(13)))),
        Rule("R9"),
        send("Ada is deactivated → Contact stays, link removed", "unlinked",
            env("evt_demo_14", "learner.deactivated", t(14), person(ada(SALES, false), t(14)))),
        Rule("R11"),
        send("Ada completes E1 while unlinked → skipped", "learner_not_linked",
            env("evt_demo_15", "enrollment.completed", t(15), e1(EnrollmentStatus::Completed, t(15)))),
        Rule("R10"),
        Meanwhile("in SkillSync, while Ada was inactive: E1 completed, she enrolled in E2 Advanced Flows, and certification CERT1 was withdrawn", |w| {
            w.lms.add_enrollment(enrollment("E1", BASICS, EnrollmentStatus::Completed));
            w.lms.add_enrollment(enrollment("E2", FLOWS, EnrollmentStatus::InProgress));
            w.lms.remove_certification("CERT1");
        }),
        send("Ada is reactivated → re-linked to her remembered Contact; enrollments and certifications made equal to SkillSync's", "relinked",
            env("evt_demo_16", "learner.reactivated", t(16), person(ada(SALES, true), t(16)))),
        Rule("R11"),
        send("E1 is deleted in SkillSync → its SkillSync_Enrollment__c record is deleted", "deleted",
            env("evt_demo_17", "enrollment.deleted", t(17), e1(EnrollmentStatus::Cancelled, t(17)))),
    ]
}

//! What the demo prints: rule headers, one line per outcome, the resulting Salesforce
//! records with what each table shows, the rules covered, and (`--keep-running`) how to
//! drive the running demo yourself.

use std::path::Path;

use serde_json::{json, Value};

use super::script::{World, RULES};
use super::DEMO_SECRET;
use crate::config::Settings;
use crate::queue::DeadLetter;
use crate::salesforce::Record;
use crate::store::EventRecord;

fn text(r: &Record, f: &str) -> String {
    r.get(f).and_then(Value::as_str).unwrap_or("").to_string()
}

fn rule(id: &str) -> (&'static str, &'static str) {
    RULES
        .iter()
        .find(|r| r.0 == id)
        .map(|r| (r.1, r.2))
        .unwrap_or(("?", "?"))
}

pub fn rule_header(id: &str) {
    let (name, what) = rule(id);
    println!("\n{id} {name} — {what}");
    match id {
        "R6" => println!("  (every write below goes to Contact or the two SkillSync objects: see the tables at the end)"),
        "R8" => println!("  (the Contacts table at the end shows the link in SkillSync_User_Id__c)"),
        _ => {}
    }
}

/// Account Ids in a detail, replaced by "Id (Name)".
fn named(detail: &str, world: &World) -> String {
    world
        .accounts
        .iter()
        .fold(detail.to_string(), |d, (name, id)| {
            d.replace(id.as_str(), &format!("{id} ({name})"))
        })
}

pub fn outcome(r: &EventRecord, world: &World) {
    println!(
        "    ⇒ {} {}: {}",
        r.class.as_str(),
        r.code,
        named(&r.detail, world)
    );
}

pub fn tables(world: &World, contacts: &[Record], dead: &[DeadLetter]) {
    let account = |id: &str| {
        world
            .accounts
            .iter()
            .find(|(_, a)| a.as_str() == id)
            .map(|(n, _)| n.clone())
            .unwrap_or_else(|| id.to_string())
    };
    println!("\nSalesforce Contacts — every Contact in the org after the walkthrough. A filled");
    println!(
        "SkillSync_User_Id__c is a link (R8); an empty one is a Contact syncback never linked"
    );
    println!("(Dup One/Two), or one it unlinked and remembers (Grace: left the scope, R3).");
    println!(
        "{:<20} {:<22} {:<22} {:<12} SkillSync_User_Id__c",
        "Id", "Name", "Email", "Account"
    );
    for c in contacts {
        println!(
            "{:<20} {:<22} {:<22} {:<12} {}",
            text(c, "Id"),
            format!("{} {}", text(c, "FirstName"), text(c, "LastName")),
            text(c, "Email"),
            account(&text(c, "AccountId")),
            text(c, "SkillSync_User_Id__c")
        );
    }
    let enrollments = world.org.records("SkillSync_Enrollment__c");
    let certifications = world.org.records("SkillSync_Certification__c");
    println!(
        "\nSkillSync_Enrollment__c ({}) — Ada's enrollments as SkillSync has them now. E2 Advanced",
        enrollments.len()
    );
    println!("Flows appears although no event announced it: reactivation (R10) copied SkillSync's");
    println!("current enrollments; E1 is gone because enrollment.deleted removed it (R11).");
    for e in &enrollments {
        println!(
            "  {} {} {} (Contact {})",
            text(e, "SkillSync_Enrollment_Id__c"),
            text(e, "Course_Name__c"),
            text(e, "Status__c"),
            text(e, "Contact__c")
        );
    }
    println!(
        "\nSkillSync_Certification__c ({}) — CERT1 was issued and upserted (R11), but SkillSync",
        certifications.len()
    );
    println!(
        "withdrew it while Ada was inactive, so reactivation (R10) deleted it: none is listed."
    );
    for c in &certifications {
        println!(
            "  {} {} {}",
            text(c, "SkillSync_Certification_Id__c"),
            text(c, "Name__c"),
            text(c, "Status__c")
        );
    }
    println!(
        "\nDead-letter queue ({}) — permanent failures, kept with their reason until fixed and",
        dead.len()
    );
    println!("replayed (`syncback dlq list`, `dlq replay`); nothing was written for them.");
    for d in dead {
        println!(
            "  {} learner {} {}: {}",
            d.message.webhook_id,
            d.learner_id.as_deref().unwrap_or("-"),
            d.reason_kind,
            d.reason_message
        );
    }
}

/// Which rules an outcome demonstrates (for the closing summary).
fn shown_by(r: &EventRecord) -> &'static [&'static str] {
    match r.code.as_str() {
        "unlinked" if r.detail.contains("(R9)") => &["R9"],
        "unlinked" => &["R3"],
        "created" => &["R4", "R5", "R6", "R8"],
        "linked" => &["R5", "R7", "R8"],
        "contact_ambiguous" => &["R5"],
        "out_of_scope" => &["R3"],
        "account_not_found" => &["R4"],
        "moved" => &["R7"],
        "upserted" | "deleted" | "learner_not_linked" => &["R11"],
        "duplicate" | "stale" => &["R12"],
        "sync_disabled" => &["R1"],
        "relinked" => &["R10"],
        _ => &[],
    }
}

pub fn rules_shown(outcomes: &[(String, EventRecord)], surprises: &[String]) {
    println!("\nRules shown (docs/rules.md):");
    for (id, name, _) in RULES {
        let codes: Vec<String> = outcomes
            .iter()
            .filter(|(_, r)| shown_by(r).contains(&id))
            .map(|(e, r)| format!("{e} {}", r.code))
            .collect();
        let how = match id {
            "R2" => "source department validated; an unknown one refused".to_string(),
            "R13" => "evt_demo_11 applied after two 503 answers".to_string(),
            _ if codes.is_empty() => "not shown".to_string(),
            _ => codes.join(", "),
        };
        println!("  {id:<4} {name:<31} {how}");
    }
    for s in surprises {
        println!("  ! unexpected outcome: {s}");
    }
}

/// What `--keep-running` tells the user.
pub struct Running<'a> {
    pub world: &'a World,
    pub receiver: &'a str,
    pub salesforce: &'a str,
    pub skillsync: &'a str,
    pub skillsync_token: &'a str,
    pub config: &'a Path,
    pub tmp: &'a Path,
    pub settings: &'a Settings,
    /// The console's URL.
    pub console: &'a str,
}

pub fn keep_running(r: &Running) -> anyhow::Result<()> {
    let cfg = r.config.display();
    let s = &r.settings.sync;
    println!(
        "\nThe demo keeps running (Ctrl-C to stop; {} is removed then).",
        r.tmp.display()
    );
    println!(
        "  receiver    POST {}  (webhook secret {DEMO_SECRET})",
        r.receiver
    );
    println!(
        "  Salesforce  {}  (OAuth client credentials: client id {}, secret {})",
        r.salesforce,
        crate::sandbox::salesforce::Org::CLIENT_ID,
        crate::sandbox::salesforce::Org::CLIENT_SECRET
    );
    let accounts: Vec<String> = r
        .world
        .accounts
        .iter()
        .map(|(n, id)| format!("{n} {id}"))
        .collect();
    println!("              Accounts: {}", accounts.join(", "));
    println!(
        "  SkillSync   {}  (client id {}, secret {}; API token {})",
        r.skillsync,
        crate::sandbox::skillsync::Lms::CLIENT_ID,
        crate::sandbox::skillsync::Lms::CLIENT_SECRET,
        r.skillsync_token
    );
    let depts: Vec<String> = crate::sandbox::skillsync::SAMPLE_DEPARTMENTS
        .iter()
        .map(|(id, n, p)| match p {
            Some(p) => format!("{id} {n} (in {p})"),
            None => format!("{id} {n}"),
        })
        .collect();
    println!("              departments: {}", depts.join(", "));
    let name = |v: serde_json::Result<Value>| {
        v.ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    };
    println!(
        "  mapping     sync.source_department_id {}, sync.scope {}, sync.account_rule {}, sync.match_field {}",
        s.source_department_id,
        name(serde_json::to_value(s.scope)),
        name(serde_json::to_value(s.account_rule)),
        s.match_field
    );
    println!("  settings    {cfg}");
    println!(
        "  console     {}  (sign in as {} / {}: dead letters, learners, resolve, audit log; the mapping is read-only here)",
        r.console,
        crate::cli::console::DEMO_USER,
        crate::cli::console::DEMO_PASSWORD
    );
    println!("\nSend a signed sample event (learner L100 joins Sales):");
    println!(
        "  syncback send --config {cfg} --type learner.created --learner L100 --department 43"
    );
    let env = json!({"id": "evt_try_1", "type": "learner.created",
        "occurred_at": crate::sync::rules::sf_datetime(chrono::Utc::now()),
        "data": {"learner": {"id": "L101", "username": "l101@acme.example", "first_name": "Try", "last_name": "Curl",
            "department_id": "43", "department_name": "Sales", "status": "active", "fields": {},
            "updated_at": crate::sync::rules::sf_datetime(chrono::Utc::now())}}});
    println!(
        "or with curl (signed now; valid for webhooks.tolerance_secs = {} s):",
        r.settings.webhooks.tolerance_secs
    );
    println!(
        "  {}",
        crate::cli::send::curl(r.receiver, DEMO_SECRET, &env)?
    );
    println!("or add a learner in SkillSync — the sandbox sends the signed webhook itself:");
    println!(
        "  curl -s -X POST {}/api/v1/learners -H 'authorization: Bearer {}' -H 'content-type: application/json' -d '{{\"id\": \"L102\", \"username\": \"l102@acme.example\", \"last_name\": \"New\", \"department_id\": \"42\"}}'",
        r.skillsync, r.skillsync_token
    );
    println!("\nSee the outcome:");
    println!("  syncback learner status L100 --config {cfg}");
    println!("  syncback backfill --dry-run --config {cfg}     # what a backfill of department 42 would do");
    Ok(())
}

//! The `syncback` binary as users meet it: `config check` (R2 with clear messages),
//! `work` refusing an invalid source department, bad configuration files, `learner status`.

use std::process::Command;

use syncback::sandbox::salesforce::Org;
use syncback::sandbox::skillsync::Lms;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

struct Env {
    dir: tempfile::TempDir,
    sf: String,
    ss: String,
    org: Org,
    lms: Lms,
}

async fn env() -> Env {
    let org = Org::new();
    let lms = Lms::new();
    lms.add_department("42", "Engineering", None);
    let (sf, _) = org.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (ss, _) = lms.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    Env {
        dir: tempfile::tempdir().unwrap(),
        sf: format!("http://{sf}"),
        ss: format!("http://{ss}"),
        org,
        lms,
    }
}

impl Env {
    fn config(
        &self,
        name: &str,
        dept: &str,
        ss_secret: &str,
        ss_url: Option<&str>,
        extra: &str,
    ) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(
            &path,
            format!(
                r#"
[server]
listen = "127.0.0.1:0"
[webhooks]
secrets = ["{SECRET}"]
[queue]
backend = "memory"
[store]
url = "sqlite://{db}"
[salesforce]
login_url = "{sf}"
client_id = "sandbox-client"
client_secret = "sandbox-secret"
[skillsync]
base_url = "{ss}"
client_id = "sandbox-client"
client_secret = "{ss_secret}"
[sync]
enabled = true
source_department_id = "{dept}"
{extra}
"#,
                db = self.dir.path().join("state.db").display(),
                sf = self.sf,
                ss = ss_url.unwrap_or(&self.ss),
            ),
        )
        .unwrap();
        path
    }
}

/// Run the binary off the test runtime's threads (the sandboxes must keep answering).
async fn syncback(args: Vec<String>) -> (i32, String) {
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_syncback"))
            .args(&args)
            .env("RUST_LOG", "error")
            .env_remove("SYNCBACK_CONFIG")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    })
    .await
    .unwrap()
}

fn args(cfg: &std::path::Path, rest: &[&str]) -> Vec<String> {
    let mut v = vec!["--config".to_string(), cfg.display().to_string()];
    v.extend(rest.iter().map(|s| s.to_string()));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_validates_the_source_department_r2() {
    let e = env().await;
    let good = e.config("good.toml", "42", "sandbox-secret", None, "");
    let (code, out) = syncback(args(&good, &["config", "check", "--role", "work"])).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("source department 42 (Engineering) validated (R2)"),
        "{out}"
    );
    assert!(out.contains("Salesforce: authenticated"), "{out}");

    let unknown = e.config("unknown.toml", "4711", "sandbox-secret", None, "");
    let (code, out) = syncback(args(&unknown, &["config", "check", "--role", "work"])).await;
    assert_ne!(code, 0);
    assert!(
        out.contains("source department 4711 does not exist in SkillSync"),
        "{out}"
    );

    let denied = e.config("denied.toml", "42", "wrong-secret", None, "");
    let (code, out) = syncback(args(&denied, &["config", "check", "--role", "work"])).await;
    assert_ne!(code, 0);
    assert!(out.contains("SkillSync refused the credentials"), "{out}");

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let gone = e.config(
        "gone.toml",
        "42",
        "sandbox-secret",
        Some(&format!("http://{closed}")),
        "",
    );
    let (code, out) = syncback(args(&gone, &["config", "check", "--role", "work"])).await;
    assert_ne!(code, 0);
    assert!(out.contains("SkillSync is unreachable"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn work_and_run_refuse_to_start_with_an_unknown_department() {
    let e = env().await;
    let unknown = e.config("unknown.toml", "4711", "sandbox-secret", None, "");
    for cmd in ["work", "run"] {
        let (code, out) = syncback(args(&unknown, &[cmd])).await;
        assert_ne!(code, 0, "{cmd}: {out}");
        assert!(
            out.contains("refusing to start") && out.contains("4711"),
            "{cmd}: {out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_explained_and_secrets_are_not_printed() {
    let e = env().await;
    let typo = e.config(
        "typo.toml",
        "42",
        "sandbox-secret",
        None,
        "scoop = \"department_only\"",
    );
    let (code, out) = syncback(args(&typo, &["config", "check", "--offline"])).await;
    assert_ne!(code, 0);
    assert!(out.contains("scoop"), "unknown key named: {out}");
    let bad = e.config(
        "bad.toml",
        "",
        "sandbox-secret",
        None,
        "account_rule = \"default\"",
    );
    let text = std::fs::read_to_string(&bad)
        .unwrap()
        .replace(SECRET, "whsec_!!notbase64");
    std::fs::write(&bad, text).unwrap();
    let (code, out) = syncback(args(&bad, &["config", "check", "--offline"])).await;
    assert_ne!(code, 0);
    assert!(out.contains("webhooks.secrets[0]"), "{out}");
    assert!(out.contains("default_account_id"), "{out}");
    assert!(
        !out.contains("sandbox-secret"),
        "secrets never printed: {out}"
    );
    let missing = e.dir.path().join("nope.toml");
    let (code, out) = syncback(args(&missing, &["work"])).await;
    assert_ne!(code, 0, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_status_of_an_unknown_learner_says_so() {
    let e = env().await;
    let cfg = e.config("good.toml", "42", "sandbox-secret", None, "");
    let (code, out) = syncback(args(&cfg, &["learner", "status", "L-unknown"])).await;
    assert_eq!(code, 3, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_status_shows_link_contact_and_last_events() {
    use syncback::store::{Commit, EventRecord, LearnerState, LinkState, OutcomeClass};
    let e = env().await;
    let cfg = e.config("good.toml", "42", "sandbox-secret", None, "");
    let store = syncback::store::open(
        &format!("sqlite://{}", e.dir.path().join("state.db").display()),
        1,
    )
    .await
    .unwrap();
    let now = chrono::Utc::now();
    for (id, class, code) in [
        ("evt_a", OutcomeClass::Applied, "created"),
        ("evt_b", OutcomeClass::Failed, "account_not_found"),
    ] {
        store
            .commit(&Commit {
                record: EventRecord {
                    event_id: id.into(),
                    event_type: "learner.updated".into(),
                    learner_id: "L1".into(),
                    occurred_at: now,
                    class,
                    code: code.into(),
                    detail: format!("detail {id}"),
                    recorded_at: now,
                },
                mark_processed: class != OutcomeClass::Failed,
                entity: None,
                learner: Some(LearnerState {
                    learner_id: "L1".into(),
                    contact_id: Some("0035g0000000001AAA".into()),
                    link: LinkState::Linked,
                    account_id: Some("0015g0000000001AAA".into()),
                    last_outcome: Some(code.into()),
                    last_error: None,
                    updated_at: now,
                }),
            })
            .await
            .unwrap();
    }
    drop(store);
    let (code, out) = syncback(args(&cfg, &["learner", "status", "L1"])).await;
    assert_eq!(code, 0, "{out}");
    for want in [
        "linked",
        "0035g0000000001AAA",
        "0015g0000000001AAA",
        "evt_a",
        "evt_b",
        "account_not_found",
    ] {
        assert!(out.contains(want), "{want} missing from:\n{out}");
    }
    assert!(
        out.find("evt_b").unwrap() < out.find("evt_a").unwrap(),
        "newest first:\n{out}"
    );
    let (code, out) = syncback(args(&cfg, &["learner", "status", "L1", "--json"])).await;
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    assert_eq!(v["learner"]["link"], "linked");
    assert_eq!(v["events"].as_array().unwrap().len(), 2);
}

/// `syncback demo` runs the whole flow with nothing but the binary, and its JSON logs carry
/// the event id and learner id on every line about an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_walks_through_the_rules_and_logs_event_and_learner_ids() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_syncback"))
            .args(["--log-format", "json", "demo"])
            .current_dir(dir.path())
            .env("RUST_LOG", "info")
            .env_remove("SYNCBACK_CONFIG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    for want in [
        "created",
        "linked",
        "contact_ambiguous",
        "out_of_scope",
        "account_not_found",
        "moved",
        "duplicate",
        "stale",
        "unlinked",
        "relinked",
        "deleted",
        "Salesforce Contacts",
        "Dead-letter queue (2)",
    ] {
        assert!(stdout.contains(want), "demo output lacks {want}:\n{stdout}");
    }
    let mut event_lines = 0;
    for line in stderr.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        // Lines inside an event's span (process-level lines such as startup have none).
        if v.get("span").is_some() {
            event_lines += 1;
            assert!(
                v["span"]["event_id"].is_string() && v["span"]["learner_id"].is_string(),
                "{line}"
            );
        }
    }
    assert!(event_lines >= 14, "{event_lines} worker log lines");
}

/// `syncback backfill --dry-run` prints the plan and writes nothing; `backfill` syncs and
/// prints the summary; a failure in the plan makes the exit code 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_command_plans_then_syncs() {
    let e = env().await;
    let mut acct = syncback::salesforce::Record::new();
    acct.insert("Name".into(), serde_json::json!("Engineering"));
    e.org.insert("Account", acct).unwrap();
    e.lms.add_department("43", "Nowhere", Some("42"));
    for i in 0..5 {
        let dept = if i == 4 {
            ("43", "Nowhere")
        } else {
            ("42", "Engineering")
        };
        e.lms.upsert_learner(
            serde_json::from_value(serde_json::json!({"id": format!("BF{i}"), "username": format!("bf{i}@cli.example"),
                "last_name": "L", "department_id": dept.0, "department_name": dept.1, "status": "active",
                "updated_at": "2026-11-24T10:00:00Z"}))
            .unwrap(),
        );
    }
    let cfg = e.config("good.toml", "42", "sandbox-secret", None, "");
    let (code, out) = syncback(args(&cfg, &["backfill", "--dry-run"])).await;
    assert_eq!(code, 2, "a planned failure is reported: {out}");
    assert!(
        out.contains("DRY RUN") && out.contains("account_not_found"),
        "{out}"
    );
    assert!(
        e.org.records("Contact").is_empty(),
        "dry run writes nothing"
    );
    let (code, out) = syncback(args(&cfg, &["backfill"])).await;
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("created        4"), "{out}");
    assert_eq!(e.org.records("Contact").len(), 4);
}

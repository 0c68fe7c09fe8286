//! The `syncback` binary as users meet it: `learner status`, `backfill`, `demo`,
//! `sandbox`, `health` (`config check` and `work`'s start-up checks: tests/config_check.rs).

mod cli_support;

use std::process::Command;

use cli_support::{args, env, syncback};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_status_of_an_unknown_learner_says_so() {
    let e = env().await;
    let cfg = e.config("good.toml", "42", "sandbox-secret", None, "");
    let db = e.dir.path().join("state.db");
    syncback::store::open(&format!("sqlite://{}", db.display()), 1)
        .await
        .unwrap();
    let (code, out) = syncback(args(&cfg, &["learner", "status", "L-unknown"])).await;
    assert_eq!(code, 3, "{out}");
    assert!(out.contains("never synced"), "{out}");
}

/// Read-only commands never create a store: a mistyped SQLite path is an error naming
/// store.url (not an empty database reporting "never synced"); a closed PostgreSQL port
/// fails at once, naming the address and the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_commands_never_create_the_store_and_fail_fast_naming_store_url() {
    let e = env().await;
    let typo = e.dir.path().join("stat.db");
    let cfg = e.config("typo.toml", "42", "sandbox-secret", None, "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let db = e.dir.path().join("state.db").display().to_string();
    std::fs::write(&cfg, text.replace(&db, &typo.display().to_string())).unwrap();
    let (code, out) = syncback(args(&cfg, &["learner", "status", "L1"])).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("store.url") && out.contains(&typo.display().to_string()),
        "{out}"
    );
    assert!(!out.contains("never synced"), "{out}");
    assert!(!typo.exists(), "no database created at a mistyped path");

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let pg = e.config("pg.toml", "42", "sandbox-secret", None, "");
    let text = std::fs::read_to_string(&pg).unwrap();
    std::fs::write(
        &pg,
        text.replace(
            &format!("sqlite://{db}"),
            &format!("postgres://postgres@{closed}/syncback"),
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let (code, out) = syncback(args(&pg, &["learner", "status", "L1"])).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("connection refused at {closed} (store.url)")),
        "{out}"
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "fails fast"
    );
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

/// `learner link` applies the learner through the rules engine with the mapping in force —
/// in console mode the store's newest version, not the file's `[sync]` section — and
/// reports the engine's outcome; a link the rules refuse exits non-zero with the reason and
/// writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_link_applies_the_mapping_in_force_and_says_why_it_refuses() {
    use serde_json::json;
    use syncback::salesforce::Record;
    let e = env().await;
    let insert = |sobject: &str, v: serde_json::Value| {
        e.org
            .insert(sobject, v.as_object().unwrap().clone())
            .unwrap()
    };
    let engineering = insert("Account", json!({"Name": "Engineering"}));
    let picked = insert("Account", json!({"Name": "Picked"}));
    let cfg = e.config(
        "console.toml",
        "42",
        "sandbox-secret",
        None,
        "managed_by = \"console\"",
    );
    // Version 1 is the file's section (rule B: the department's Account); version 2, saved
    // from the console, picks an Account (rule A) and maps Title.
    let file = syncback::config::Settings::from_toml(&std::fs::read_to_string(&cfg).unwrap())
        .unwrap()
        .sync;
    let mut v2 = file.clone();
    v2.account_rule = syncback::config::AccountRule::Default;
    v2.default_account_id = picked.clone();
    v2.field_map.insert("Title".into(), "fields.title".into());
    let store = syncback::store::open(
        &format!("sqlite://{}", e.dir.path().join("state.db").display()),
        1,
    )
    .await
    .unwrap();
    assert_eq!(
        store
            .save_mapping(&file, "configuration file", None)
            .await
            .unwrap(),
        Some(1)
    );
    assert_eq!(
        store.save_mapping(&v2, "tester", Some(1)).await.unwrap(),
        Some(2)
    );
    drop(store);
    let learner = |id: &str, user: &str, dept: &str| {
        serde_json::from_value(json!({"id": id, "username": user, "email": user,
            "first_name": "Ada", "last_name": format!("L-{id}"), "department_id": dept,
            "department_name": "Engineering", "status": "active",
            "fields": {"title": "Engineer"}, "updated_at": "2026-11-24T10:00:00Z"}))
        .unwrap()
    };
    e.lms.upsert_learner(learner("L1", "dup@x.example", "42"));
    let contact = |email: &str| {
        insert(
            "Contact",
            json!({"LastName": "Existing", "Email": email, "AccountId": engineering}),
        )
    };
    contact("dup@x.example");
    let chosen = contact("dup@x.example");

    let (code, out) = syncback(args(&cfg, &["learner", "link", "L1", "--contact", &chosen])).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("linked to Contact {chosen} (linked:")),
        "{out}"
    );
    let c: Record = e.org.record("Contact", &chosen).unwrap();
    assert_eq!(c["SkillSync_User_Id__c"], json!("L1"));
    assert_eq!(c["AccountId"], json!(picked), "rule A of mapping version 2");
    assert_eq!(
        c["Title"],
        json!("Engineer"),
        "field map of mapping version 2"
    );
    assert_eq!(c["FirstName"], json!("Ada"));
    assert_eq!(c["LastName"], json!("L-L1"));
    let (code, out) = syncback(args(&cfg, &["learner", "status", "L1", "--json"])).await;
    assert_eq!(code, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out[out.find('{').unwrap()..]).unwrap();
    assert_eq!(v["learner"]["link"], "linked");
    assert_eq!(v["learner"]["contact_id"], json!(chosen));
    let ev = &v["events"][0];
    assert_eq!(
        (&ev["event_type"], &ev["class"], &ev["code"]),
        (&json!("snapshot.link"), &json!("applied"), &json!("linked")),
        "{v}"
    );

    // Out of scope (R3): refused, with the reason; nothing written anywhere.
    e.lms.upsert_learner(learner("L2", "out@x.example", "99"));
    let other = contact("out@x.example");
    let before = e.org.records("Contact");
    let (code, out) = syncback(args(&cfg, &["learner", "link", "L2", "--contact", &other])).await;
    assert_ne!(code, 0, "{out}");
    assert!(
        out.contains("out_of_scope") && out.contains("nothing was written"),
        "{out}"
    );
    assert_eq!(e.org.records("Contact"), before);
    let (code, out) = syncback(args(&cfg, &["learner", "status", "L2"])).await;
    assert_eq!(code, 3, "no state, no history: {out}");
}

/// `syncback demo` runs the whole flow with nothing but the binary, and its JSON logs carry
/// the event id and learner id on every line about an event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_walks_through_the_rules_and_logs_event_and_learner_ids() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_syncback"))
            .args(["--log-format", "json", "demo"])
            .current_dir(&tmp)
            .env("TMPDIR", &tmp)
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
        "rule `default`",
        "rule `learner_field`",
        "left the scope",
        "503 SERVER_UNAVAILABLE",
        "sync_disabled",
        "E2 Advanced Flows",
    ] {
        assert!(stdout.contains(want), "demo output lacks {want}:\n{stdout}");
    }
    // Every rule is named, with its explanation, and shown by something.
    let summary = &stdout[stdout.find("Rules shown").expect("rules summary")..];
    for (id, name, what) in syncback::cli::demo::RULES {
        assert!(
            stdout.contains(&format!("{id} {name} — {what}")),
            "no section for {id}:\n{stdout}"
        );
        let line = summary
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("{id} missing from the summary:\n{summary}"));
        assert!(line.contains(name) && !line.contains("not shown"), "{line}");
    }
    assert!(!summary.contains("unexpected outcome"), "{summary}");
    assert!(
        summary.contains("R9   Deactivation                    evt_demo_14 unlinked"),
        "{summary}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("syncback-demo-"))
            .count(),
        0,
        "the demo removes its temporary directory"
    );
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
/// prints the summary; a failure in the plan makes the exit code 5 (README "Exit codes").
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
    assert_eq!(code, 5, "a planned failure is reported: {out}");
    assert!(
        out.contains("DRY RUN") && out.contains("account_not_found"),
        "{out}"
    );
    assert!(
        e.org.records("Contact").is_empty(),
        "dry run writes nothing"
    );
    let (code, out) = syncback(args(&cfg, &["backfill"])).await;
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("created        4"), "{out}");
    assert_eq!(e.org.records("Contact").len(), 4);
}

/// A backfill that sees no learner says which department and scope it walked, what
/// SkillSync listed, and what to check — not just "learners seen 0".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_explains_an_empty_scope() {
    let e = env().await;
    e.lms.add_department("43", "Sales", Some("42"));
    let cfg = e.config(
        "only.toml",
        "42",
        "sandbox-secret",
        None,
        "scope = \"department_only\"",
    );
    let (code, out) = syncback(args(&cfg, &["backfill", "--dry-run"])).await;
    assert_eq!(code, 0, "{out}");
    for want in [
        "learners seen  0",
        "no learners in scope: source department 42 (sync.source_department_id), scope department_only (sync.scope)",
        "42 Engineering: 0",
        "hint:",
    ] {
        assert!(out.contains(want), "lacks {want:?}:\n{out}");
    }
}

/// `demo --keep-running` prints everything needed to drive it — URLs, credentials,
/// departments, Accounts, a `syncback send` command, a signed curl, how to see the
/// outcome — and those commands work; on SIGTERM it removes its temporary directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_keep_running_explains_how_to_drive_it_and_cleans_up() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().to_path_buf();
    let mut child = Command::new(env!("CARGO_BIN_EXE_syncback"))
        .args(["demo", "--keep-running"])
        .current_dir(&tmp)
        .env("TMPDIR", &tmp)
        .env_remove("SYNCBACK_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (text, mut lines) = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut text = String::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            text.push_str(&line);
            text.push('\n');
            if line.contains("syncback backfill --dry-run") {
                break;
            }
        }
        (text, lines)
    })
    .await
    .unwrap();
    for want in [
        "receiver    POST http://127.0.0.1:",
        "Salesforce  http://127.0.0.1:",
        "client id sandbox-client, secret sandbox-secret",
        "Accounts: Engineering 001",
        "departments: 42 Engineering, 43 Sales (in 42)",
        "webhook-signature: v1,",
        "/api/v1/learners -H 'authorization: Bearer ss_",
    ] {
        assert!(text.contains(want), "lacks {want:?}:\n{text}");
    }
    let config = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("settings    "))
        .expect("settings path")
        .to_string();
    assert!(config.starts_with(&tmp.display().to_string()), "{config}");
    // The printed `syncback send` works and the outcome shows in `learner status`.
    let send_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("syncback send "))
        .expect("a send command");
    let send: Vec<String> = send_line
        .split_whitespace()
        .skip(1)
        .map(String::from)
        .collect();
    let (code, out) = syncback(send).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("202"), "{out}");
    let mut status = String::new();
    for _ in 0..100 {
        let (_, out) = syncback(vec![
            "--config".into(),
            config.clone(),
            "learner".into(),
            "status".into(),
            "L100".into(),
        ])
        .await;
        status = out;
        if status.contains("created") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(status.contains("created"), "{status}");
    // The printed curl works too (it is signed for the next few minutes).
    let curl = text
        .lines()
        .find(|l| l.trim_start().starts_with("curl -i -X POST"))
        .expect("a curl command")
        .trim()
        .to_string();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("sh")
            .arg("-c")
            .arg(format!("{curl} -s"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("202"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || {
        for _ in lines.by_ref() {}
        child.wait().unwrap()
    })
    .await
    .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        !std::path::Path::new(&config).exists()
            && std::fs::read_dir(&tmp).unwrap().next().is_none(),
        "temporary directory removed"
    );
}

/// `demo` and `sandbox` use no configuration: a named file that does not exist is
/// reported the same way by both, and neither fails because of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_and_sandbox_treat_a_named_config_alike() {
    for sub in [
        &["demo", "--help"][..],
        &["sandbox", "salesforce", "--help"][..],
    ] {
        let mut a = vec!["--config".to_string(), "/nonexistent.toml".to_string()];
        a.extend(sub.iter().map(|s| s.to_string()));
        let (code, out) = syncback(a).await;
        assert_eq!(code, 0, "{sub:?}: {out}");
    }
    // Run for real: a sandbox on a free port, stopped by SIGTERM.
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_syncback"))
        .args([
            "--config",
            "/nonexistent.toml",
            "sandbox",
            "skillsync",
            "--listen",
            "127.0.0.1:0",
        ])
        .env_remove("SYNCBACK_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("SkillSync sandbox on http://"), "{text}");
    assert!(
        text.contains("note: `sandbox` uses no configuration file; /nonexistent.toml is not read"),
        "{text}"
    );
    // Logs into a pipe carry no ANSI colour codes.
    assert!(!text.contains('\u{1b}'), "{text:?}");
}

/// `syncback health`, the container HEALTHCHECK: 0 when /healthz answers 200 on the port
/// of worker.listen (else server.listen), 1 when nothing listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_healthz_on_the_configured_port() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let queue: std::sync::Arc<dyn syncback::queue::Queue> =
        std::sync::Arc::new(syncback::queue::memory::MemoryQueue::new());
    let ops = syncback::http::ops_router(queue, None);
    tokio::spawn(async move { axum::serve(listener, ops).await.unwrap() });
    let run = |listen: String, extra: &'static [&'static str]| async move {
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_syncback"))
                .arg("health")
                .args(extra)
                .env_remove("SYNCBACK_CONFIG")
                .env("SYNCBACK_WORKER__LISTEN", listen)
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    };
    let out = run(format!("0.0.0.0:{port}"), &[]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("127.0.0.1:{port}/healthz")));
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = run(format!("0.0.0.0:{closed}"), &[]).await;
    assert_eq!(out.status.code(), Some(1));

    // The probes deploy/docker-compose.yml gives the sandbox services answer as expected.
    let e = env().await;
    for (url, any) in [
        (format!("{}/services/data", e.sf), false),
        (format!("{}/oauth2/token", e.ss), true),
    ] {
        let mut a = vec!["health".to_string(), "--url".to_string(), url.clone()];
        if any {
            a.push("--any-status".into());
        }
        let (code, out) = syncback(a).await;
        assert_eq!(code, 0, "{url}: {out}");
    }
    let (code, out) = syncback(vec![
        "health".into(),
        "--url".into(),
        format!("{}/oauth2/token", e.ss),
    ])
    .await;
    assert_eq!(code, 1, "a 405 is not healthy without --any-status: {out}");
}

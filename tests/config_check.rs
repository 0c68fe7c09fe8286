//! `syncback config check` and the start-up checks of `work`/`run` as users meet them:
//! R1/R2 with clear messages, every problem one line naming its key, the Salesforce fields
//! (`sync.field_map`) checked, unreachable services named by address and key.

mod cli_support;

use std::process::Command;

use cli_support::{args, env, syncback, SECRET};

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
    assert!(
        out.contains(&format!(
            "{}:21: unknown key `scoop` in [sync] — did you mean `scope`?",
            typo.display()
        )),
        "one line with file, line and a suggestion: {out}"
    );
    assert_eq!(out.matches("scoop").count(), 1, "said once: {out}");
    assert!(!out.contains("default."), "{out}");
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

/// Every mapped Contact field is checked against Salesforce's describe: a field that does
/// not exist fails `config check` (instead of every event dead-lettering INVALID_FIELD).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_checks_every_field_map_field_against_salesforce() {
    let e = env().await;
    let good = e.config("good.toml", "42", "sandbox-secret", None, "");
    let (code, out) = syncback(args(&good, &["config", "check", "--role", "work"])).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("every sync.field_map field exists on Contact (Email, FirstName, LastName)"),
        "{out}"
    );
    let bad = e.config(
        "bad.toml",
        "42",
        "sandbox-secret",
        None,
        "[sync.field_map]\nLastName = \"last_name\"\nNickname__c = \"username\"\nFirstNam = \"first_name\"",
    );
    let (code, out) = syncback(args(&bad, &["config", "check", "--role", "work"])).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("✗ sync.field_map: Contact.Nickname__c does not exist in Salesforce"),
        "{out}"
    );
    assert!(
        out.contains("Contact.FirstNam does not exist in Salesforce — did you mean `FirstName`?"),
        "{out}"
    );
}

/// R1/R2, one rule: sync disabled without a source department is valid offline, online
/// and for `work` alike (events are recorded as skipped), and says what enabling needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_disabled_without_a_department_is_one_rule_offline_and_online() {
    let e = env().await;
    let cfg = e.config("off.toml", "", "sandbox-secret", None, "");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, text.replace("enabled = true", "enabled = false")).unwrap();
    for offline in [true, false] {
        let mut rest = vec!["config", "check", "--role", "work"];
        if offline {
            rest.push("--offline");
        }
        let (code, out) = syncback(args(&cfg, &rest)).await;
        assert_eq!(code, 0, "offline {offline}: {out}");
        assert!(
            out.contains("! sync.enabled = false (R1)")
                && out.contains("sync.source_department_id is needed before enabling it (R2)"),
            "{out}"
        );
        assert!(!out.contains('✗'), "{out}");
    }
    // Enabled without one: refused by all three.
    let on = e.config("on.toml", "", "sandbox-secret", None, "");
    for rest in [
        &["config", "check", "--role", "work", "--offline"][..],
        &["config", "check", "--role", "work"][..],
        &["work"][..],
    ] {
        let (code, out) = syncback(args(&on, rest)).await;
        assert_eq!(code, 1, "{rest:?}: {out}");
        assert!(out.contains("sync.source_department_id"), "{rest:?}: {out}");
    }
}

/// `config check` online: an unreachable broker is one line naming the address and the
/// key, no raw AMQP-client ERROR lines; a store whose SQLite file does not exist yet is
/// not created by the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_names_the_key_of_an_unreachable_broker_without_client_noise() {
    let e = env().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cfg = e.config("rmq.toml", "42", "sandbox-secret", None, "");
    let text = std::fs::read_to_string(&cfg).unwrap().replace(
        "backend = \"memory\"",
        &format!("backend = \"rabbitmq\"\nurl = \"amqp://guest:guest@{closed}/%2f\""),
    );
    std::fs::write(&cfg, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_syncback"))
        .args(args(&cfg, &["config", "check", "--role", "work"]))
        .env_remove("RUST_LOG")
        .env_remove("SYNCBACK_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "✗ broker: connection refused at {closed} (queue.url)"
        )),
        "{stdout}"
    );
    assert!(!stderr.contains("ERROR"), "no client log lines: {stderr}");
    assert!(
        stdout.contains("does not exist yet; `work`/`run` will create it (store.url)"),
        "{stdout}"
    );
    assert!(
        !e.dir.path().join("state.db").exists(),
        "the check creates no store"
    );
}

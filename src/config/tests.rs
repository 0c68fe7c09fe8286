use std::path::Path;

use super::*;

#[test]
fn spec_example_parses() {
    let toml = r#"
[server]
listen = "127.0.0.1:8080"
[webhooks]
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
tolerance_secs = 300
max_body_bytes = 1048576
[queue]
backend = "rabbitmq"
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
prefix = "syncback"
[store]
url = "postgres://postgres@127.0.0.1:5432/syncback"
[salesforce]
login_url = "https://login.salesforce.com"
client_id = "abc"
client_secret = "shh"
api_version = "61.0"
[skillsync]
base_url = "https://acme.skillsync.example"
client_id = "x"
client_secret = "y"
[sync]
enabled = true
source_department_id = "42"
scope = "with_subdepartments"
match_field = "Email"
account_rule = "department"
default_account_id = "001000000000001AAA"
account_field = "company"
[worker]
concurrency = 8
max_attempts = 8
"#;
    let s = Settings::from_toml(toml).unwrap();
    assert_eq!(s.sync.scope, Scope::WithSubdepartments);
    assert_eq!(s.sync.account_rule, AccountRule::Department);
    assert_eq!(s.worker.concurrency, 8);
    s.validate_for(Role::Run).unwrap();
    // Secrets never print.
    let dbg = format!("{s:?}");
    assert!(!dbg.contains("shh"));
    assert!(!dbg.contains("MfKQ9r8"));
    assert!(!dbg.contains("guest:guest"));
}

#[test]
#[allow(clippy::result_large_err)]
fn env_overrides_keys() {
    figment::Jail::expect_with(|jail| {
        jail.create_file("syncback.toml", "[worker]\nconcurrency = 2\n")?;
        jail.set_env("SYNCBACK_WORKER__CONCURRENCY", "16");
        jail.set_env("SYNCBACK_SYNC__SCOPE", "department_only");
        jail.set_env("SYNCBACK_QUEUE__BACKEND", "memory");
        let s = Settings::load(Path::new("syncback.toml"), true).unwrap();
        assert_eq!(s.worker.concurrency, 16);
        assert_eq!(s.sync.scope, Scope::DepartmentOnly);
        assert_eq!(s.queue.backend, QueueBackend::Memory);
        Ok(())
    });
}

#[test]
fn unknown_key_is_an_error() {
    let err = Settings::from_toml("[worker]\nconcurency = 3\n").unwrap_err();
    assert!(err.to_string().contains("concurency"), "{err}");
}

#[test]
fn validation_lists_every_problem() {
    let s = Settings::from_toml(
        "[sync]\nenabled = true\naccount_rule = \"default\"\n[server]\nlisten = \"nope\"\n",
    )
    .unwrap();
    let err = s.validate_for(Role::Run).unwrap_err().to_string();
    for needle in [
        "server.listen",
        "webhooks.secrets",
        "salesforce.client_id",
        "skillsync.base_url",
        "source_department_id",
        "default_account_id",
    ] {
        assert!(err.contains(needle), "{needle} missing from {err}");
    }
    // receive needs nothing from Salesforce.
    let recv =
        Settings::from_toml("[webhooks]\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n")
            .unwrap();
    recv.validate_for(Role::Receive).unwrap();
}

#[test]
fn jwt_bearer_needs_a_username_and_a_readable_key() {
    let mut s = Settings::from_toml(
        r#"
[webhooks]
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
[salesforce]
auth = "jwt_bearer"
client_id = "app"
private_key_path = "/nonexistent/key.pem"
[skillsync]
base_url = "http://ss"
client_id = "c"
client_secret = "s"
[sync]
source_department_id = "42"
"#,
    )
    .unwrap();
    let err = s.validate_for(Role::Work).unwrap_err().to_string();
    assert!(err.contains("salesforce.username is required"), "{err}");
    assert!(err.contains("salesforce.private_key_path"), "{err}");
    assert!(
        !err.contains("client_secret"),
        "no secret needed for jwt_bearer: {err}"
    );
    s.salesforce.username = "u@x".into();
    s.salesforce.private_key_path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/jwt-test-key.pem"
    )
    .into();
    s.validate_for(Role::Work).unwrap();
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
fn syncback_config_names_the_file_and_is_not_a_key() {
    figment::Jail::expect_with(|jail| {
        jail.create_file(
            "s.toml",
            "[webhooks]\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n",
        )?;
        jail.set_env("SYNCBACK_CONFIG", "s.toml");
        jail.set_env("SYNCBACK_WORKER__CONCURRENCY", "3");
        let s = Settings::load(Path::new("s.toml"), true).map_err(|e| e.to_string())?;
        assert_eq!(s.worker.concurrency, 3);
        assert_eq!(s.webhooks.secrets.len(), 1);
        Ok(())
    });
}

#[test]
fn max_api_share_is_a_share_and_the_old_threshold_is_a_warning() {
    let base = "[salesforce]\nclient_id = \"a\"\nclient_secret = \"b\"\n[skillsync]\nbase_url = \"http://x\"\n";
    let s = Settings::from_toml(base).unwrap();
    assert_eq!(s.salesforce.max_api_share, 0.5);
    s.validate_for(Role::Work).unwrap();
    assert!(s.warnings().is_empty());
    for bad in ["0", "-0.1", "1.5", "nan"] {
        // In the [salesforce] table; `nan` is a TOML float.
        let s = Settings::from_toml(&base.replace(
            "[skillsync]",
            &format!("max_api_share = {bad}\n[skillsync]"),
        ))
        .unwrap();
        let err = s.validate_for(Role::Backfill).unwrap_err().to_string();
        assert!(err.contains("salesforce.max_api_share"), "{bad}: {err}");
    }
    let s = Settings::from_toml(&base.replace(
        "[skillsync]",
        "max_api_share = 1\napi_usage_threshold = 0.9\n[skillsync]",
    ))
    .unwrap();
    s.validate_for(Role::Work).unwrap();
    assert_eq!(s.salesforce.max_api_share, 1.0);
    let w = s.warnings();
    assert!(
        w.len() == 1 && w[0].contains("salesforce.api_usage_threshold"),
        "{w:?}"
    );
}

#[test]
fn every_unknown_key_is_one_line_with_file_line_and_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("typo.toml");
    std::fs::write(
        &path,
        "[webhooks]\nsecrets = []\ntolerance_sec = 300\n[sync]\nscoop = 1\n[sync.field_map]\nAnyField__c = \"email\"\n",
    )
    .unwrap();
    let err = Settings::load(&path, true).unwrap_err();
    let ConfigError::Read(lines) = &err else {
        panic!("{err}")
    };
    let p = path.display();
    assert_eq!(
        lines,
        &vec![
            format!(
                "{p}:3: unknown key `tolerance_sec` in [webhooks] — did you mean `tolerance_secs`?"
            ),
            format!("{p}:5: unknown key `scoop` in [sync] — did you mean `scope`?"),
        ],
        "{err}"
    );
    let text = err.to_string();
    assert!(!text.contains("default."), "{text}");
    assert_eq!(text.matches("tolerance_sec`").count(), 1, "{text}");
}

#[test]
fn a_bad_value_names_its_line_and_key_and_suggests_a_variant() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, "[sync]\nenabled = false\nscope = \"department\"\n").unwrap();
    let err = Settings::load(&path, true).unwrap_err().to_string();
    assert!(
        err.contains(&format!(
            "{}:3: sync.scope: \"department\" is not one of",
            path.display()
        )) && err.contains("did you mean \"department_only\"?"),
        "{err}"
    );
}

#[test]
fn urls_are_parsed_statically_naming_the_key() {
    let mut s = Settings::from_toml(
        r#"
[salesforce]
login_url = "not a url"
client_id = "x"
client_secret = "y"
[skillsync]
base_url = "ftp://skillsync.example"
[store]
url = "postgres://"
[queue]
url = "amqp//missing-colon"
"#,
    )
    .unwrap();
    let err = s.validate_for(Role::Work).unwrap_err().to_string();
    for want in [
        "salesforce.login_url: \"not a url\" is not a URL",
        "skillsync.base_url: \"ftp://skillsync.example\" must be a https:// or http:// URL",
        "store.url: not a valid postgres://",
        "queue.url: not a URL",
    ] {
        assert!(err.contains(want), "{want}\n{err}");
    }
    s.salesforce.login_url = "https://login.salesforce.com".into();
    s.skillsync.base_url = "https://acme.skillsync.example".into();
    s.store.url = Secret::new("sqlite://x.db");
    s.queue.url = Secret::new("amqp://u:p@rabbit:5672/%2f");
    s.validate_for(Role::Work).unwrap();
}

#[test]
fn a_published_example_secret_is_a_loud_warning() {
    for secret in KNOWN_EXAMPLE_SECRETS {
        let s = Settings::from_toml(&format!("[webhooks]\nsecrets = [\"{secret}\"]\n")).unwrap();
        let w = s.warnings().join("\n");
        assert!(
            w.contains("WARNING webhooks.secrets[0] is a published example secret"),
            "{secret}: {w}"
        );
        // Both are valid secrets (the stack runs with them), only flagged.
        crate::webhook::signature::decode_secret(secret).unwrap();
    }
    let own = Settings::from_toml("[webhooks]\nsecrets = [\"whsec_b3duIHNlY3JldA==\"]\n").unwrap();
    assert!(own.warnings().is_empty());
}

#[test]
#[allow(clippy::result_large_err)] // figment::Jail's closure signature
fn id_keys_take_numbers_from_the_environment() {
    figment::Jail::expect_with(|jail| {
        jail.set_env("SYNCBACK_SYNC__SOURCE_DEPARTMENT_ID", "42");
        jail.set_env("SYNCBACK_SKILLSYNC__CLIENT_ID", "1001");
        jail.set_env("SYNCBACK_SALESFORCE__API_VERSION", "61.0");
        let s = Settings::load(Path::new("/nonexistent/syncback.toml"), false)
            .map_err(|e| e.to_string())?;
        assert_eq!(s.sync.source_department_id, "42");
        assert_eq!(s.skillsync.client_id, "1001");
        assert_eq!(s.salesforce.api_version, "61.0");
        Ok(())
    });
}

//! The admin console in a real browser (Debian chromium + chromedriver, driven with
//! fantoccini) against `syncback run` serving the console, with the sandboxes, real
//! RabbitMQ and PostgreSQL. Screenshots of every page land in `<target>/console-screenshots/`.
//!
//! A missing browser fails the test like a missing server (skips visibly only with
//! `SYNCBACK_ALLOW_SKIP=1` outside CI; see `syncback::testing`).

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::Utc;
use common::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use syncback::webhook::signature::decode_secret;

const PASSWORD: &str = "correct horse battery";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn screenshots_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// chromedriver + headless chromium, or `None` (visible skip) outside CI.
struct Browser {
    client: Client,
    _driver: tokio::process::Child,
    _profile: tempfile::TempDir,
}

async fn browser() -> Option<Browser> {
    let found = |b: &str| {
        std::process::Command::new("which")
            .arg(b)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if (!found("chromedriver") || !found("chromium"))
        && !syncback::testing::unavailable(
            "chromium / chromedriver are not installed",
            "apt-get install chromium chromium-driver",
        )
    {
        return None;
    }
    let port = free_port();
    let driver = tokio::process::Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let profile = tempfile::tempdir().unwrap();
    // Two TLS backends are linked in; fantoccini's rustls needs one chosen.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-dev-shm-usage", "--window-size=1366,900",
                format!("--user-data-dir={}", profile.path().display())]
        }),
    );
    let client = ClientBuilder::rustls()
        .unwrap()
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("WebDriver session");
    Some(Browser {
        client,
        _driver: driver,
        _profile: profile,
    })
}

async fn shot(c: &Client, name: &str) {
    // Full page: grow the window to the document's height first.
    let h = c
        .execute(
            "return document.documentElement.scrollHeight + (window.outerHeight - window.innerHeight)",
            vec![],
        )
        .await
        .ok()
        .and_then(|v| v.as_u64())
        .unwrap_or(900)
        .clamp(900, 4000);
    let _ = c.set_window_size(1366, h as u32).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let png = c.screenshot().await.unwrap();
    std::fs::write(screenshots_dir().join(format!("{name}.png")), png).unwrap();
    let _ = c.set_window_size(1366, 900).await;
}

async fn css(c: &Client, sel: &str) -> fantoccini::elements::Element {
    c.wait()
        .at_most(Duration::from_secs(10))
        .for_element(Locator::Css(sel))
        .await
        .unwrap_or_else(|e| panic!("{sel}: {e}"))
}

/// The element's text; an element the page replaced meanwhile (the job status and the
/// overview refresh themselves) is looked up again.
async fn text(c: &Client, sel: &str) -> String {
    let mut tries = 0;
    loop {
        match css(c, sel).await.text().await {
            Ok(t) => return t,
            Err(e) if tries < 20 && e.to_string().contains("stale element") => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("{sel}: {e}"),
        }
    }
}

async fn body(c: &Client) -> String {
    text(c, "body").await
}

async fn post_event(http: &reqwest::Client, url: &str, env: &Value) -> u16 {
    let id = env["id"].as_str().unwrap();
    let body = serde_json::to_vec(env).unwrap();
    let ts = Utc::now().timestamp();
    let sig = decode_secret(SECRET).unwrap().sign(id, ts, &body);
    http.post(url)
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", sig)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn contact_of(w: &World, email: &str) -> Option<syncback::salesforce::Record> {
    contacts_with(&w.org, "Email", email).into_iter().next()
}

#[test]
fn hash_password_reads_stdin_and_prints_an_argon2id_hash() {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_syncback"))
        .args(["admin", "hash-password"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(syncback::admin::auth::verify_password(
        hash.trim(),
        "s3cret"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_in_a_browser() {
    let Some(b) = browser().await else { return };
    let Some(amqp) = syncback::testing::rabbitmq() else {
        return;
    };
    let Some(db) = syncback::testing::fresh_postgres_db().await else {
        return;
    };
    let w = world().await;
    let prefix = syncback::testing::unique_prefix("console");
    let s = settings(&w, "rabbitmq", &amqp, &prefix, &db);
    let (web, admin) = (free_port(), free_port());
    let hash = syncback::admin::auth::hash_password(PASSWORD).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("syncback.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[server]
listen = "127.0.0.1:{web}"
[webhooks]
secrets = ["{SECRET}"]
[queue]
backend = "rabbitmq"
url = "{amqp}"
prefix = "{prefix}"
retry_delays_secs = [1, 2]
[store]
url = "{db}"
[salesforce]
login_url = "{sf}"
client_id = "sandbox-client"
client_secret = "sandbox-secret"
[skillsync]
base_url = "{ss}"
client_id = "sandbox-client"
client_secret = "sandbox-secret"
[sync]
managed_by = "console"
enabled = true
source_department_id = "42"
scope = "with_subdepartments"
account_rule = "department"
[worker]
concurrency = 4
max_attempts = 3
[admin]
listen = "127.0.0.1:{admin}"
mapping_poll_secs = 1
[[admin.users]]
name = "admin"
password_hash = "{hash}"
"#,
            sf = w.sf_url,
            ss = w.ss_url
        ),
    )
    .unwrap();
    let _run = syncback_child(&cfg, &["run"]);
    let base = format!("http://127.0.0.1:{admin}");
    let hook = format!("http://127.0.0.1:{web}/webhooks/skillsync");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    eventually(30, "console up", || async {
        http.get(format!("{base}/login")).send().await.is_ok()
    })
    .await;
    let c = &b.client;

    // --- Access: `/` leads to the login page; unauthenticated requests are refused.
    let r = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(r.headers()["location"], "/login");
    let r = http.get(format!("{base}/mapping")).send().await.unwrap();
    assert!(r.status().is_redirection());
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/login"));
    let r = http
        .post(format!("{base}/mapping"))
        .form(&[("enabled", "false")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "a state-changing request without a session"
    );
    let r = http
        .post(format!("{base}/login"))
        .form(&[("username", "admin"), ("password", PASSWORD)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "login without the form's CSRF token");

    c.goto(&format!("{base}/")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().starts_with("/login"));
    css(c, "input[name=username]")
        .await
        .send_keys("admin")
        .await
        .unwrap();
    css(c, "input[name=password]")
        .await
        .send_keys("wrong")
        .await
        .unwrap();
    css(c, "button[type=submit]").await.click().await.unwrap();
    assert!(text(c, ".msg.bad")
        .await
        .contains("Wrong user name or password"));
    shot(c, "01-login").await;
    css(c, "input[name=username]")
        .await
        .send_keys("admin")
        .await
        .unwrap();
    css(c, "input[name=password]")
        .await
        .send_keys(PASSWORD)
        .await
        .unwrap();
    css(c, "button[type=submit]").await.click().await.unwrap();
    css(c, "#panel").await;
    assert_eq!(c.current_url().await.unwrap().path(), "/overview");

    // A forged POST with the session cookie but without the CSRF token is refused.
    let session = c
        .get_named_cookie("syncback_session")
        .await
        .unwrap()
        .value()
        .to_string();
    let r = http
        .post(format!("{base}/mapping"))
        .header("cookie", format!("syncback_session={session}"))
        .form(&[("enabled", "false")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "forged POST without the CSRF token");

    // --- Data Mapping: validate an unknown and a known department.
    c.goto(&format!("{base}/mapping")).await.unwrap();
    let dept = css(c, "input[name=source_department_id]").await;
    dept.clear().await.unwrap();
    dept.send_keys("777").await.unwrap();
    css(c, "#validate").await.click().await.unwrap();
    assert!(text(c, "#dept-error").await.contains("no department 777"));
    let dept = css(c, "input[name=source_department_id]").await;
    dept.clear().await.unwrap();
    dept.send_keys("42").await.unwrap();
    css(c, "#validate").await.click().await.unwrap();
    assert!(text(c, "#dept-name").await.contains("Engineering"));

    // Switch the Account rule to `default` with the picker; save.
    css(c, "input[name=account_rule][value=default]")
        .await
        .click()
        .await
        .unwrap();
    css(c, "#account_search")
        .await
        .send_keys("pros")
        .await
        .unwrap();
    css(c, ".account-option").await.click().await.unwrap();
    let prospects = w.accounts["Prospects"].clone();
    assert_eq!(
        css(c, "input[name=default_account_id]")
            .await
            .prop("value")
            .await
            .unwrap()
            .as_deref(),
        Some(prospects.as_str())
    );
    shot(c, "02-mapping-edit").await;
    css(c, "#save").await.click().await.unwrap();
    assert!(text(c, ".msg.ok").await.contains("Saved as version 2"));
    shot(c, "03-mapping-saved").await;

    // Every worker follows the new version within seconds, without a restart.
    let store = syncback::store::open(&db, 2).await.unwrap();
    eventually(10, "the worker reports mapping version 2", || async {
        store
            .workers_seen(Utc::now() - chrono::Duration::seconds(30))
            .await
            .unwrap()
            .iter()
            .any(|w| w.mapping_version == Some(2))
    })
    .await;
    // ... and applies it: a signed event lands its Contact under the picked Account, with
    // no restart of the worker.
    let now = Utc::now();
    let l1 = learner_json(
        "L1",
        "l1@example.com",
        "One",
        ("42", "Engineering"),
        "active",
        now,
    );
    // SkillSync has the learner too (reconcile and Re-sync read its snapshot).
    w.lms
        .upsert_learner(serde_json::from_value(l1.clone()).unwrap());
    let env = envelope("evt_c1", "learner.created", now, json!({"learner": l1}));
    assert_eq!(post_event(&http, &hook, &env).await, 202);
    eventually(
        20,
        "L1's Contact under Prospects (rule A, picked)",
        || async {
            contact_of(&w, "l1@example.com")
                .is_some_and(|r| r.get("AccountId") == Some(&json!(prospects)))
        },
    )
    .await;

    // Back to rule B (Account named like the department) for the dead-letter part.
    c.goto(&format!("{base}/mapping")).await.unwrap();
    css(c, "input[name=account_rule][value=department]")
        .await
        .click()
        .await
        .unwrap();
    css(c, "#save").await.click().await.unwrap();
    assert!(text(c, ".msg.ok").await.contains("Saved as version 3"));
    tokio::time::sleep(Duration::from_secs(3)).await; // every worker follows within 5 s

    // --- Dead letters: `Research` has no Account → account_not_found.
    let now = Utc::now();
    let l2 = learner_json(
        "L2",
        "l2@example.com",
        "Two",
        ("44", "Research"),
        "active",
        now,
    );
    // SkillSync has the learner too (reconcile and Re-sync read its snapshot).
    w.lms
        .upsert_learner(serde_json::from_value(l2.clone()).unwrap());
    let env = envelope("evt_c2", "learner.created", now, json!({"learner": l2}));
    assert_eq!(post_event(&http, &hook, &env).await, 202);
    c.goto(&format!("{base}/dlq?reason=account_not_found"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !body(c).await.contains("evt_c2") {
        assert!(
            Instant::now() < deadline,
            "evt_c2 never reached the DLQ page"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.refresh().await.unwrap();
    }
    shot(c, "04-dlq").await;
    c.goto(&format!("{base}/dlq/event/evt_c2")).await.unwrap();
    assert!(body(c).await.contains("Research"));
    shot(c, "05-dlq-event").await;
    let mut r = syncback::salesforce::Record::new();
    r.insert("Name".into(), json!("Research"));
    let research = w.org.insert("Account", r).unwrap();
    c.goto(&format!("{base}/dlq?reason=account_not_found"))
        .await
        .unwrap();
    css(c, "input[name=ids][value=evt_c2]")
        .await
        .click()
        .await
        .unwrap();
    css(c, "#replay").await.click().await.unwrap();
    // The click returns before the confirmation page has replaced the list (both have an h1).
    css(c, "#confirm").await;
    assert!(text(c, "h1").await.contains("Replay 1 dead letter?"));
    shot(c, "06-dlq-confirm").await;
    css(c, "#confirm").await.click().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !text(c, "#job-status").await.contains("done") {
        assert!(Instant::now() < deadline, "replay job never finished");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    shot(c, "07-dlq-replayed").await;
    eventually(20, "L2's Contact in Research", || async {
        contact_of(&w, "l2@example.com")
            .is_some_and(|r| r.get("AccountId") == Some(&json!(research)))
    })
    .await;
    c.goto(&format!("{base}/dlq")).await.unwrap();
    assert!(
        !body(c).await.contains("evt_c2"),
        "replayed dead letter is gone"
    );

    // --- Resolve ambiguity: two Contacts carry L3's username.
    let first = add_contact(&w.org, "l3@example.com", &w.accounts["Sales"]);
    let second = add_contact(&w.org, "l3@example.com", &w.accounts["Engineering"]);
    let l3 = learner_json(
        "L3",
        "l3@example.com",
        "Three",
        ("42", "Engineering"),
        "active",
        now,
    );
    // SkillSync has the learner too (reconcile and Re-sync read its snapshot).
    w.lms
        .upsert_learner(serde_json::from_value(l3.clone()).unwrap());
    let env = envelope("evt_c3", "learner.created", now, json!({"learner": l3}));
    assert_eq!(post_event(&http, &hook, &env).await, 202);
    c.goto(&format!("{base}/learners?q=L3")).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !body(c).await.contains("contact_ambiguous") {
        assert!(
            Instant::now() < deadline,
            "L3 never failed with contact_ambiguous"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.goto(&format!("{base}/learners/L3")).await.unwrap();
    }
    shot(c, "08-learner-ambiguous").await;
    // Found by its username although no Contact carries it (its dead letter does).
    c.goto(&format!("{base}/learners?q=L3@Example.com"))
        .await
        .unwrap();
    assert_eq!(c.current_url().await.unwrap().path(), "/learners/L3");
    c.goto(&format!("{base}/resolve/evt_c3")).await.unwrap();
    assert!(body(c).await.contains(&first));
    shot(c, "09-resolve").await;
    css(c, &format!("#pick-{second}"))
        .await
        .click()
        .await
        .unwrap();
    css(c, "#link").await.click().await.unwrap();
    assert!(text(c, ".msg.ok").await.contains("Linked to Contact"));
    eventually(20, "L3 linked to the chosen Contact", || async {
        w.org
            .record("Contact", &second)
            .is_some_and(|r| r.get("SkillSync_User_Id__c") == Some(&json!("L3")))
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        c.goto(&format!("{base}/learners/L3")).await.unwrap();
        let t = text(c, "#link-state").await;
        if t == "linked" && body(c).await.contains("learner.created") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "L3 page never showed linked: {t}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(text(c, "#contact-id").await.contains(&second));
    // Linked through the rules as R5's single match: mapped fields, the department's
    // Account (rule B), the outcome in the learner's history.
    let chosen = w.org.record("Contact", &second).unwrap();
    assert_eq!(
        (
            &chosen["FirstName"],
            &chosen["LastName"],
            &chosen["AccountId"]
        ),
        (
            &json!("F"),
            &json!("Three"),
            &json!(w.accounts["Engineering"])
        )
    );
    assert!(body(c).await.contains("snapshot.link"));
    assert!(
        w.org
            .record("Contact", &first)
            .is_some_and(|r| r.get("SkillSync_User_Id__c").is_none_or(Value::is_null)),
        "the other Contact stays unlinked"
    );
    shot(c, "10-learner-linked").await;

    // --- Overview, learners list, audit log.
    c.goto(&format!("{base}/overview")).await.unwrap();
    css(c, "#panel").await;
    shot(c, "11-overview").await;
    c.goto(&format!("{base}/learners")).await.unwrap();
    shot(c, "12-learners").await;
    c.goto(&format!("{base}/audit")).await.unwrap();
    let audit = body(c).await;
    for action in ["mapping.save", "dlq.replay", "learner.link"] {
        assert!(audit.contains(action), "audit log lacks {action}");
    }
    shot(c, "13-audit").await;

    // Sign out: the session is gone.
    css(c, "nav.side button").await.click().await.unwrap();
    c.goto(&format!("{base}/overview")).await.unwrap();
    assert!(c.current_url().await.unwrap().path().starts_with("/login"));
    let _ = b.client.clone().close().await;
    drop_queues(&s);
}

/// `demo --keep-running` serves the console too, printing its URL and a demo login that
/// works (login form: `username`, `password` and the form's CSRF token).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_keep_running_serves_the_console_with_a_demo_login() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_syncback"))
        .args(["demo", "--keep-running"])
        .current_dir(dir.path())
        .env("TMPDIR", dir.path())
        .env_remove("SYNCBACK_CONFIG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map(Result::unwrap)
            .find(|l| l.trim_start().starts_with("console "))
    })
    .await
    .unwrap()
    .expect("demo prints the console line");
    // "  console     http://127.0.0.1:PORT/  (sign in as admin / syncback-demo: …"
    let words: Vec<&str> = line.split_whitespace().collect();
    let (url, user, password) = (words[1], words[5], words[7].trim_end_matches(':'));
    assert!(url.starts_with("http://127.0.0.1:"), "{line}");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let cookie = |r: &reqwest::Response, name: &str| {
        r.headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .and_then(|v| v.split(';').next())
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no {name} cookie"))
    };
    let r = http.get(format!("{url}login")).send().await.unwrap();
    let login_cookie = cookie(&r, "syncback_login");
    let page = r.text().await.unwrap();
    let csrf = page
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the login form's CSRF token")
        .to_string();
    let r = http
        .post(format!("{url}login"))
        .header("cookie", &login_cookie)
        .form(&[("username", user), ("password", password), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["location"], "/overview", "{line}");
    let session = cookie(&r, "syncback_session");
    let r = http
        .get(format!("{url}dlq"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("Dead letters"));
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
}

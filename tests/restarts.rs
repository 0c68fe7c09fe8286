//! Restarting RabbitMQ or PostgreSQL during a run loses nothing (README "Operations").
//!
//! DESTRUCTIVE: these tests restart the machine's RabbitMQ and PostgreSQL, disturbing
//! everything else using them. They are `#[ignore]`d (a plain `cargo test` lists them as
//! ignored) and need `SYNCBACK_DESTRUCTIVE_TESTS=1` as well; `.ci/run` runs them with
//! `SYNCBACK_DESTRUCTIVE_TESTS=1 cargo test --test restarts -- --ignored`.
//! They live in their own binary (cargo runs test binaries one after another) and take
//! turns (`TURN`).
//!
//! Restarting: RabbitMQ with `rabbitmqctl stop_app`/`start_app`; PostgreSQL with the
//! shell command in `SYNCBACK_PG_RESTART_CMD` (e.g. `systemctl restart postgresql` or
//! `pg_ctl -D /var/lib/postgresql/data restart`), else Debian's `pg_ctlcluster`.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;

mod common;
use common::*;

fn rabbitmqctl(arg: &str) {
    let st = std::process::Command::new("rabbitmqctl")
        .arg(arg)
        .stdout(std::process::Stdio::null())
        .status()
        .expect("rabbitmqctl");
    assert!(st.success(), "rabbitmqctl {arg}");
}

/// One restart at a time.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "destructive: restarts the local RabbitMQ; needs SYNCBACK_DESTRUCTIVE_TESTS=1"]
async fn rabbitmq_restart_during_a_run_loses_nothing() {
    syncback::testing::destructive_allowed("rabbitmq_restart_during_a_run_loses_nothing");
    let _turn = TURN.lock().await;
    if std::process::Command::new("rabbitmqctl")
        .arg("--help")
        .output()
        .is_err()
        && !syncback::testing::unavailable(
            "rabbitmqctl is not on PATH",
            "install RabbitMQ's command-line tools",
        )
    {
        return;
    }
    let w = world().await;
    let Some(app) = spawn_app(&w, "restart").await else {
        return;
    };
    w.org.set_latency(Duration::from_millis(5));
    let t = Utc::now();
    let learners: Vec<String> = (0..20).map(|i| format!("RR{i:02}")).collect();
    let mut sent = 0;
    for round in 0..6 {
        if round == 3 {
            // The broker goes away mid-run and comes back.
            rabbitmqctl("stop_app");
            tokio::time::sleep(Duration::from_millis(500)).await;
            rabbitmqctl("start_app");
        }
        for l in &learners {
            let at = t + chrono::Duration::seconds(round);
            let ev = envelope(
                &format!("evt_{l}_{round}"),
                "learner.updated",
                at,
                json!({"learner": learner_json(l, &format!("{l}@rr.example"), &format!("Round{round}"), ("42", "Engineering"), "active", at)}),
            );
            // SkillSync retries on 503 until the event is durably queued.
            let mut tries = 0;
            while app.post(&ev).await != 202 {
                tries += 1;
                assert!(tries < 300, "receiver never recovered");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            sent += 1;
        }
    }
    assert_eq!(sent, 120);
    assert_all_at_round(&app, &w, &learners, 5, "rr").await;
    assert!(app.queue.dlq_list().await.unwrap().is_empty());
}

/// How this machine's PostgreSQL is restarted: `SYNCBACK_PG_RESTART_CMD` (run with
/// `sh -c`), else Debian's `pg_ctlcluster` on the first cluster under /etc/postgresql.
fn postgres_restart_command() -> Option<std::process::Command> {
    if let Ok(cmd) = std::env::var("SYNCBACK_PG_RESTART_CMD") {
        let mut c = std::process::Command::new("sh");
        c.args(["-c", &cmd]);
        return Some(c);
    }
    let version = std::fs::read_dir("/etc/postgresql")
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())?;
    std::process::Command::new("pg_ctlcluster")
        .arg("--help")
        .output()
        .ok()?;
    let mut c = std::process::Command::new("pg_ctlcluster");
    c.args(["--skip-systemctl-redirect", &version, "main", "restart"]);
    Some(c)
}

fn restart_postgres() {
    let mut cmd = postgres_restart_command().expect("checked by the test");
    let st = cmd
        .stdout(std::process::Stdio::null())
        .status()
        .expect("run the PostgreSQL restart command");
    assert!(st.success(), "PostgreSQL restart command failed: {cmd:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "destructive: restarts the local PostgreSQL; needs SYNCBACK_DESTRUCTIVE_TESTS=1"]
async fn postgres_restart_during_a_run_loses_nothing() {
    syncback::testing::destructive_allowed("postgres_restart_during_a_run_loses_nothing");
    let _turn = TURN.lock().await;
    if postgres_restart_command().is_none()
        && !syncback::testing::unavailable(
            "no way to restart PostgreSQL is known here (Debian's pg_ctlcluster not found)",
            "set SYNCBACK_PG_RESTART_CMD, e.g. `systemctl restart postgresql`",
        )
    {
        return;
    }
    let w = world().await;
    let Some(app) = spawn_app(&w, "pg_restart").await else {
        return;
    };
    let t = Utc::now();
    let learners: Vec<String> = (0..15).map(|i| format!("PG{i:02}")).collect();
    for round in 0..4 {
        if round == 2 {
            restart_postgres();
        }
        for l in &learners {
            let at = t + chrono::Duration::seconds(round);
            let ev = envelope(
                &format!("evt_{l}_{round}"),
                "learner.updated",
                at,
                json!({"learner": learner_json(l, &format!("{l}@pg.example"), &format!("Round{round}"), ("42", "Engineering"), "active", at)}),
            );
            assert_eq!(
                app.post(&ev).await,
                202,
                "the receiver does not need the store"
            );
        }
    }
    assert_all_at_round(&app, &w, &learners, 3, "pg").await;
    assert!(
        app.queue.dlq_list().await.unwrap().is_empty(),
        "transient store errors are retried, not dead-lettered"
    );
}

/// Every learner ends at its newest event (`evt_{l}_{round}`), with exactly one Contact.
async fn assert_all_at_round(app: &App, w: &World, learners: &[String], round: u32, domain: &str) {
    for l in learners {
        let newest = format!("evt_{l}_{round}");
        let store = app.store.clone();
        eventually(120, &format!("{l} at {newest}"), || {
            let store = store.clone();
            let (l, newest) = (l.clone(), newest.clone());
            async move {
                // The store may be restarting: an error just means "not yet".
                store
                    .history(&l, 50)
                    .await
                    .unwrap_or_default()
                    .iter()
                    .any(|r| r.event_id == newest)
            }
        })
        .await;
        let c = contacts_with(&w.org, "SkillSync_User_Id__c", l);
        assert_eq!(c.len(), 1, "{l}");
        assert_eq!(c[0]["LastName"], json!(format!("Round{round}")));
        assert_eq!(
            contacts_with(&w.org, "Email", &format!("{l}@{domain}.example")).len(),
            1,
            "{l}: no duplicate Contact"
        );
    }
}

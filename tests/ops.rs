//! Operating it (R13, README "Operations"): retries, the dead-letter queue and its replay, several
//! worker processes, SIGKILL and SIGTERM, on real RabbitMQ + PostgreSQL + the sandboxes.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};
use syncback::queue::{DlqFilter, Message};
use syncback::salesforce::Record;
use syncback::sandbox::salesforce::Fault;

mod common;
use common::*;

fn learner_event(id: &str, learner: &str, dept: (&str, &str), at: chrono::DateTime<Utc>) -> Value {
    envelope(
        id,
        "learner.updated",
        at,
        json!({"learner": learner_json(learner, &format!("{learner}@ops.example"), &format!("Last-{id}"), dept, "active", at)}),
    )
}

async fn dead_letter(app: &App, id: &str) -> syncback::queue::DeadLetter {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let found = app
            .queue
            .dlq_list()
            .await
            .unwrap()
            .into_iter()
            .find(|d| d.message.webhook_id == id);
        if let Some(d) = found {
            return d;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} not dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A permanent failure goes straight to the DLQ (attempt 1) with its reason headers;
/// after the fix in Salesforce (the missing Account is created), `dlq replay` makes it
/// succeed through the normal rules. Listing is non-destructive and keeps order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failure_dead_letters_at_once_and_replay_after_fix_succeeds() {
    let w = world().await;
    let Some(app) = spawn_app(&w, "ops_replay").await else {
        return;
    };
    let t = Utc::now();
    for (i, l) in ["R1", "R2", "R3"].iter().enumerate() {
        let ev = learner_event(&format!("evt_rp{i}"), l, ("44", "Research"), t);
        assert_eq!(
            app.apply(&ev, l).await,
            ("failed".into(), "account_not_found".into())
        );
    }
    let d = dead_letter(&app, "evt_rp2").await;
    assert_eq!(d.reason_kind, "account_not_found");
    assert_eq!(d.attempts, 1, "permanent: no retries");
    assert_eq!(d.learner_id.as_deref(), Some("R3"));
    assert!(d.first_failure_at.is_some() && d.last_failure_at.is_some());
    assert!(
        d.reason_message.contains("Research"),
        "{}",
        d.reason_message
    );
    // Listing twice shows the same messages in the same order (nothing lost or moved).
    let ids = |v: Vec<syncback::queue::DeadLetter>| {
        v.into_iter()
            .map(|d| d.message.webhook_id)
            .collect::<Vec<_>>()
    };
    let first = ids(app.queue.dlq_list().await.unwrap());
    assert_eq!(first, ["evt_rp0", "evt_rp1", "evt_rp2"]);
    assert_eq!(ids(app.queue.dlq_list().await.unwrap()), first);

    // The CLI sees the same thing.
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &app.settings);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_syncback"))
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "dlq",
            "list",
            "--json",
            "--reason",
            "account_not_found",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);

    // Fix Salesforce, replay one by id with the CLI, then the rest by reason.
    let mut acct = Record::new();
    acct.insert("Name".into(), json!("Research"));
    let research = w.org.insert("Account", acct).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_syncback"))
        .args([
            "--config",
            cfg.to_str().unwrap(),
            "dlq",
            "replay",
            "--id",
            "evt_rp1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let n = app
        .queue
        .dlq_replay(
            &DlqFilter {
                reason: Some("account_not_found".into()),
                ..Default::default()
            },
            &|_| {},
        )
        .await
        .unwrap();
    assert_eq!(n, 2);
    for l in ["R1", "R2", "R3"] {
        let store = app.store.clone();
        eventually(30, &format!("{l} applied after replay"), || {
            let store = store.clone();
            async move {
                store
                    .learner(l)
                    .await
                    .unwrap()
                    .is_some_and(|s| s.link == syncback::store::LinkState::Linked)
            }
        })
        .await;
        let c = contacts_with(&w.org, "SkillSync_User_Id__c", l);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0]["AccountId"], json!(research));
    }
    assert!(app.queue.dlq_list().await.unwrap().is_empty());
}

/// A poison event (Salesforce keeps answering 503) is retried in-process, then by delayed
/// requeue, and lands in the DLQ after `worker.max_attempts` with the right headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_event_reaches_the_dlq_after_max_attempts() {
    let w = world().await;
    let Some(app) = spawn_app(&w, "ops_poison").await else {
        return;
    };
    w.org.fail_next(100_000, Fault::Unavailable);
    let t = Utc::now();
    assert_eq!(
        app.post(&learner_event("evt_poison", "P1", ("42", "Engineering"), t))
            .await,
        202
    );
    let d = dead_letter(&app, "evt_poison").await;
    assert_eq!(d.reason_kind, "max_attempts");
    assert_eq!(d.attempts, app.settings.worker.max_attempts);
    assert!(
        d.reason_message.contains("SERVER_UNAVAILABLE") || d.reason_message.contains("503"),
        "{}",
        d.reason_message
    );
    assert_eq!(d.learner_id.as_deref(), Some("P1"));
    assert!(
        d.first_failure_at.unwrap() < d.last_failure_at.unwrap(),
        "failures spread over delayed retries"
    );
    w.org.fail_next(0, Fault::Unavailable);
    assert!(contacts_with(&w.org, "SkillSync_User_Id__c", "P1").is_empty());
}

/// Several `syncback work` processes share one queue; each does part of the work, and
/// a worker killed with SIGKILL mid-batch loses nothing and duplicates nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_share_the_load_and_sigkill_loses_nothing() {
    let Some(amqp) = syncback::testing::rabbitmq() else {
        return;
    };
    let Some(db) = syncback::testing::fresh_postgres_db().await else {
        return;
    };
    let w = world().await;
    let mut s = settings(
        &w,
        "rabbitmq",
        &amqp,
        &syncback::testing::unique_prefix("ops_scale"),
        &db,
    );
    s.worker.concurrency = 4;
    // A SIGKILLed worker's leases block its learners until they expire.
    s.worker.lease_ttl_secs = 5;
    let store = syncback::store::open(&db, 4).await.unwrap();
    let queue = syncback::queue::connect(&s.queue).await.unwrap();
    w.org.set_latency(Duration::from_millis(15));
    let t = Utc::now();
    let learners: Vec<String> = (0..60).map(|i| format!("K{i:02}")).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut children = Vec::new();
    let mut ports = Vec::new();
    for i in 0..3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut ws = s.clone();
        ws.worker.listen = format!("127.0.0.1:{port}");
        let sub = dir.path().join(format!("w{i}"));
        std::fs::create_dir_all(&sub).unwrap();
        children.push(syncback_child(&write_config(&sub, &ws), &["work"]));
        ports.push(port);
    }
    // All three consumers up before the events arrive, so the broker spreads them.
    let http = reqwest::Client::new();
    for p in &ports {
        let http = http.clone();
        eventually(60, "worker ready", || {
            let http = http.clone();
            async move {
                http.get(format!("http://127.0.0.1:{p}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            }
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut total = 0;
    for (k, l) in learners.iter().enumerate() {
        for v in 0..5 {
            let ev = learner_event(
                &format!("evt_{l}_{v}"),
                l,
                if (k + v) % 2 == 0 {
                    ("42", "Engineering")
                } else {
                    ("43", "Sales")
                },
                t + chrono::Duration::seconds(v as i64),
            );
            let m = Message {
                webhook_id: ev["id"].as_str().unwrap().into(),
                received_at: Utc::now(),
                envelope: ev,
            };
            queue.publish(&m).await.unwrap();
            total += 1;
        }
    }
    // Let the workers get going, then SIGKILL one mid-batch and start a replacement.
    // Distinct event ids: after the SIGKILL, events the victim committed but never acked
    // are redelivered and recorded again (as duplicates), and must not count twice.
    let settled = |store: Arc<dyn syncback::store::Store>, learners: Vec<String>| async move {
        let mut ids = std::collections::HashSet::new();
        for l in &learners {
            for r in store.history(l, 100).await.unwrap() {
                if r.event_id.starts_with("evt_") {
                    ids.insert(r.event_id);
                }
            }
        }
        ids.len()
    };
    eventually(60, "first events settled", || {
        let (st, ls) = (store.clone(), learners.clone());
        async move { settled(st, ls).await >= 40 }
    })
    .await;
    let mut per_worker = Vec::new();
    for p in &ports {
        let m = http
            .get(format!("http://127.0.0.1:{p}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let n: f64 = m
            .lines()
            .filter(|l| l.starts_with("syncback_events_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        per_worker.push(n);
    }
    assert!(
        per_worker.iter().all(|n| *n > 0.0),
        "every worker took part: {per_worker:?}"
    );
    let victim = children.remove(0);
    std::process::Command::new("kill")
        .args(["-KILL", &victim.id().unwrap().to_string()])
        .status()
        .unwrap();
    drop(victim);
    children.push(syncback_child(&write_config(dir.path(), &s), &["work"]));
    eventually(180, "every event settled after SIGKILL", || {
        let (st, ls) = (store.clone(), learners.clone());
        async move { settled(st, ls).await >= total }
    })
    .await;
    for l in &learners {
        let c = contacts_with(&w.org, "SkillSync_User_Id__c", l);
        assert_eq!(c.len(), 1, "{l}: exactly one linked Contact");
        assert_eq!(
            c[0]["LastName"],
            json!(format!("Last-evt_{l}_4")),
            "{l}: newest event wins"
        );
        assert_eq!(
            contacts_with(&w.org, "Email", &format!("{l}@ops.example")).len(),
            1,
            "{l}: no duplicate Contact"
        );
    }
    assert!(queue.dlq_list().await.unwrap().is_empty());
    for c in &children {
        unsafe_kill(c.id().unwrap() as i32);
    }
    for mut c in children {
        let st = tokio::time::timeout(Duration::from_secs(40), c.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(st.success(), "SIGTERM exits 0: {st}");
    }
    drop_queues(&s);
}

/// SIGTERM: the worker stops consuming, finishes the events it holds, acks them, exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_events_then_exits_zero() {
    let Some(amqp) = syncback::testing::rabbitmq() else {
        return;
    };
    let Some(db) = syncback::testing::fresh_postgres_db().await else {
        return;
    };
    let w = world().await;
    let mut s = settings(
        &w,
        "rabbitmq",
        &amqp,
        &syncback::testing::unique_prefix("ops_term"),
        &db,
    );
    s.worker.concurrency = 4;
    let store = syncback::store::open(&db, 2).await.unwrap();
    let queue = syncback::queue::connect(&s.queue).await.unwrap();
    // Slow Salesforce: each event takes well over a second.
    w.org.set_latency(Duration::from_millis(400));
    let t = Utc::now();
    for i in 0..4 {
        let ev = learner_event(
            &format!("evt_term{i}"),
            &format!("T{i}"),
            ("42", "Engineering"),
            t,
        );
        queue
            .publish(&Message {
                webhook_id: ev["id"].as_str().unwrap().into(),
                received_at: Utc::now(),
                envelope: ev,
            })
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = syncback_child(&write_config(dir.path(), &s), &["work"]);
    eventually(30, "work in flight", || {
        let org = w.org.clone();
        async move {
            org.requests_by_endpoint()
                .iter()
                .any(|(e, _)| e.contains("query"))
        }
    })
    .await;
    unsafe_kill(child.id().unwrap() as i32);
    let st = tokio::time::timeout(Duration::from_secs(40), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(st.success(), "exit 0 after SIGTERM: {st}");
    let mut applied = 0;
    for i in 0..4 {
        applied += store
            .history(&format!("T{i}"), 10)
            .await
            .unwrap()
            .iter()
            .filter(|r| r.class == syncback::store::OutcomeClass::Applied)
            .count();
    }
    let depth = queue.depths().await.unwrap().main;
    // Every event was either finished (and acked) or handed back untouched — none lost.
    assert_eq!(
        applied as u64 + depth,
        4,
        "applied {applied}, still queued {depth}"
    );
    assert!(applied >= 1, "in-flight work was finished, not abandoned");
    drop_queues(&s);
}

/// `dlq list` and `dlq purge` report progress on RabbitMQ (R13): one report per dead letter
/// gone through, the DLQ's depth as the total, the running count removed; emptying the
/// whole DLQ is one step and one report. The CLI's `--json` stdout stays JSON lines only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_and_purge_report_progress_on_rabbitmq() {
    use syncback::queue::{DlqProgress, Failure};
    let Some(amqp) = syncback::testing::rabbitmq() else {
        return;
    };
    let w = world().await;
    let dir = tempfile::tempdir().unwrap();
    let s = settings(
        &w,
        "rabbitmq",
        &amqp,
        &syncback::testing::unique_prefix("ops_dlq_progress"),
        &format!("sqlite://{}", dir.path().join("state.db").display()),
    );
    let queue = syncback::queue::connect(&s.queue).await.unwrap();
    let ids = [
        "evt_pg_a", "evt_pg_b", "evt_pg_c", "evt_pg_d", "evt_pg_e", "evt_pg_f",
    ];
    let t = Utc::now();
    for id in ids {
        let ev = learner_event(id, "PG1", ("42", "Engineering"), t);
        queue
            .publish(&Message {
                webhook_id: id.into(),
                received_at: t,
                envelope: ev,
            })
            .await
            .unwrap();
    }
    let mut sub = queue.subscribe(10).await.unwrap();
    for kind in ["x", "y", "x", "y", "x", "y"] {
        let d = sub.next().await.unwrap().unwrap();
        d.dead_letter(&Failure {
            kind: kind.into(),
            message: "progress test".into(),
            learner_id: Some("PG1".into()),
        })
        .await
        .unwrap();
    }
    sub.cancel().await.unwrap();
    let q = queue.clone();
    eventually(30, "six dead letters", || {
        let q = q.clone();
        async move { q.depths().await.unwrap().dead == 6 }
    })
    .await;

    let reports = std::sync::Mutex::new(Vec::new());
    let record = |p: DlqProgress| reports.lock().unwrap().push(p);
    let take = || std::mem::take(&mut *reports.lock().unwrap());
    let listed = queue.dlq_list_with_progress(&record).await.unwrap();
    assert_eq!(listed.len(), 6);
    let expected: Vec<_> = (1..=6)
        .map(|n| DlqProgress {
            seen: n,
            total: Some(6),
            removed: 0,
        })
        .collect();
    assert_eq!(take(), expected);

    let x = DlqFilter {
        reason: Some("x".into()),
        ..Default::default()
    };
    assert_eq!(queue.dlq_purge(&x, &record).await.unwrap(), 3);
    let got = take();
    assert_eq!(
        got.iter().map(|p| (p.seen, p.removed)).collect::<Vec<_>>(),
        [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (6, 3)]
    );
    assert!(got.iter().all(|p| p.total == Some(6)), "{got:?}");

    // The CLI: JSON lines only on stdout (progress goes to stderr, and only on a terminal).
    let cfg = write_config(dir.path(), &s);
    let cli = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_syncback"))
            .arg("--config")
            .arg(&cfg)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let out = cli(&["dlq", "list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let listed: Vec<String> = stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}"));
            v["message"]["webhook_id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        listed,
        ["evt_pg_b", "evt_pg_d", "evt_pg_f"],
        "the rest, in order"
    );
    let out = cli(&["dlq", "purge", "--id", "evt_pg_d", "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "purged 1 dead letters"
    );

    assert_eq!(
        queue
            .dlq_purge(&DlqFilter::default(), &record)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        take(),
        [DlqProgress {
            seen: 2,
            total: Some(2),
            removed: 2
        }]
    );
    assert!(queue.dlq_list().await.unwrap().is_empty());
    queue.close().await;
    drop_queues(&s);
}
